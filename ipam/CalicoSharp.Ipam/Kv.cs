namespace CalicoSharp.Ipam;

/// <summary>One key as read: its value and the revision it was last written at (0 = absent).</summary>
public sealed record KvEntry(string Key, byte[] Value, long ModRevision);

/// <summary>A read to do in a batch: one key, or every key under a prefix.</summary>
public readonly record struct KvRead(string Key, bool Prefix = false, bool KeysOnly = false)
{
    public static KvRead One(string key) => new(key);

    public static KvRead Under(string prefix, bool keysOnly = false) => new(prefix, true, keysOnly);
}

/// <summary>A compare in a transaction: the key's mod revision must equal <paramref name="ModRevision"/>
/// (0: the key must not exist).</summary>
public readonly record struct KvCompare(string Key, long ModRevision);

/// <summary>A write in a transaction: put <paramref name="Value"/>, or delete the key when it is null.</summary>
public readonly record struct KvOp(string Key, byte[]? Value)
{
    public static KvOp Put(string key, byte[] value) => new(key, value);

    public static KvOp Delete(string key) => new(key, null);
}

/// <summary>Outcome of a transaction; <paramref name="Revision"/> is the store revision after it
/// (every key it wrote now has that mod revision). When it failed, <paramref name="Reads"/> holds what its
/// fallback reads found (one list per read), at the revision its compares failed at.</summary>
public readonly record struct KvTxnResult(bool Succeeded, long Revision, IReadOnlyList<IReadOnlyList<KvEntry>>? Reads = null);

/// <summary>The small slice of etcd's v3 API that IPAM needs. Every call honours its token
/// and fails with <see cref="IpamErrorKind.DatastoreUnavailable"/> when the store cannot answer.</summary>
public interface IKvStore : IDisposable
{
    /// <summary>Runs several reads in one round trip, at one revision. The result has one list per read.</summary>
    Task<IReadOnlyList<IReadOnlyList<KvEntry>>> ReadAsync(IReadOnlyList<KvRead> reads, CancellationToken ct);

    /// <summary>Atomically: if every compare holds, apply every op.</summary>
    Task<KvTxnResult> TxnAsync(IReadOnlyList<KvCompare> compares, IReadOnlyList<KvOp> ops, CancellationToken ct) => TxnAsync(compares, ops, [], ct);

    /// <summary>Atomically: if every compare holds, apply every op; if not, run the reads of <paramref name="otherwise"/>
    /// instead and return what they found (<see cref="KvTxnResult.Reads"/>): a guess and its correction in one round trip.</summary>
    Task<KvTxnResult> TxnAsync(IReadOnlyList<KvCompare> compares, IReadOnlyList<KvOp> ops, IReadOnlyList<KvRead> otherwise, CancellationToken ct);
}

public static class KvStoreExtensions
{
    public static async Task<KvEntry?> GetAsync(this IKvStore store, string key, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        var r = await store.ReadAsync([KvRead.One(key)], ct).ConfigureAwait(false);
        return r[0].Count > 0 ? r[0][0] : null;
    }

    public static async Task<IReadOnlyList<KvEntry>> ListAsync(this IKvStore store, string prefix, bool keysOnly, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        var r = await store.ReadAsync([KvRead.Under(prefix, keysOnly)], ct).ConfigureAwait(false);
        return r[0];
    }
}
