using System.Net;

namespace CalicoSharp.Ipam;

/// <summary>Where an address stands: its block, owner node, and who holds it (null handle: free).</summary>
public sealed record IpLookup(IPAddress Address, IpNet Block, string? BlockNode, bool Allocated, string? HandleId,
    IReadOnlyDictionary<string, string>? Attributes, ulong? SequenceNumber, string? Pool);

/// <summary>What releasing a node did.</summary>
public sealed record NodeReleaseResult(int BlocksDeleted, int BlocksUnaffined, int AffinitiesRemoved);

public sealed partial class IpamClient
{
    /// <summary>Releases every address of a handle. Returns how many were freed; 0 when the handle does
    /// not exist (release is idempotent).</summary>
    public Task<int> ReleaseByHandleAsync(string handleId, CancellationToken ct = default)
    {
        ValidateHandle(handleId);
        return RunAsync($"releasing handle {handleId}", t => ReleaseByHandleCoreAsync(handleId, t), ct);
    }

    private async Task<int> ReleaseByHandleCoreAsync(string handleId, CancellationToken ct)
    {
        var handle = HandleState.From(handleId, await store.GetAsync(Keys.Handle(handleId), ct).ConfigureAwait(false));
        if (handle.Handle?.Block is not { Count: > 0 })
        {
            if (handle.Rev != 0)
            {
                // An empty handle record: remove it.
                await store.TxnAsync([new(handle.Key, handle.Rev)], [KvOp.Delete(handle.Key)], ct).ConfigureAwait(false);
            }

            return 0;
        }

        int freed = 0;
        var cidrs = BlocksOf(handle.Handle);
        var r = await store.ReadAsync([.. cidrs.Select(c => KvRead.One(Keys.Block(c)))], ct).ConfigureAwait(false);
        for (int i = 0; i < cidrs.Count; i++)
        {
            var cidr = cidrs[i];
            var bs = BlockState.From(cidr, r[i].FirstOrDefault());
            for (int attempt = 0; ; attempt++)
            {
                if (attempt == options.MaxAttempts)
                {
                    throw Conflict($"releasing handle {handleId} in block {cidr}");
                }

                int n = 0;
                if (bs.Block is not null)
                {
                    n = BlockLogic.Release(bs.Block, BlockLogic.OrdinalsOf(bs.Block, handleId)).Count;
                }

                // The handle forgets this block whatever it counted: the block is the truth.
                handle.Handle?.Block?.Remove(cidr.ToString());
                bool ok = n == 0
                    ? await CommitHandleAsync(handle, ct).ConfigureAwait(false)
                    : await CommitAsync(bs, [handle], [], [], ct).ConfigureAwait(false);
                if (ok)
                {
                    freed += n;
                    AfterStep("released");
                    break;
                }

                await RefreshAsync(bs, [handle], ct).ConfigureAwait(false);
                if (handle.Handle?.Block?.ContainsKey(cidr.ToString()) != true)
                {
                    break;
                }

                await BackoffAsync(attempt, ct).ConfigureAwait(false);
            }
        }

        // Blocks the handle named but could not be parsed: drop them so the handle does not linger.
        if (handle.Handle?.Block is { Count: > 0 } left && left.Keys.All(k => !IpNet.TryParse(k, true, out _, out _)))
        {
            await store.TxnAsync([new(handle.Key, handle.Rev)], [KvOp.Delete(handle.Key)], ct).ConfigureAwait(false);
        }

        return freed;
    }

    /// <summary>Writes a handle alone (its block unchanged), compared against the revision it was read at.</summary>
    private async Task<bool> CommitHandleAsync(HandleState handle, CancellationToken ct)
    {
        var t = await store.TxnAsync([new(handle.Key, handle.Rev)], [handle.Op()], ct).ConfigureAwait(false);
        if (t.Succeeded)
        {
            handle.Committed(t.Revision);
        }

        return t.Succeeded;
    }

    /// <summary>Releases given addresses. An address with a sequence number is released only if it is
    /// still the allocation that number names. Returns the addresses actually freed.</summary>
    public Task<IReadOnlyList<IPAddress>> ReleaseAsync(IReadOnlyList<ReleaseRequest> addresses, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        return RunAsync("releasing addresses", t => ReleaseCoreAsync(addresses, t), ct);
    }

