using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace CalicoSharp.Rpc;

/// <summary>
/// A connected stream socket on its file descriptor, read and written with blocking system calls: the
/// transport of a blocking client (<see cref="GrpcClientOptions.Blocking"/>). System.Net.Sockets starts its
/// socket engine (an epoll thread, which in turn asks the thread pool for a worker) as soon as the first
/// Socket is made; a process that makes one call and exits pays for two threads it never needs.
/// Reads wait at most <see cref="ReceiveTimeout"/>; a read that runs out of it throws an IOException around a
/// SocketException with <see cref="SocketError.TimedOut"/>, as NetworkStream does.
/// </summary>
internal sealed unsafe partial class BlockingSocket : Stream
{
    private const string LibC = "libc.so.6";
    private const int AfUnix = 1, AfInet = 2, AfInet6 = 10;
    private const int SockStream = 1, SockNonblock = 0x800, SockCloexec = 0x80000;
    private const int SolSocket = 1, SoError = 4, SoRcvtimeo = 20, IpprotoTcp = 6, TcpNodelay = 1;
    private const int MsgNosignal = 0x4000;
    private const int FGetfl = 3, FSetfl = 4, ONonblock = 0x800;
    private const int EIntr = 4, EAgain = 11, EInProgress = 115;

    private int fd;
    private int receiveTimeout;

    private BlockingSocket(int fd) => this.fd = fd;

    /// <summary>Connects to a Unix socket path, waiting at most <paramref name="timeout"/>. A path, not a
    /// UnixDomainSocketEndPoint: constructing one probes which address families the system supports (three
    /// sockets opened and closed, ~0.3 ms of a fresh process).</summary>
    public static BlockingSocket ConnectUnix(string path, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(path);
        Span<byte> address = stackalloc byte[128];
        return Connect(address[..EncodeUnix(path, address)], AfUnix, timeout);
    }

    /// <summary>Connects to an IP endpoint, waiting at most <paramref name="timeout"/>.</summary>
    public static BlockingSocket Connect(IPEndPoint target, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(target);
        Span<byte> address = stackalloc byte[128];
        int length = EncodeIp(target, address, out int family);
        return Connect(address[..length], family, timeout);
    }

