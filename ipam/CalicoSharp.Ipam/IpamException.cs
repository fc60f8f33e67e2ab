namespace CalicoSharp.Ipam;

/// <summary>What went wrong, so that callers (CLI exit codes, CNI error codes) can tell the cases apart.</summary>
public enum IpamErrorKind
{
    /// <summary>Bad input: CIDR, block size, selector, overlapping pool, unknown name. Nothing was written.</summary>
    InvalidArgument,

    /// <summary>The named thing does not exist.</summary>
    NotFound,

    /// <summary>Every pool that was tried has no free address. Nothing was written.</summary>
    PoolExhausted,

    /// <summary>The node already holds maxBlocksPerHost blocks and may not borrow.</summary>
    BlockLimitReached,

    /// <summary>The address is already allocated (assigning a given address).</summary>
    AddressInUse,

    /// <summary>A pool still holds allocations and cannot be deleted.</summary>
    InUse,

    /// <summary>etcd could not be reached, has no quorum, or did not answer in time.</summary>
    DatastoreUnavailable,

    /// <summary>Compare-and-swap lost too many times in a row to other writers.</summary>
    Conflict,

    /// <summary>A record in etcd cannot be decoded.</summary>
    Corrupt,
}

public sealed class IpamException : Exception
{
    public IpamException(IpamErrorKind kind, string message, Exception? inner = null)
        : base(message, inner) => Kind = kind;

    public IpamException()
    {
    }

    public IpamException(string message)
        : base(message)
    {
    }

    public IpamException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public IpamErrorKind Kind { get; }
}
