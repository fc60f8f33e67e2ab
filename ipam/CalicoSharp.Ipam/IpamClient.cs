using System.Net;

namespace CalicoSharp.Ipam;

public sealed record IpamClientOptions
{
    /// <summary>The node's state folder, shared by the CNI plugin and bgpd: block hints and lock files.</summary>
    public const string DefaultStateDirectory = "/var/lib/calicosharp";

    /// <summary>Options for a node's allocator: hints in &lt;dir&gt;/ipam, the host lock in &lt;dir&gt;/locks.</summary>
    public static IpamClientOptions InStateDirectory(string? stateDirectory, TimeSpan timeout)
    {
        string dir = stateDirectory ?? DefaultStateDirectory;
        return new IpamClientOptions { Timeout = timeout, HintDirectory = Path.Combine(dir, "ipam"), LockDirectory = Path.Combine(dir, "locks") };
    }

    /// <summary>Bound on one whole operation, retries included.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How many times a lost compare-and-swap is retried before giving up.</summary>
    public int MaxAttempts { get; init; } = 16;

    /// <summary>An empty block of another node may be reclaimed once its claim is this old.</summary>
    public TimeSpan ReclaimAge { get; init; } = TimeSpan.FromMinutes(1);

    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>Where to remember each node's last-used block between processes (the CNI plugin runs
    /// once per pod), so that a warm allocation is one read and one transaction. Null: in memory only.</summary>
    public string? HintDirectory { get; init; }

    /// <summary>Where <see cref="IpamClient.LockNodeAsync"/> keeps one lock file per node. Null: no lock.</summary>
    public string? LockDirectory { get; init; }

    /// <summary>For a long-lived allocator of one node (bgpd): keep what the last assignment knew of the node
    /// (config, pools, labels, affinities, blocks, each with its revision) and start the next one from it:
    /// one transaction that compares every record it relies on, and reads them all afresh in the same round
    /// trip when one has changed.</summary>
    public bool KeepNodeView { get; init; }

    /// <summary>Called after each write of a claim, an allocation or a release ("affinity-pending",
    /// "block-created", "affinity-confirmed", "allocated", "released"): the crash tests' fault points (the
    /// test-only plugin build kills itself there). Null, as everywhere outside those tests: nothing runs.</summary>
    public Action<string>? AfterStep { get; init; }
}

/// <summary>What to allocate: N IPv4 and/or M IPv6 addresses for a handle on a node.</summary>
public sealed record AutoAssignRequest
{
    public required string HandleId { get; init; }

    public required string Node { get; init; }

    public int Num4 { get; init; }

    public int Num6 { get; init; }

    /// <summary>Allocation attributes (namespace, pod, container id...). "node" and "timestamp" are added.</summary>
    public IReadOnlyDictionary<string, string>? Attributes { get; init; }

    /// <summary>Pool names or CIDRs to take IPv4 addresses from; empty: every enabled pool that selects the node.</summary>
    public IReadOnlyList<string>? Ipv4Pools { get; init; }

    public IReadOnlyList<string>? Ipv6Pools { get; init; }

    /// <summary>When the handle already holds exactly the asked-for number of addresses of each family
    /// (a retried ADD), return those instead of allocating more.</summary>
    public bool ReuseExisting { get; init; }
}

/// <summary>One address handed out: the address, its block, and the block sequence number that guards its release.</summary>
public sealed record AssignedAddress(IPAddress Address, IpNet Block, ulong SequenceNumber);

/// <summary>An address to release; with a sequence number, only if it is still that allocation.</summary>
public readonly record struct ReleaseRequest(IPAddress Address, ulong? SequenceNumber = null);

/// <summary>The IPAM allocator: Calico's block-affinity algorithm over an <see cref="IKvStore"/>.</summary>
public sealed partial class IpamClient : IDisposable
{
    private readonly IKvStore store;
    private readonly IpamClientOptions options;
    private readonly Dictionary<string, IpNet> hints = new(StringComparer.Ordinal);
    private readonly Lock hintGate = new();
    private NodeView? keptView;

    public IpamClient(IKvStore store, IpamClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        this.store = store;
        this.options = options ?? new IpamClientOptions();
    }

    public IKvStore Store => store;

