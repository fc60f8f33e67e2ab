using System.Runtime.InteropServices;
using System.Text;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace CalicoSharp.Netlink;

/// <summary>A network namespace, held open by file descriptor. Work that must happen inside it runs on a
/// thread that switches in, never awaits, and switches back: the caller's own thread, or a fresh one when the
/// caller is a pool thread (network namespaces are per thread; a pool thread must never be switched).</summary>
public sealed class NetNs : IDisposable
{
    private readonly SafeFd fd;

    private NetNs(SafeFd fd, string path)
    {
        this.fd = fd;
        Path = path;
    }

    public string Path { get; }

    public int Fd => (int)fd.DangerousGetHandle();

    /// <summary>Opens a namespace by path (/var/run/netns/x, /proc/&lt;pid&gt;/ns/net).</summary>
    public static NetNs Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        int f = OpenFile(path);
        if (f < 0)
        {
            throw new NetlinkException($"opening network namespace {path}", Marshal.GetLastPInvokeError());
        }

        return new NetNs(new SafeFd(f), path);
    }

    /// <summary>The namespace of the calling thread.</summary>
    public static NetNs Current() => Open("/proc/thread-self/ns/net");

    /// <summary>Runs <paramref name="work"/> inside this namespace and returns its result. A thread of the
    /// caller's own switches in, runs the work and switches back (two system calls); a thread-pool thread is
    /// never switched: the work runs on a fresh thread instead (which costs about a millisecond to start here).
    /// <paramref name="work"/> must be synchronous and start no threads: whatever runs on this thread while it is
    /// switched, and every thread it starts, is in this namespace.</summary>
    public T Run<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (!Thread.CurrentThread.IsThreadPoolThread)
        {
            return RunSwitched(work, leaveThreadSwitched: false);
        }

        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = RunSwitched(work, leaveThreadSwitched: true);
            }
            catch (Exception e)
            {
                failure = e;
            }
        }, 256 * 1024)
        {
            IsBackground = true,
            Name = "netns",
        };
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
        }

        return result;
    }

    /// <summary>Switches the calling thread in, runs the work, and switches back. A thread that cannot get back
    /// ends the process unless it is about to end itself (<paramref name="leaveThreadSwitched"/>): code after it
    /// would work on the wrong namespace.</summary>
    private T RunSwitched<T>(Func<T> work, bool leaveThreadSwitched)
    {
        using var home = Current();
        if (setns(Fd, CLONE_NEWNET) != 0)
        {
            throw new NetlinkException($"entering network namespace {Path}", Marshal.GetLastPInvokeError());
        }

        try
        {
            return work();
        }
        finally
        {
            if (setns(home.Fd, CLONE_NEWNET) != 0 && !leaveThreadSwitched)
            {
                Environment.FailFast($"could not return from network namespace {Path} (errno {Marshal.GetLastPInvokeError()})");
            }
        }
    }

    /// <summary>Writes a sysctl, named by its /proc/sys path ("net/ipv4/conf/eth0/proxy_arp"), in this namespace.</summary>
    public void WriteSysctl(string name, string value) => Run(() =>
    {
        Sysctl.Write(name, value);
        return true;
    });

    public void Dispose() => fd.Dispose();

    internal static int OpenFile(string path) => OpenFile(path, O_RDONLY | O_CLOEXEC);

    internal static unsafe int OpenFile(string path, int flags)
    {
        var bytes = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            return open(p, flags, 0);
        }
    }

    private sealed class SafeFd(int fd) : SafeHandle(fd, true)
    {
        public override bool IsInvalid => handle < 0;

        protected override bool ReleaseHandle() => close((int)handle) == 0;
    }
}

/// <summary>sysctls of the calling thread's network namespace, named by /proc/sys path (an interface name may hold dots).
/// Plain open/read/write: a sysctl is one short value, and a file stream's machinery is measurable in a process
/// that lives a few milliseconds.</summary>
public static unsafe class Sysctl
{
    public static void Write(string name, string value)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(value);
        string operation = $"writing sysctl {name} = {value}";
        int fd = NetNs.OpenFile("/proc/sys/" + name, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
        {
            throw new NetlinkException(operation, Marshal.GetLastPInvokeError());
        }

        try
        {
            var bytes = Encoding.ASCII.GetBytes(value);
            fixed (byte* p = bytes)
            {
                long n = write(fd, p, (size_t)bytes.Length);
                if (n != bytes.Length)
                {
                    throw new NetlinkException(operation, n < 0 ? Marshal.GetLastPInvokeError() : EIO);
                }
            }
        }
        finally
        {
            _ = close(fd);
        }
    }

    public static string Read(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        int fd = NetNs.OpenFile("/proc/sys/" + name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
        {
            throw new NetlinkException($"reading sysctl {name}", Marshal.GetLastPInvokeError());
        }

        try
        {
            var buffer = new byte[256];
            int length = 0;
            fixed (byte* p = buffer)
            {
                while (length < buffer.Length)
                {
                    long n = read(fd, p + length, (size_t)(buffer.Length - length));
                    if (n < 0 && Marshal.GetLastPInvokeError() == EINTR)
                    {
                        continue;
                    }

                    if (n < 0)
                    {
                        throw new NetlinkException($"reading sysctl {name}", Marshal.GetLastPInvokeError());
                    }

                    if (n == 0)
                    {
                        break;
                    }

                    length += (int)n;
                }
            }

            return Encoding.ASCII.GetString(buffer, 0, length).Trim();
        }
        finally
        {
            _ = close(fd);
        }
    }
}
