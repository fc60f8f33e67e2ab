namespace CalicoSharp.Cni;

/// <summary>Error codes: the CNI spec's (0-99) and this plugin's own (100 up), listed in the README.</summary>
public static class CniCode
{
    public const int IncompatibleVersion = 1;
    public const int UnsupportedField = 2;
    public const int UnknownContainer = 3;
    public const int InvalidEnvironment = 4;
    public const int IoFailure = 5;
    public const int DecodingFailure = 6;
    public const int InvalidConfig = 7;
    public const int TryAgainLater = 11;
    public const int NotAvailable = 50;

    public const int PoolExhausted = 100;
    public const int BlockLimitReached = 101;
    public const int DataplaneFailure = 102;
    public const int AddressInUse = 103;
    public const int IpamFailure = 104;
    public const int CheckFailed = 105;
    public const int DelegateFailed = 106;
    public const int InternalError = 199;
}

/// <summary>A failure reported to the runtime as the spec's error JSON.</summary>
public sealed class CniException : Exception
{
    public CniException(int code, string message, string? details = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        Details = details;
    }

    public CniException()
    {
    }

    public CniException(string message)
        : base(message)
    {
    }

    public CniException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public int Code { get; }

    public string? Details { get; }
}
