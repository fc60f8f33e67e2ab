using System.Runtime.InteropServices;
using Tmds.Linux;

namespace CalicoSharp.Netlink;

/// <summary>A kernel refusal or a system-call failure, naming the operation and the object it was on.</summary>
public sealed class NetlinkException : Exception
{
    public NetlinkException(string operation, int errno, string? kernelMessage = null)
        : base(Format(operation, errno, kernelMessage))
    {
        Operation = operation;
        Errno = errno;
    }

    public NetlinkException()
    {
        Operation = string.Empty;
    }

    public NetlinkException(string message)
        : base(message)
    {
        Operation = string.Empty;
    }

    public NetlinkException(string message, Exception innerException)
        : base(message, innerException)
    {
        Operation = string.Empty;
    }

    public string Operation { get; }

    /// <summary>The positive errno (ENOENT = 2, EEXIST = 17, ...).</summary>
    public int Errno { get; }

    public bool NotFound => Errno == LibC.ENOENT || Errno == LibC.ENODEV || Errno == LibC.ESRCH;

    public bool Exists => Errno == LibC.EEXIST;

    private static string Format(string operation, int errno, string? kernelMessage) =>
        $"{operation}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}){(string.IsNullOrEmpty(kernelMessage) ? string.Empty : $": {kernelMessage}")}";
}
