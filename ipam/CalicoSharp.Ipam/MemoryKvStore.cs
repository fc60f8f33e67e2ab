namespace CalicoSharp.Ipam;

/// <summary>An in-memory store with etcd's revision semantics, for pure unit tests.</summary>
public sealed class MemoryKvStore : IKvStore
{
    private readonly SortedDictionary<string, KvEntry> data = new(StringComparer.Ordinal);
    private readonly Lock gate = new();
    private long revision = 1;

    /// <summary>Number of round trips served, so tests can assert the cost of an operation.</summary>
    public int RoundTrips { get; private set; }

    /// <summary>Called before each transaction is applied; tests use it to write in between (lose a race).</summary>
    public Action<MemoryKvStore>? BeforeTxn { get; set; }

    public long Revision
    {
        get
        {
            lock (gate)
            {
                return revision;
            }
        }
    }

    public Task<IReadOnlyList<IReadOnlyList<KvEntry>>> ReadAsync(IReadOnlyList<KvRead> reads, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(reads);
        ct.ThrowIfCancellationRequested();
        lock (gate)
        {
            RoundTrips++;
            return Task.FromResult(Read(reads));
        }
    }

    private IReadOnlyList<IReadOnlyList<KvEntry>> Read(IReadOnlyList<KvRead> reads)
    {
        var result = new List<IReadOnlyList<KvEntry>>(reads.Count);
        foreach (var read in reads)
        {
            var list = new List<KvEntry>();
            if (read.Prefix)
            {
                foreach (var (k, v) in data)
                {
                    if (k.StartsWith(read.Key, StringComparison.Ordinal))
                    {
                        list.Add(read.KeysOnly ? v with { Value = [] } : v);
                    }
                }
            }
            else if (data.TryGetValue(read.Key, out var e))
            {
                list.Add(e);
            }

            result.Add(list);
        }

        return result;
    }

    public Task<KvTxnResult> TxnAsync(IReadOnlyList<KvCompare> compares, IReadOnlyList<KvOp> ops, IReadOnlyList<KvRead> otherwise, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(compares);
        ArgumentNullException.ThrowIfNull(ops);
        ArgumentNullException.ThrowIfNull(otherwise);
        ct.ThrowIfCancellationRequested();
        var hook = BeforeTxn;
        BeforeTxn = null;
        hook?.Invoke(this);
        lock (gate)
        {
            RoundTrips++;
            foreach (var c in compares)
            {
                long have = data.TryGetValue(c.Key, out var e) ? e.ModRevision : 0;
                if (have != c.ModRevision)
                {
                    return Task.FromResult(new KvTxnResult(false, revision, otherwise.Count > 0 ? Read(otherwise) : null));
                }
            }

            if (ops.Count > 0)
            {
                revision++;
                foreach (var op in ops)
                {
                    if (op.Value is null)
                    {
                        data.Remove(op.Key);
                    }
                    else
                    {
                        data[op.Key] = new KvEntry(op.Key, op.Value, revision);
                    }
                }
            }

            return Task.FromResult(new KvTxnResult(true, revision));
        }
    }

    /// <summary>Writes a value directly (test set-up and fault planting).</summary>
    public void Put(string key, byte[] value)
    {
        lock (gate)
        {
            revision++;
            data[key] = new KvEntry(key, value, revision);
        }
    }

    public void Delete(string key)
    {
        lock (gate)
        {
            revision++;
            data.Remove(key);
        }
    }

    public void Dispose()
    {
    }
}