    public IpamClientOptions Options => options;

    private DateTimeOffset Now => options.Time.GetUtcNow();

    private void AfterStep(string step) => options.AfterStep?.Invoke(step);

    public void Dispose() => store.Dispose();

    /// <summary>Runs one operation under the client's time bound, mapping the bound to a clear error.</summary>
    private async Task<T> RunAsync<T>(string what, Func<CancellationToken, Task<T>> body, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(options.Timeout);
        try
        {
            return await body(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
        {
            throw new IpamException(IpamErrorKind.DatastoreUnavailable,
                $"{what} did not finish within {options.Timeout.TotalSeconds:0.###} s: etcd is slow or unreachable", e);
        }
        catch (IpamException e) when (e.Kind == IpamErrorKind.DatastoreUnavailable && !e.Message.StartsWith(what, StringComparison.Ordinal))
        {
            throw new IpamException(IpamErrorKind.DatastoreUnavailable, $"{what} failed: {e.Message}", e);
        }
    }

    /// <summary>Takes this host's lock for a node (an exclusive flock on a file) so that the processes of one
    /// host that allocate for the same node take turns instead of racing for the same block. Measured: 110
    /// concurrent CNI ADDs on one node lose the compare-and-swap 16 times in a row without it; with 20
    /// library processes it costs 10-20 %, so only the CNI plugin takes it. Waits within the client's bound.</summary>
    public async Task<IDisposable?> LockNodeAsync(string node, CancellationToken ct = default)
    {
        ValidateNode(node);
        if (options.LockDirectory is null)
        {
            return null;
        }

        Directory.CreateDirectory(options.LockDirectory);
        var path = Path.Combine(options.LockDirectory, node + ".lock");
        var handle = HostLock.Open(path);
        int fd = (int)handle.DangerousGetHandle();
        if (HostLock.Flock(fd, HostLock.LockEx | HostLock.LockNb) == 0)
        {
            return handle;
        }

        // Wait in the kernel (no polling), on a thread of its own; a lock won after we gave up is let go.
        var won = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new Lock();
        bool abandoned = false;
        var waiter = new Thread(() =>
        {
            bool ok = HostLock.Flock(fd, HostLock.LockEx) == 0;
            lock (gate)
            {
                if (abandoned)
                {
                    handle.Dispose();
                    return;
                }

                won.TrySetResult(ok);
            }
        }, 64 * 1024)
        { IsBackground = true, Name = "host-lock" };
        waiter.Start();
        try
        {
            if (await won.Task.WaitAsync(options.Timeout, ct).ConfigureAwait(false))
            {
                return handle;
            }

            handle.Dispose();
            throw new IpamException(IpamErrorKind.Conflict, $"could not take the host lock of node {node} ({path})");
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            lock (gate)
            {
                abandoned = true;
                if (won.Task.IsCompletedSuccessfully)
                {
                    handle.Dispose();
                }
            }

            throw new IpamException(IpamErrorKind.Conflict, $"waited {options.Timeout.TotalSeconds:0.###} s for the host lock of node {node} ({path}); try again", e);
        }
    }

    private static Task BackoffAsync(int attempt, CancellationToken ct) =>
        Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(1, 2 << Math.Min(attempt, 6))), ct);

    private IpamException Conflict(string what) =>
        new(IpamErrorKind.Conflict, $"{what}: lost the compare-and-swap {options.MaxAttempts} times in a row to other writers; try again");

