using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace CalicoSharp.Cni;

/// <summary>Appends lines to the configured log file (never stdout: stdout is the result).</summary>
public sealed partial class Log
{
    private readonly string? path;
    private readonly int threshold;
    private readonly string prefix;
    private readonly Lock gate = new();
    private SafeFileHandle? file;

    public Log(string? path, string level, string prefix)
    {
        this.path = path;
        this.prefix = prefix;
        threshold = Rank(level);
    }

    public static Log None { get; } = new(null, "error", string.Empty);

    public void Debug(string message) => Write(0, "debug", message);

    public void Info(string message) => Write(1, "info", message);

    public void Warning(string message) => Write(2, "warning", message);

    public void Error(string message) => Write(3, "error", message);

    private static int Rank(string level) => level switch
    {
        "debug" => 0,
        "info" => 1,
        "warn" or "warning" => 2,
        "error" => 3,
        _ => 1,
    };

    private void Write(int rank, string level, string message)
    {
        if (path is null || rank < threshold)
        {
            return;
        }

        byte[] line = Encoding.UTF8.GetBytes(string.Create(CultureInfo.InvariantCulture, $"{DateTime.UtcNow:yyyy-MM-dd HH:mm:ss.fff} [{level}] {prefix}{message}\n"));
        lock (gate)
        {
            try
            {
                file ??= Open(path);
                WriteAll(file, line);
            }
            catch (IOException)
            {
                // Logging must never fail a pod.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }
    }

    /// <summary>The log, opened once per process with O_APPEND: every line is one write(2) at the end of the
    /// file, so the lines of plugins running at the same time (110 pods at once) interleave whole instead of
    /// overwriting each other, as writes at a position found by seeking to the end did.</summary>
    private static SafeFileHandle Open(string path)
    {
        var dir = Path.GetDirectoryName(path);
        if (!string.IsNullOrEmpty(dir))
        {
            Directory.CreateDirectory(dir);
        }

        int fd = OpenAppend(path);
        if (fd < 0)
        {
            throw new IOException($"cannot open {path}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    private static unsafe void WriteAll(SafeFileHandle file, byte[] line)
    {
        fixed (byte* b = line)
        {
            int done = 0;
            while (done < line.Length)
            {
                nint n = WriteFd((int)file.DangerousGetHandle(), b + done, (nuint)(line.Length - done));
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Tmds.Linux.LibC.EINTR)
                    {
                        continue;
                    }

                    throw new IOException($"log write failed: {Marshal.GetPInvokeErrorMessage(errno)}");
                }

                done += (int)n;
            }
        }
    }

    private const int OWronly = 0x1, OCreat = 0x40, OAppend = 0x400, OCloexec = 0x80000;

    private static int OpenAppend(string path) => OpenFd(path, OWronly | OCreat | OAppend | OCloexec, 420 /* 0644 */);

    [LibraryImport("libc.so.6", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenFd(string path, int flags, int mode);

    [LibraryImport("libc.so.6", EntryPoint = "write", SetLastError = true)]
    private static unsafe partial nint WriteFd(int fd, byte* buffer, nuint count);
}
