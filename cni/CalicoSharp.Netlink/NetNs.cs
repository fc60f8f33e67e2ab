using System.Runtime.InteropServices;
using System.Text;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace CalicoSharp.Netlink;

/// <summary>A network namespace, held open by file descriptor. Work that must happen inside it runs on a
/// dedicated thread that switches in, never awaits, and switches back (network namespaces are per
/// thread; a pool thread must never be switched).</summary>
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

    /// <summary>Runs <paramref name="work"/> inside this namespace on a fresh thread and returns its result.</summary>
    public T Run<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        T result = default!;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            using var home = Current();
            try
            {
                if (setns(Fd, CLONE_NEWNET) != 0)
                {
                    throw new NetlinkException($"entering network namespace {Path}", Marshal.GetLastPInvokeError());
                }

                try
                {
                    result = work();
                }
                finally
                {
                    // Switch back; the thread is ours alone and ends here either way.
                    _ = setns(home.Fd, CLONE_NEWNET);
                }
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

    /// <summary>Writes a sysctl, named by its /proc/sys path ("net/ipv4/conf/eth0/proxy_arp"), in this namespace.</summary>
    public void WriteSysctl(string name, string value) => Run(() =>
    {
        Sysctl.Write(name, value);
        return true;
    });

    public void Dispose() => fd.Dispose();

    internal static unsafe int OpenFile(string path)
    {
        var bytes = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            return open(p, O_RDONLY | O_CLOEXEC, 0);
        }
    }

    private sealed class SafeFd(int fd) : SafeHandle(fd, true)
    {
        public override bool IsInvalid => handle < 0;

        protected override bool ReleaseHandle() => close((int)handle) == 0;
    }
}

/// <summary>sysctls of the calling thread's network namespace, named by /proc/sys path (an interface name may hold dots).</summary>
public static class Sysctl
{
    public static void Write(string name, string value)
    {
        ArgumentNullException.ThrowIfNull(name);
        var path = "/proc/sys/" + name;
        try
        {
            File.WriteAllText(path, value);
        }
        catch (IOException e)
        {
            throw new NetlinkException($"writing sysctl {name} = {value}: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new NetlinkException($"writing sysctl {name} = {value}: {e.Message}", e);
        }
    }

    public static string Read(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return File.ReadAllText("/proc/sys/" + name).Trim();
    }
}