    internal static void ValidateHandle(string handleId)
    {
        if (string.IsNullOrEmpty(handleId) || handleId.Contains('/', StringComparison.Ordinal) || handleId.Length > 512)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, $"invalid handle '{handleId}': it must be non-empty, at most 512 characters, without '/'");
        }
    }

    internal static void ValidateNode(string node)
    {
        if (string.IsNullOrEmpty(node) || node.Contains('/', StringComparison.Ordinal) || node.Length > 253)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, $"invalid node name '{node}': it must be non-empty, at most 253 characters, without '/'");
        }
    }

    // ---- block and handle state held during an operation -------------------------------------------

    /// <summary>A block as read, with the revision to compare against when writing it back.</summary>
    private sealed class BlockState(IpNet cidr, AllocationBlock? block, long rev)
    {
        public IpNet Cidr { get; } = cidr;

        public AllocationBlock? Block { get; set; } = block;

        public long Rev { get; set; } = rev;

        public static BlockState From(IpNet cidr, KvEntry? e) =>
            new(cidr, e is null ? null : RecordJson.DecodeBlock(e.Value, e.Key), e?.ModRevision ?? 0);
    }

    /// <summary>A handle as read (absent: rev 0), edited in memory and written with its block.</summary>
    private sealed class HandleState(string id, IpamHandle? handle, long rev)
    {
        public string Id { get; } = id;

        public string Key { get; } = Keys.Handle(id);

        public IpamHandle? Handle { get; set; } = handle;

        public long Rev { get; set; } = rev;

        public static HandleState From(string id, KvEntry? e) =>
            new(id, e is null ? null : RecordJson.DecodeHandle(e.Value, e.Key), e?.ModRevision ?? 0);

        public void Add(IpNet block, int delta)
        {
            Handle ??= new IpamHandle();
            var map = Handle.Block ??= new Dictionary<string, int>(StringComparer.Ordinal);
            var key = block.ToString();
            int n = (map.TryGetValue(key, out var have) ? have : 0) + delta;
            if (n > 0)
            {
                map[key] = n;
            }
            else
            {
                map.Remove(key);
            }
        }

        /// <summary>The op that writes this handle: a put, or a delete once it holds nothing.</summary>
        public KvOp Op() => Handle?.Block is { Count: > 0 } ? KvOp.Put(Key, RecordJson.Encode(Handle)) : KvOp.Delete(Key);

        /// <summary>Records a successful write of <see cref="Op"/> at <paramref name="revision"/>.</summary>
        public void Committed(long revision) => Rev = Handle?.Block is { Count: > 0 } ? revision : 0;
    }

    /// <summary>Writes a block and the handles it touched in one transaction that compares them all.</summary>
    private async Task<bool> CommitAsync(BlockState bs, IReadOnlyList<HandleState> handles, IReadOnlyList<KvOp> extraOps, IReadOnlyList<KvCompare> extraCompares, CancellationToken ct)
    {
        var compares = new List<KvCompare>(2 + handles.Count + extraCompares.Count) { new(Keys.Block(bs.Cidr), bs.Rev) };
        var ops = new List<KvOp>(2 + handles.Count + extraOps.Count);
        ops.Add(bs.Block is null ? KvOp.Delete(Keys.Block(bs.Cidr)) : KvOp.Put(Keys.Block(bs.Cidr), RecordJson.Encode(bs.Block)));
        foreach (var h in handles)
        {
            compares.Add(new KvCompare(h.Key, h.Rev));
            ops.Add(h.Op());
        }

        compares.AddRange(extraCompares);
        ops.AddRange(extraOps);
        var result = await store.TxnAsync(compares, ops, ct).ConfigureAwait(false);
        if (result.Succeeded)
        {
            bs.Rev = bs.Block is null ? 0 : result.Revision;
            foreach (var h in handles)
            {
                h.Committed(result.Revision);
            }
        }

        return result.Succeeded;
    }

    /// <summary>Edits a block and one handle and writes both in one transaction; a lost compare re-reads
    /// both (discarding the edit) and edits again, with jittered back-off. <paramref name="edit"/> returns
    /// null to stop without writing.</summary>
    private async Task<T?> EditAndCommitAsync<T>(BlockState bs, HandleState handle, Func<AllocationBlock?, T?> edit, string what, CancellationToken ct)
        where T : class
    {
        for (int attempt = 0; attempt < options.MaxAttempts; attempt++)
        {
            var result = edit(bs.Block);
            if (result is null)
            {
                return null;
            }

            if (await CommitAsync(bs, [handle], [], [], ct).ConfigureAwait(false))
            {
                return result;
            }

            await RefreshAsync(bs, [handle], ct).ConfigureAwait(false);
            await BackoffAsync(attempt, ct).ConfigureAwait(false);
        }

        throw Conflict(what);
    }

    /// <summary>Re-reads a block and handles after a lost compare, in one round trip.</summary>
    private async Task RefreshAsync(BlockState bs, IReadOnlyList<HandleState> handles, CancellationToken ct)
    {
        var reads = new List<KvRead>(1 + handles.Count) { KvRead.One(Keys.Block(bs.Cidr)) };
        reads.AddRange(handles.Select(h => KvRead.One(h.Key)));
        var r = await store.ReadAsync(reads, ct).ConfigureAwait(false);
        var fresh = BlockState.From(bs.Cidr, r[0].FirstOrDefault());
        bs.Block = fresh.Block;
        bs.Rev = fresh.Rev;
        for (int i = 0; i < handles.Count; i++)
        {
            var h = HandleState.From(handles[i].Id, r[i + 1].FirstOrDefault());
            handles[i].Handle = h.Handle;
            handles[i].Rev = h.Rev;
        }
    }

    // ---- hints: the block a node used last ----------------------------------------------------------

    private static string HintKey(string node, bool v6) => $"{node}.{Keys.Version(v6)}";

    private IpNet? GetHint(string node, bool v6)
    {
        var key = HintKey(node, v6);
        lock (hintGate)
        {
            if (hints.TryGetValue(key, out var h))
            {
                return h;
            }
        }

        if (options.HintDirectory is null)
        {
            return null;
        }

        try
        {
            var text = File.ReadAllText(Path.Combine(options.HintDirectory, key)).Trim();
            return IpNet.TryParse(text, strict: true, out var net, out _) && net.IsIPv6 == v6 ? net : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private void SetHint(string node, IpNet block)
    {
        var key = HintKey(node, block.IsIPv6);
        lock (hintGate)
        {
            if (hints.TryGetValue(key, out var old) && old == block)
            {
                return;
            }

            hints[key] = block;
        }

        if (options.HintDirectory is null)
        {
            return;
        }

        try
        {
            Directory.CreateDirectory(options.HintDirectory);
            var tmp = Path.Combine(options.HintDirectory, $".{key}.{Environment.ProcessId}");
            File.WriteAllText(tmp, block.ToString());
            File.Move(tmp, Path.Combine(options.HintDirectory, key), overwrite: true);
        }
        catch (IOException)
        {
            // A hint is only an optimisation.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    // ---- shared reads --------------------------------------------------------------------------------

    private static IpamConfig ConfigFrom(IReadOnlyList<KvEntry> entries) =>
        entries.Count == 0 ? IpamConfig.Defaults : RecordJson.DecodeConfig(entries[0].Value, entries[0].Key);

    private static List<IpPool> PoolsFrom(IReadOnlyList<KvEntry> entries)
    {
        var list = new List<IpPool>(entries.Count);
        foreach (var e in entries)
        {
            list.Add(IpPool.FromResource(RecordJson.DecodePool(e.Value, e.Key), e.ModRevision));
        }

        return list;
    }

    private static Dictionary<string, string> LabelsFrom(IReadOnlyList<KvEntry> entries) =>
        entries.Count == 0 ? [] : RecordJson.DecodeNode(entries[0].Value, entries[0].Key).Metadata.Labels ?? [];

    /// <summary>Existing blocks whose keys start with <paramref name="keyPrefix"/> (after the family's block
    /// prefix), from one keys-only range read, sorted by address.</summary>
    private async Task<List<IpNet>> ListBlockCidrsAsync(bool v6, CancellationToken ct, string keyPrefix = "")
    {
        var keys = await store.ListAsync(Keys.BlockPrefix(v6) + keyPrefix, keysOnly: true, ct).ConfigureAwait(false);
        var list = new List<IpNet>(keys.Count);
        foreach (var k in keys)
        {
            if (Keys.TryParseBlockKey(k.Key, out var cidr))
            {
                list.Add(cidr);
            }
        }

        list.Sort();
        return list;
    }

    private async Task<List<BlockState>> ReadAllBlocksAsync(bool v6, CancellationToken ct)
    {
        var entries = await store.ListAsync(Keys.BlockPrefix(v6), keysOnly: false, ct).ConfigureAwait(false);
        var list = new List<BlockState>(entries.Count);
        foreach (var e in entries)
        {
            if (Keys.TryParseBlockKey(e.Key, out var cidr))
            {
                list.Add(BlockState.From(cidr, e));
            }
        }

        return list;
    }
}
