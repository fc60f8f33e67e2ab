using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CalicoSharp.Ipam;

/// <summary>open(2) and flock(2), for the per-node host lock. The file is opened directly, not through
/// FileStream, which takes flock locks of its own.</summary>
internal static partial class HostLock
{
    public const int LockEx = 2;
    public const int LockNb = 4;
    private const int OReadWrite = 2;
    private const int OCreate = 0x40;
    private const int OCloexec = 0x80000;

    // The soname, as Tmds.LibC names it: a bare "libc" sends the loader through ~60 failing paths first.
    private const string LibC = "libc.so.6";

    public static SafeFileHandle Open(string path)
    {
        int fd = OpenFile(path, OReadWrite | OCreate | OCloexec, Convert.ToInt32("644", 8));
        return fd >= 0
            ? new SafeFileHandle(fd, ownsHandle: true)
            : throw new IOException($"cannot open the host lock file {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
    }

    [LibraryImport(LibC, EntryPoint = "flock", SetLastError = true)]
    public static partial int Flock(int fd, int operation);

    [LibraryImport(LibC, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenFile(string path, int flags, int mode);
}