    private static BlockingSocket Connect(ReadOnlySpan<byte> address, int family, TimeSpan timeout)
    {
        int fd = socket(family, SockStream | SockCloexec | (family == AfUnix ? 0 : SockNonblock), 0);
        if (fd < 0)
        {
            throw Error(Marshal.GetLastPInvokeError());
        }

        var s = new BlockingSocket(fd);
        try
        {
            s.ConnectCore(address, family, timeout);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private void ConnectCore(ReadOnlySpan<byte> address, int family, TimeSpan timeout)
    {
        int rc;
        fixed (byte* a = address)
        {
            do
            {
                rc = connect(fd, a, (uint)address.Length);
            }
            while (rc < 0 && Marshal.GetLastPInvokeError() == EIntr);
        }

        if (family == AfUnix)
        {
            // Local: accepted or refused at once.
            if (rc < 0)
            {
                throw Error(Marshal.GetLastPInvokeError());
            }

            return;
        }

        if (rc < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != EInProgress)
            {
                throw Error(errno);
            }

            var pfd = new Posix.PollFd { Fd = fd, Events = Posix.PollOut };
            int ready = Posix.poll(&pfd, 1, (int)Math.Clamp(Math.Ceiling(timeout.TotalMilliseconds), 0, int.MaxValue));
            if (ready == 0)
            {
                throw new TimeoutException("connect timed out");
            }

            int error = 0;
            uint size = sizeof(int);
            if (ready < 0 || getsockopt(fd, SolSocket, SoError, &error, &size) < 0)
            {
                throw Error(Marshal.GetLastPInvokeError());
            }

            if (error != 0)
            {
                throw Error(error);
            }
        }

        int one = 1;
        _ = setsockopt(fd, IpprotoTcp, TcpNodelay, &one, sizeof(int));
        int flags = fcntl(fd, FGetfl, 0);
        if (flags < 0 || fcntl(fd, FSetfl, flags & ~ONonblock) < 0)
        {
            throw Error(Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>The sockaddr_un of a path (its length returned).</summary>
    private static int EncodeUnix(string path, Span<byte> a)
    {
        a.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(a, AfUnix);
        if (Encoding.UTF8.GetByteCount(path) > 107)
        {
            throw new ArgumentException($"the socket path {path} is longer than 107 bytes", nameof(path));
        }

        int n = Encoding.UTF8.GetBytes(path, a[2..109]);
        return 2 + n + 1;
    }

    /// <summary>The sockaddr_in or sockaddr_in6 of an IP endpoint (its length returned).</summary>
    private static int EncodeIp(IPEndPoint ip, Span<byte> a, out int family)
    {
        a.Clear();
        if (ip.AddressFamily == AddressFamily.InterNetwork)
        {
            family = AfInet;
            BinaryPrimitives.WriteUInt16LittleEndian(a, AfInet);
            BinaryPrimitives.WriteUInt16BigEndian(a[2..], (ushort)ip.Port);
            ip.Address.TryWriteBytes(a[4..8], out _);
            return 16;
        }

        family = AfInet6;
        BinaryPrimitives.WriteUInt16LittleEndian(a, AfInet6);
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], (ushort)ip.Port);
        ip.Address.TryWriteBytes(a[8..24], out _);
        BinaryPrimitives.WriteUInt32LittleEndian(a[24..], (uint)ip.Address.ScopeId);
        return 28;
    }

    /// <summary>Milliseconds a read may wait (0: no bound), as SO_RCVTIMEO.</summary>
    public int ReceiveTimeout
    {
        get => receiveTimeout;
        set
        {
            if (value == receiveTimeout)
            {
                return;
            }

            var tv = new TimeVal { Seconds = value / 1000, Microseconds = value % 1000 * 1000 };
            if (setsockopt(Fd, SolSocket, SoRcvtimeo, &tv, (uint)sizeof(TimeVal)) < 0)
            {
                throw new IOException("setting the receive timeout failed", Error(Marshal.GetLastPInvokeError()));
            }

            receiveTimeout = value;
        }
    }

    private int Fd => fd >= 0 ? fd : throw new ObjectDisposedException(nameof(BlockingSocket));

    public override int Read(Span<byte> buffer)
    {
        fixed (byte* b = buffer)
        {
            while (true)
            {
                nint n = recv(Fd, b, (nuint)buffer.Length, 0);
                if (n >= 0)
                {
                    return (int)n;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno != EIntr)
                {
                    throw new IOException("receive failed", errno == EAgain ? new SocketException((int)SocketError.TimedOut) : Error(errno));
                }
            }
        }
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        fixed (byte* b = buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                nint n = send(Fd, b + done, (nuint)(buffer.Length - done), MsgNosignal);
                if (n >= 0)
                {
                    done += (int)n;
                    continue;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno != EIntr)
                {
                    throw new IOException("send failed", Error(errno));
                }
            }
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override bool CanRead => fd >= 0;

    public override bool CanWrite => fd >= 0;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (fd >= 0)
        {
            _ = Posix.close(fd);
            fd = -1;
        }

        base.Dispose(disposing);
    }

    /// <summary>errno as the SocketException System.Net.Sockets would have thrown.</summary>
    private static SocketException Error(int errno) => new((int)(errno switch
    {
        111 => SocketError.ConnectionRefused,
        2 => SocketError.AddressNotAvailable,
        110 => SocketError.TimedOut,
        104 => SocketError.ConnectionReset,
        32 => SocketError.Shutdown,
        13 or 1 => SocketError.AccessDenied,
        113 => SocketError.HostUnreachable,
        101 => SocketError.NetworkUnreachable,
        99 => SocketError.AddressNotAvailable,
        _ => SocketError.SocketError,
    }));

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeVal
    {
        public long Seconds;
        public long Microseconds;
    }

    [LibraryImport(LibC, SetLastError = true)]
    private static partial int socket(int domain, int type, int protocol);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial int connect(int fd, byte* address, uint length);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial int getsockopt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial int setsockopt(int fd, int level, int name, void* value, uint length);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial int fcntl(int fd, int command, int argument);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial nint recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport(LibC, SetLastError = true)]
    private static partial nint send(int fd, byte* buffer, nuint length, int flags);
}