    private async Task<IReadOnlyList<IPAddress>> ReleaseCoreAsync(IReadOnlyList<ReleaseRequest> addresses, CancellationToken ct)
    {
        var freed = new List<IPAddress>();
        var pools = PoolsFrom(await store.ListAsync(Keys.PoolPrefix, keysOnly: false, ct).ConfigureAwait(false));
        foreach (var group in (await GroupByBlockAsync(addresses, pools, ct).ConfigureAwait(false)).GroupBy(x => x.Block))
        {
            var cidr = group.Key;
            var bs = BlockState.From(cidr, await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false));
            for (int attempt = 0; ; attempt++)
            {
                if (bs.Block is null)
                {
                    break;
                }

                if (attempt == options.MaxAttempts)
                {
                    throw Conflict($"releasing addresses in block {cidr}");
                }

                var block = bs.Block;
                var ordinals = new List<int>();
                foreach (var (req, _) in group)
                {
                    int o = (int)cidr.OffsetOf(req.Address);
                    if (block.Allocations[o] is not null && (req.SequenceNumber is not { } seq || BlockLogic.SequenceOf(block, o) == seq))
                    {
                        ordinals.Add(o);
                    }
                }

                if (ordinals.Count == 0)
                {
                    break;
                }

                var handleIds = ordinals.Select(o => BlockLogic.AttributeOf(block, o)?.HandleId).OfType<string>().Distinct().ToList();
                var hr = await store.ReadAsync([.. handleIds.Select(h => KvRead.One(Keys.Handle(h)))], ct).ConfigureAwait(false);
                var handles = handleIds.Select((h, i) => HandleState.From(h, hr[i].FirstOrDefault())).ToList();
                var released = BlockLogic.Release(block, ordinals);
                foreach (var h in handles)
                {
                    int n = released.Count(x => x.HandleId == h.Id);
                    if (h.Handle is not null)
                    {
                        h.Add(cidr, -n);
                    }
                }

                // Handles that do not exist are not recreated.
                var present = handles.Where(h => h.Rev != 0).ToList();
                if (await CommitAsync(bs, present, [], [.. handles.Where(h => h.Rev == 0).Select(h => new KvCompare(h.Key, 0))], ct).ConfigureAwait(false))
                {
                    freed.AddRange(released.Select(x => cidr.AddressAt((UInt128)x.Ordinal)));
                    break;
                }

                bs = BlockState.From(cidr, await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false));
                await BackoffAsync(attempt, ct).ConfigureAwait(false);
            }
        }

        return freed;
    }

    /// <summary>Finds the block of each address: where a pool holds it, the block its block size gives
    /// (one batched read); otherwise (pool deleted or resized) from a keys-only read of the block keys.</summary>
    private async Task<List<(ReleaseRequest Req, IpNet Block)>> GroupByBlockAsync(IReadOnlyList<ReleaseRequest> addresses, List<IpPool> pools, CancellationToken ct)
    {
        var guesses = addresses.Select(a => pools.FirstOrDefault(p => p.Cidr.Contains(a.Address)) is { } p ? IpNet.Enclosing(a.Address, p.BlockSize) : (IpNet?)null).ToList();
        var probe = guesses.OfType<IpNet>().Distinct().ToList();
        var found = new HashSet<IpNet>();
        if (probe.Count > 0)
        {
            var r = await store.ReadAsync([.. probe.Select(c => new KvRead(Keys.Block(c), KeysOnly: true))], ct).ConfigureAwait(false);
            found.UnionWith(probe.Where((c, i) => r[i].Count > 0));
        }

        var result = new List<(ReleaseRequest, IpNet)>(addresses.Count);
        var scanned = new Dictionary<bool, List<IpNet>>();
        for (int i = 0; i < addresses.Count; i++)
        {
            var req = addresses[i];
            if (guesses[i] is { } g && found.Contains(g))
            {
                result.Add((req, g));
                continue;
            }

            bool v6 = req.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6;
            if (!scanned.TryGetValue(v6, out var blocks))
            {
                blocks = scanned[v6] = await ListBlockCidrsAsync(v6, ct).ConfigureAwait(false);
            }

            if (FindBlock(blocks, req.Address) is { } b)
            {
                result.Add((req, b));
            }
        }

        return result;
    }

    private static IpNet? FindBlock(List<IpNet> sortedBlocks, IPAddress address)
    {
        var hit = FirstEndingAtOrAfter(sortedBlocks, IpNet.ToNumber(address));
        return hit is { } h && h.Contains(address) ? h : null;
    }

    /// <summary>Releases a node's blocks: empty ones are deleted, the others lose their affinity (their
    /// addresses stay allocated), and every affinity of the node is removed.</summary>
    public Task<NodeReleaseResult> ReleaseNodeAsync(string node, CancellationToken ct = default)
    {
        ValidateNode(node);
        return RunAsync($"releasing node {node}", t => ReleaseNodeCoreAsync(node, t), ct);
    }

    private async Task<NodeReleaseResult> ReleaseNodeCoreAsync(string node, CancellationToken ct)
    {
        int deleted = 0, unaffined = 0, removed = 0;
        var affinities = await store.ListAsync(Keys.HostAffinityPrefix(node), keysOnly: true, ct).ConfigureAwait(false);
        foreach (var aff in affinities)
        {
            if (!Keys.TryParseAffinityKey(aff.Key, out _, out var cidr))
            {
                await store.TxnAsync([], [KvOp.Delete(aff.Key)], ct).ConfigureAwait(false);
                removed++;
                continue;
            }

            for (int attempt = 0; ; attempt++)
            {
                if (attempt == options.MaxAttempts)
                {
                    throw Conflict($"releasing block {cidr} of node {node}");
                }

                var r = await store.ReadAsync([KvRead.One(Keys.Block(cidr)), KvRead.One(aff.Key)], ct).ConfigureAwait(false);
                var bs = BlockState.From(cidr, r[0].FirstOrDefault());
                long affRev = r[1].FirstOrDefault()?.ModRevision ?? 0;
                bool ours = bs.Block?.Affinity == Keys.AffinityOf(node);
                bool empty = bs.Block is not null && BlockLogic.IsEmpty(bs.Block);
                if (bs.Block is not null && ours)
                {
                    if (empty)
                    {
                        bs.Block = null;
                    }
                    else
                    {
                        bs.Block.Affinity = null;
                        bs.Block.AffinityClaimTime = null;
                        bs.Block.SequenceNumber++;
                    }

                    if (await CommitAsync(bs, [], [KvOp.Delete(aff.Key)], [new(aff.Key, affRev)], ct).ConfigureAwait(false))
                    {
                        if (empty)
                        {
                            deleted++;
                        }
                        else
                        {
                            unaffined++;
                        }

                        removed++;
                        break;
                    }
                }
                else
                {
                    // No block, or a block that is not ours: only the affinity goes.
                    var t = await store.TxnAsync([new(aff.Key, affRev), new(Keys.Block(cidr), bs.Rev)], [KvOp.Delete(aff.Key)], ct).ConfigureAwait(false);
                    if (t.Succeeded)
                    {
                        removed += affRev != 0 ? 1 : 0;
                        break;
                    }
                }

                await BackoffAsync(attempt, ct).ConfigureAwait(false);
            }
        }

        lock (hintGate)
        {
            hints.Remove(HintKey(node, false));
            hints.Remove(HintKey(node, true));
        }

        return new NodeReleaseResult(deleted, unaffined, removed);
    }

    /// <summary>What IPAM knows of one address; null when no block holds it.</summary>
    public Task<IpLookup?> LookupAsync(IPAddress address, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(address);
        return RunAsync($"looking up {address}", t => LookupCoreAsync(address, t), ct);
    }

    private async Task<IpLookup?> LookupCoreAsync(IPAddress address, CancellationToken ct)
    {
        var pools = PoolsFrom(await store.ListAsync(Keys.PoolPrefix, keysOnly: false, ct).ConfigureAwait(false));
        if ((await GroupByBlockAsync([new ReleaseRequest(address)], pools, ct).ConfigureAwait(false)) is not [var (_, cidr)])
        {
            return null;
        }

        var bs = BlockState.From(cidr, await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false));
        if (bs.Block is null)
        {
            return null;
        }

        var pool = pools.FirstOrDefault(p => p.Cidr.Contains(address))?.Name;
        int o = (int)cidr.OffsetOf(address);
        var attr = BlockLogic.AttributeOf(bs.Block, o);
        bool allocated = bs.Block.Allocations[o] is not null;
        return new IpLookup(address, cidr, Keys.NodeOfAffinity(bs.Block.Affinity), allocated, attr?.HandleId, attr?.Secondary,
            allocated ? BlockLogic.SequenceOf(bs.Block, o) : null, pool);
    }

    /// <summary>Handles of the CNI network <paramref name="network"/> ("&lt;network&gt;.&lt;container id&gt;") that
    /// hold an address allocated for <paramref name="node"/> (per the allocation's "node" attribute). Network
    /// names may hold dots, so the prefix alone is ambiguous ("k8s.x.b1" may be network "k8s.x"'s): a handle
    /// belongs to the network when it is the network, a dot and the allocation's "containerID" attribute, or,
    /// for an allocation without that attribute, when what follows the network's dot holds no dot of its own
    /// (runtimes' container ids are hex).</summary>
    public Task<IReadOnlyList<string>> HandlesOfNetworkOnNodeAsync(string network, string node, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(network);
        ValidateNode(node);
        string prefix = network + ".";
        return RunAsync("listing handles", async t =>
        {
            var handles = await store.ListAsync(Keys.HandlePrefix + prefix, keysOnly: false, t).ConfigureAwait(false);
            var byBlock = new Dictionary<IpNet, List<string>>();
            foreach (var h in handles)
            {
                var id = h.Key[Keys.HandlePrefix.Length..];
                foreach (var b in RecordJson.DecodeHandle(h.Value, h.Key).Block?.Keys ?? Enumerable.Empty<string>())
                {
                    if (IpNet.TryParse(b, true, out var cidr, out _))
                    {
                        (byBlock.TryGetValue(cidr, out var l) ? l : byBlock[cidr] = []).Add(id);
                    }
                }
            }

            var cidrs = byBlock.Keys.ToList();
            var r = await store.ReadAsync([.. cidrs.Select(c => KvRead.One(Keys.Block(c)))], t).ConfigureAwait(false);
            var found = new SortedSet<string>(StringComparer.Ordinal);
            for (int i = 0; i < cidrs.Count; i++)
            {
                if (r[i].FirstOrDefault() is not { } e)
                {
                    continue;
                }

                var block = RecordJson.DecodeBlock(e.Value, e.Key);
                foreach (var a in block.Attributes)
                {
                    if (a.HandleId is { } id && byBlock[cidrs[i]].Contains(id) && a.Secondary?.GetValueOrDefault("node") == node
                        && (a.Secondary.GetValueOrDefault("containerID") is { } container ? id == prefix + container : !id.AsSpan(prefix.Length).Contains('.')))
                    {
                        found.Add(id);
                    }
                }
            }

            return (IReadOnlyList<string>)[.. found];
        }, ct);
    }

    /// <summary>Addresses a handle holds, with their sequence numbers.</summary>
    public Task<IReadOnlyList<AssignedAddress>> AddressesOfHandleAsync(string handleId, CancellationToken ct = default)
    {
        ValidateHandle(handleId);
        return RunAsync($"reading handle {handleId}", async t =>
        {
            var h = await store.GetAsync(Keys.Handle(handleId), t).ConfigureAwait(false);
            return await HeldAddressesAsync(handleId, h is null ? null : RecordJson.DecodeHandle(h.Value, h.Key), t).ConfigureAwait(false);
        }, ct);
    }

    /// <summary>The blocks a handle names, skipping keys that are not CIDRs.</summary>
    private static List<IpNet> BlocksOf(IpamHandle? handle) =>
        [.. (handle?.Block?.Keys ?? Enumerable.Empty<string>()).Select(k => IpNet.TryParse(k, true, out var c, out _) ? c : (IpNet?)null).OfType<IpNet>()];

    /// <summary>The addresses the blocks hold for a handle, its blocks read in one round trip.</summary>
    private async Task<IReadOnlyList<AssignedAddress>> HeldAddressesAsync(string handleId, IpamHandle? handle, CancellationToken ct)
    {
        var cidrs = BlocksOf(handle);
        var list = new List<AssignedAddress>();
        if (cidrs.Count == 0)
        {
            return list;
        }

        var r = await store.ReadAsync([.. cidrs.Select(c => KvRead.One(Keys.Block(c)))], ct).ConfigureAwait(false);
        for (int i = 0; i < cidrs.Count; i++)
        {
            if (r[i].FirstOrDefault() is not { } e)
            {
                continue;
            }

            var block = RecordJson.DecodeBlock(e.Value, e.Key);
            foreach (int o in BlockLogic.OrdinalsOf(block, handleId))
            {
                list.Add(new AssignedAddress(cidrs[i].AddressAt((UInt128)o), cidrs[i], BlockLogic.SequenceOf(block, o) ?? 0));
            }
        }

        return list;
    }
}
