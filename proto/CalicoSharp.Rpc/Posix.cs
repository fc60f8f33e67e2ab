using System.Runtime.InteropServices;

namespace CalicoSharp.Rpc;

/// <summary>
/// The libc calls and structures (Linux, 64-bit) that more than one of the project's socket loops wait on: the RPC
/// client's blocking socket and bgpd's BFD loop. Declared once here so their layouts cannot drift apart.
/// </summary>
internal static unsafe partial class Posix
{
    public const string LibC = "libc.so.6";
    public const short PollIn = 1;
    public const short PollOut = 4;
    public const int EIntr = 4;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport(LibC, SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(LibC, SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint count, int timeout);

    /// <summary>poll(2) with a nanosecond timeout (null: wait for ever) and no signal mask change.</summary>
    [LibraryImport(LibC, SetLastError = true)]
    public static partial int ppoll(PollFd* fds, nuint count, TimeSpec* timeout, void* sigmask);
}
