using System.Net;
using System.Text;

namespace CalicoSharp.Ipam;

public sealed partial class IpamClient
{
    /// <summary>Everything an allocation needs to know about its node, read in one round trip.</summary>
    private sealed class NodeView
    {
        public required string Node { get; init; }

        public required IpamConfig Config { get; init; }

        public required List<IpPool> Pools { get; init; }

        public required Dictionary<string, string> Labels { get; init; }

        /// <summary>Mod revisions of the config and node records as read (0: absent).</summary>
        public required long ConfigRev { get; init; }

        public required long NodeRev { get; init; }

        /// <summary>This node's affinities: block → (state, revision).</summary>
        public required Dictionary<IpNet, (BlockAffinity Affinity, long Rev)> Affinities { get; init; }

        /// <summary>Blocks read so far (the hinted ones in the first round trip, the rest on demand).</summary>
        public Dictionary<IpNet, BlockState> Blocks { get; } = [];
    }

    /// <summary>Auto-assigns addresses. On any failure every address this call took is given back.</summary>
    public Task<IReadOnlyList<AssignedAddress>> AutoAssignAsync(AutoAssignRequest request, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        ValidateHandle(request.HandleId);
        ValidateNode(request.Node);
        if (request.Num4 < 0 || request.Num6 < 0 || request.Num4 + request.Num6 == 0)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, "ask for at least one address: the IPv4 and IPv6 counts must be non-negative and not both 0");
        }

        return RunAsync("IP assignment", t => AutoAssignCoreAsync(request, t), ct);
    }

    private async Task<IReadOnlyList<AssignedAddress>> AutoAssignCoreAsync(AutoAssignRequest request, CancellationToken ct)
    {
        IpNet?[] hinted = [request.Num4 > 0 ? GetHint(request.Node, false) : null, request.Num6 > 0 ? GetHint(request.Node, true) : null];
        var attrs = new Dictionary<string, string>(request.Attributes ?? new Dictionary<string, string>(), StringComparer.Ordinal)
        {
            ["node"] = request.Node,
            ["timestamp"] = BlockLogic.FormatGoTime(Now),
        };

        // Taken out while in use: a concurrent assignment reads for itself.
        var kept = options.KeepNodeView ? Interlocked.Exchange(ref keptView, null) : null;
        (NodeView View, HandleState Handle)? fresh = null;
        if (kept is not null && kept.Node == request.Node)
        {
            var (done, read) = await AssignFromKeptViewAsync(kept, request, hinted, attrs, ct).ConfigureAwait(false);
            if (done is not null)
            {
                keptView = kept;
                return done;
            }

            fresh = read;
        }

        var (view, handle) = fresh ?? await ReadNodeViewAsync(request.Node, request.HandleId, hinted, ct).ConfigureAwait(false);
        await SettleInterruptedClaimsAsync(view, ct).ConfigureAwait(false);
        // A retried request (ADD killed or cut off before it answered) keeps what its handle holds and takes
        // only what is missing: the part of an ADD that was done is not done twice.
        IReadOnlyList<AssignedAddress> held = [];
        int num4 = request.Num4, num6 = request.Num6;
        if (request.ReuseExisting && handle.Handle?.Block is { Count: > 0 })
        {
            held = await HeldAddressesAsync(request.HandleId, handle.Handle, ct).ConfigureAwait(false);
            int held4 = held.Count(a => !a.Block.IsIPv6), held6 = held.Count(a => a.Block.IsIPv6);
            if (held4 == num4 && held6 == num6)
            {
                return held;
            }

            if (held4 <= num4 && held6 <= num6)
            {
                (num4, num6) = (num4 - held4, num6 - held6);
            }
            else
            {
                held = [];
            }
        }

        // Validate the pool choice of both families before anything is written.
        var pools4 = num4 > 0 ? SelectPools(view, false, request.Ipv4Pools) : [];
        var pools6 = num6 > 0 ? SelectPools(view, true, request.Ipv6Pools) : [];
        var assigned = new List<AssignedAddress>(request.Num4 + request.Num6);
        assigned.AddRange(held);
        try
        {
            if (num4 > 0)
            {
                await AssignFamilyAsync(view, handle, pools4, num4, attrs, assigned, ct).ConfigureAwait(false);
            }

            if (num6 > 0)
            {
                await AssignFamilyAsync(view, handle, pools6, num6, attrs, assigned, ct).ConfigureAwait(false);
            }
        }
        catch (Exception) when (assigned.Count > held.Count)
        {
            // Give back what this call took, guarded by the sequence numbers it recorded.
            using var cts = new CancellationTokenSource(options.Timeout);
            try
            {
                await ReleaseCoreAsync([.. assigned.Skip(held.Count).Select(a => new ReleaseRequest(a.Address, a.SequenceNumber))], cts.Token).ConfigureAwait(false);
            }
            catch (IpamException)
            {
                // The handle still records them: a DEL by handle or 'ipam check' finds them.
            }

            throw;
        }

        if (options.KeepNodeView)
        {
            keptView = view;
        }

        // IPv4 first, as a request that found nothing held returns them.
        return held.Count == 0 ? assigned : [.. assigned.OrderBy(a => a.Block.IsIPv6)];
    }

    /// <summary>The common case from what the last assignment knew: every address from the node's hinted blocks,
    /// which hold enough free ones. One transaction writes them if the config, pools, node, affinities, blocks
    /// are still as known and the handle does not exist yet; if anything differs, the same round trip reads the
    /// node's view afresh, and that is returned instead. (Null, null): the kept view cannot serve the request.</summary>
    private async Task<(IReadOnlyList<AssignedAddress>? Done, (NodeView View, HandleState Handle)? Fresh)> AssignFromKeptViewAsync(
        NodeView view, AutoAssignRequest request, IpNet?[] hinted, Dictionary<string, string> attrs, CancellationToken ct)
    {
        // etcd caps a transaction's compares and ops (128 each by default).
        if (view.Pools.Count > 64)
        {
            return (null, null);
        }

        var handle = new HandleState(request.HandleId, null, 0);
        var compares = new List<KvCompare> { new(Keys.Config, view.ConfigRev), new(Keys.Node(view.Node), view.NodeRev), new(handle.Key, 0) };
        compares.AddRange(view.Pools.Select(p => new KvCompare(Keys.Pool(p.Name), p.ModRevision)));
        var ops = new List<KvOp>(3);
        var plan = new List<(BlockState Block, List<int> Ordinals)>(2);
        foreach (var (v6, count, requested) in new[] { (false, request.Num4, request.Ipv4Pools), (true, request.Num6, request.Ipv6Pools) })
        {
            if (count == 0)
            {
                continue;
            }

            List<IpPool> pools;
            try
            {
                pools = SelectPools(view, v6, requested);
            }
            catch (IpamException)
            {
                return (null, null); // the kept view may be behind: the full path decides
            }

            if (hinted[v6 ? 1 : 0] is not { } cidr || !view.Blocks.TryGetValue(cidr, out var bs) || bs.Block is not { } block
                || block.Unallocated.Count < count || block.Affinity != Keys.AffinityOf(view.Node) || !pools.Any(p => p.Cidr.Contains(cidr))
                || !view.Affinities.TryGetValue(cidr, out var aff) || aff.Affinity.State != BlockAffinity.Confirmed)
            {
                return (null, null);
            }

            compares.Add(new KvCompare(Keys.Affinity(view.Node, cidr), aff.Rev));
            compares.Add(new KvCompare(Keys.Block(cidr), bs.Rev));
            plan.Add((bs, BlockLogic.Allocate(block, count, request.HandleId, attrs)));
            handle.Add(cidr, count);
            ops.Add(KvOp.Put(Keys.Block(cidr), RecordJson.Encode(block)));
        }

        ops.Add(handle.Op());
        var result = await store.TxnAsync(compares, ops, ViewReads(view.Node, request.HandleId, hinted), ct).ConfigureAwait(false);
        if (!result.Succeeded)
        {
            return (null, ViewFrom(view.Node, request.HandleId, hinted, result.Reads!));
        }

        var assigned = new List<AssignedAddress>(request.Num4 + request.Num6);
        foreach (var (bs, ordinals) in plan)
        {
            bs.Rev = result.Revision;
            assigned.AddRange(ordinals.Select(o => new AssignedAddress(bs.Cidr.AddressAt((UInt128)o), bs.Cidr, bs.Block!.SequenceNumber)));
        }

        return (assigned, null);
    }

    private async Task<(NodeView View, HandleState Handle)> ReadNodeViewAsync(string node, string handleId, IpNet?[] hintBlocks, CancellationToken ct) =>
        ViewFrom(node, handleId, hintBlocks, await store.ReadAsync(ViewReads(node, handleId, hintBlocks), ct).ConfigureAwait(false));

    /// <summary>Everything an allocation needs to know about its node, in one round trip: config, pools, the
    /// node's labels and affinities, the handle, and the hinted blocks.</summary>
    private static List<KvRead> ViewReads(string node, string handleId, IpNet?[] hintBlocks)
    {
        var reads = new List<KvRead>
        {
            KvRead.One(Keys.Config),
            KvRead.Under(Keys.PoolPrefix),
            KvRead.One(Keys.Node(node)),
            KvRead.Under(Keys.HostAffinityPrefix(node)),
            KvRead.One(Keys.Handle(handleId)),
        };
        reads.AddRange(hintBlocks.OfType<IpNet>().Select(h => KvRead.One(Keys.Block(h))));
        return reads;
    }

    private static (NodeView View, HandleState Handle) ViewFrom(string node, string handleId, IpNet?[] hintBlocks, IReadOnlyList<IReadOnlyList<KvEntry>> r)
    {
        var hinted = hintBlocks.OfType<IpNet>().ToList();
        var affinities = new Dictionary<IpNet, (BlockAffinity, long)>();
        foreach (var e in r[3])
        {
            if (Keys.TryParseAffinityKey(e.Key, out _, out var cidr))
            {
                affinities[cidr] = (RecordJson.DecodeAffinity(e.Value, e.Key), e.ModRevision);
            }
        }

        var view = new NodeView
        {
            Node = node,
            Config = ConfigFrom(r[0]),
            Pools = PoolsFrom(r[1]),
            Labels = LabelsFrom(r[2]),
            ConfigRev = r[0].FirstOrDefault()?.ModRevision ?? 0,
            NodeRev = r[2].FirstOrDefault()?.ModRevision ?? 0,
            Affinities = affinities,
        };
        for (int i = 0; i < hinted.Count; i++)
        {
            view.Blocks[hinted[i]] = BlockState.From(hinted[i], r[5 + i].FirstOrDefault());
        }

        var handle = HandleState.From(handleId, r[4].FirstOrDefault());
        return (view, handle);
    }

    /// <summary>The pools a family may allocate from on this node, in the order to try them.</summary>
    private static List<IpPool> SelectPools(NodeView view, bool v6, IReadOnlyList<string>? requested)
    {
        string family = v6 ? "IPv6" : "IPv4";
        if (requested is { Count: > 0 })
        {
            var chosen = new List<IpPool>(requested.Count);
            foreach (var want in requested)
            {
                var pool = view.Pools.FirstOrDefault(p => p.Name == want || p.Cidr.ToString() == want)
                    ?? throw new IpamException(IpamErrorKind.InvalidArgument,
                        $"unknown {family} pool '{want}' (pools: {(view.Pools.Count == 0 ? "none" : string.Join(", ", view.Pools))})");
                if (pool.IsIPv6 != v6)
                {
                    throw new IpamException(IpamErrorKind.InvalidArgument, $"pool {pool} is not an {family} pool");
                }

                if (pool.Disabled)
                {
                    throw new IpamException(IpamErrorKind.InvalidArgument, $"pool {pool} is disabled");
                }

                if (!pool.Selector.Matches(view.Labels))
                {
                    throw new IpamException(IpamErrorKind.InvalidArgument, $"pool {pool} does not select node {view.Node} (nodeSelector {pool.Selector})");
                }

                chosen.Add(pool);
            }

            return chosen;
        }

        var pools = view.Pools.Where(p => p.IsIPv6 == v6 && !p.Disabled && p.Selector.Matches(view.Labels)).ToList();
        if (pools.Count == 0)
        {
            throw new IpamException(IpamErrorKind.PoolExhausted, $"no enabled {family} pool selects node {view.Node}");
        }

        return pools;
    }

    private async Task AssignFamilyAsync(NodeView view, HandleState handle, List<IpPool> pools, int count, Dictionary<string, string> attrs, List<AssignedAddress> assigned, CancellationToken ct)
    {
        bool v6 = pools[0].IsIPv6;
        int need = count;

        // 1. This node's own blocks: the hinted one first (already read), then the others in one read.
        var affine = view.Affinities.Keys
            .Where(c => c.IsIPv6 == v6 && pools.Any(p => p.Cidr.Contains(c)))
            .OrderByDescending(view.Blocks.ContainsKey)
            .ThenBy(c => c)
            .ToList();
        for (int i = 0; i < affine.Count && need > 0; i++)
        {
            var cidr = affine[i];
            if (!view.Blocks.ContainsKey(cidr))
            {
                await LoadBlocksAsync(view, affine.Skip(i).Where(c => !view.Blocks.ContainsKey(c)), ct).ConfigureAwait(false);
            }

            var bs = view.Blocks[cidr];
            if (!IsOwned(view, bs))
            {
                continue;
            }

            need -= await AllocateFromAsync(view, bs, handle, need, attrs, ownOnly: true, assigned, ct).ConfigureAwait(false);
        }

        // 2. Claim new blocks while the node may hold more.
        bool limitHit = false;
        while (need > 0 && view.Config.AutoAllocateBlocks)
        {
            int held = view.Affinities.Keys.Count(c => c.IsIPv6 == v6);
            if (held >= view.Config.EffectiveMaxBlocksPerHost)
            {
                limitHit = true;
                break;
            }

            var bs = await ClaimBlockAsync(view, pools, ct).ConfigureAwait(false);
            if (bs is null)
            {
                break;
            }

            need -= await AllocateFromAsync(view, bs, handle, need, attrs, ownOnly: true, assigned, ct).ConfigureAwait(false);
        }

        // 3. Borrow from other nodes' blocks, unless affinity is strict.
        if (need > 0 && !view.Config.StrictAffinity)
        {
            foreach (var bs in await ReadAllBlocksAsync(v6, ct).ConfigureAwait(false))
            {
                if (need == 0)
                {
                    break;
                }

                if (bs.Block is { } b && b.Unallocated.Count > 0 && pools.Any(p => p.Cidr.Contains(bs.Cidr)))
                {
                    need -= await AllocateFromAsync(view, bs, handle, need, attrs, ownOnly: false, assigned, ct).ConfigureAwait(false);
                }
            }
        }

        if (need > 0)
        {
            string family = v6 ? "IPv6" : "IPv4";
            if (limitHit)
            {
                throw new IpamException(IpamErrorKind.BlockLimitReached,
                    $"node {view.Node} already holds the maximum of {view.Config.EffectiveMaxBlocksPerHost} {family} blocks (maxBlocksPerHost), all full" +
                    (view.Config.StrictAffinity ? ", and strict affinity forbids borrowing" : ", and no other block has a free address"));
            }

            throw new IpamException(IpamErrorKind.PoolExhausted,
                $"no free {family} address for node {view.Node} in pools {string.Join(", ", pools)}" +
                (view.Config.AutoAllocateBlocks ? string.Empty : " (auto_allocate_blocks is off)") +
                (view.Config.StrictAffinity ? " (strict affinity: no borrowing)" : string.Empty));
        }
    }

    private async Task LoadBlocksAsync(NodeView view, IEnumerable<IpNet> cidrs, CancellationToken ct)
    {
        var list = cidrs.ToList();
        var r = await store.ReadAsync([.. list.Select(c => KvRead.One(Keys.Block(c)))], ct).ConfigureAwait(false);
        for (int i = 0; i < list.Count; i++)
        {
            view.Blocks[list[i]] = BlockState.From(list[i], r[i].FirstOrDefault());
        }
    }

    /// <summary>True when the block exists and is this node's (interrupted claims are settled before).</summary>
    private static bool IsOwned(NodeView view, BlockState bs) =>
        bs.Block is not null && bs.Block.Affinity == Keys.AffinityOf(view.Node)
        && view.Affinities.TryGetValue(bs.Cidr, out var aff) && aff.Affinity.State != BlockAffinity.PendingDeletion;

    /// <summary>
    /// Settles the claims of this node that a claimer left <c>pending</c> (killed between the two phases, or
    /// cut off from etcd): the node's next allocation finishes or withdraws them before anything else, also
    /// when another block serves it, so no claim dangles, holds a place under maxBlocksPerHost, or keeps a
    /// created block from being confirmed (bgpd advertises confirmed blocks only). A block that is the node's
    /// is confirmed; one not yet created is created and confirmed (the claim resumes, so a claimer of this
    /// node still under way meets its own block and not a withdrawn claim); one of another node, or outside
    /// every enabled pool, has the claim withdrawn. No round trip when nothing is pending.
    /// </summary>
    private async Task SettleInterruptedClaimsAsync(NodeView view, CancellationToken ct)
    {
        var pending = view.Affinities.Where(a => a.Value.Affinity.State == BlockAffinity.Pending).Select(a => a.Key).Order().ToList();
        if (pending.Count == 0)
        {
            return;
        }

        if (pending.Where(c => !view.Blocks.ContainsKey(c)).ToList() is { Count: > 0 } unread)
        {
            await LoadBlocksAsync(view, unread, ct).ConfigureAwait(false);
        }

        foreach (var cidr in pending)
        {
            var block = view.Blocks[cidr].Block;
            if (block is null && view.Pools.Any(p => !p.Disabled && p.Cidr.Contains(cidr)))
            {
                _ = await ClaimSpecificAsync(view, cidr, ct).ConfigureAwait(false);
            }
            else if (block?.Affinity == Keys.AffinityOf(view.Node))
            {
                await ConfirmAsync(view, cidr, view.Affinities[cidr].Rev, ct).ConfigureAwait(false);
            }
            else
            {
                await WithdrawClaimAsync(view, cidr, view.Affinities[cidr].Rev, ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Sets the node's affinity for a block it holds to <c>confirmed</c>. A claim rewritten meanwhile
    /// (another claimer of this node resumed it) is confirmed at its new revision; one removed or marked for
    /// deletion meanwhile is left as it is (the node is releasing the block). True when it is confirmed.</summary>
    private async Task<bool> ConfirmAsync(NodeView view, IpNet cidr, long rev, CancellationToken ct)
    {
        var key = Keys.Affinity(view.Node, cidr);
        var confirmed = new BlockAffinity { State = BlockAffinity.Confirmed };
        for (int attempt = 0; attempt < options.MaxAttempts; attempt++)
        {
            var r = await store.TxnAsync([new(key, rev)], [KvOp.Put(key, RecordJson.Encode(confirmed))], [KvRead.One(key)], ct).ConfigureAwait(false);
            if (r.Succeeded)
            {
                view.Affinities[cidr] = (confirmed, r.Revision);
                return true;
            }

            if (r.Reads![0].FirstOrDefault() is not { } now)
            {
                view.Affinities.Remove(cidr);
                return false;
            }

            var state = RecordJson.DecodeAffinity(now.Value, now.Key);
            view.Affinities[cidr] = (state, now.ModRevision);
            if (state.State != BlockAffinity.Pending)
            {
                return state.State == BlockAffinity.Confirmed;
            }

            rev = now.ModRevision;
        }

        throw Conflict($"confirming block {cidr}");
    }

    /// <summary>Withdraws the node's pending claim of a block it does not hold.</summary>
    private async Task WithdrawClaimAsync(NodeView view, IpNet cidr, long rev, CancellationToken ct)
    {
        var key = Keys.Affinity(view.Node, cidr);
        if ((await store.TxnAsync([new(key, rev)], [KvOp.Delete(key)], ct).ConfigureAwait(false)).Succeeded)
        {
            view.Affinities.Remove(cidr);
            view.Blocks.Remove(cidr);
        }
    }

    /// <summary>Allocates up to <paramref name="want"/> addresses from one block, block and handle written
    /// in one transaction; a lost compare re-reads both and retries with jitter.</summary>
    private async Task<int> AllocateFromAsync(NodeView view, BlockState bs, HandleState handle, int want, Dictionary<string, string> attrs, bool ownOnly, List<AssignedAddress> assigned, CancellationToken ct)
    {
        var ordinals = await EditAndCommitAsync(bs, handle, block =>
        {
            if (block is null || block.Unallocated.Count == 0 || (ownOnly && block.Affinity != Keys.AffinityOf(view.Node)))
            {
                return null;
            }

            var taken = BlockLogic.Allocate(block, want, handle.Id, attrs);
            handle.Add(bs.Cidr, taken.Count);
            return taken;
        }, $"allocating from block {bs.Cidr}", ct).ConfigureAwait(false);
        if (ordinals is null)
        {
            return 0;
        }

        AfterStep("allocated");

        foreach (int o in ordinals)
        {
            assigned.Add(new AssignedAddress(bs.Cidr.AddressAt((UInt128)o), bs.Cidr, bs.Block!.SequenceNumber));
        }

        if (ownOnly)
        {
            SetHint(view.Node, bs.Cidr);
        }

        return ordinals.Count;
    }

    /// <summary>Claims a free block for the node: one keys-only range read finds it, then the two-phase
    /// claim (affinity pending → block created → affinity confirmed). Falls back to reclaiming an
    /// empty block whose claim has aged. Null when no block can be had.</summary>
    private async Task<BlockState?> ClaimBlockAsync(NodeView view, List<IpPool> pools, CancellationToken ct)
    {
        bool v6 = pools[0].IsIPv6;
        for (int attempt = 0; attempt < options.MaxAttempts; attempt++)
        {
            IpNet? free = null;
            foreach (var pool in pools)
            {
                foreach (var region in BlockRegion.Walk(pool, Fnv1a(view.Node)))
                {
                    // One keys-only range read per region; the first region nearly always has room.
                    var existing = await ListBlockCidrsAsync(v6, ct, region.KeyPrefix).ConfigureAwait(false);
                    free = region.FindFree(pool, existing);
                    if (free is not null)
                    {
                        break;
                    }
                }

                if (free is not null)
                {
                    break;
                }
            }

            if (free is null)
            {
                return await ReclaimBlockAsync(view, pools, ct).ConfigureAwait(false);
            }

            if (await ClaimSpecificAsync(view, free.Value, ct).ConfigureAwait(false) is { } claimed)
            {
                return claimed;
            }

            await BackoffAsync(attempt, ct).ConfigureAwait(false);
        }

        throw Conflict("claiming a block");
    }

    /// <summary>Two-phase claim of one block; null when another node created it first.</summary>
    private async Task<BlockState?> ClaimSpecificAsync(NodeView view, IpNet cidr, CancellationToken ct)
    {
        var affKey = Keys.Affinity(view.Node, cidr);
        long affRev = view.Affinities.TryGetValue(cidr, out var a) ? a.Rev : 0;
        var pending = RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Pending });
        var r = await store.TxnAsync([new(affKey, affRev)], [KvOp.Put(affKey, pending)], ct).ConfigureAwait(false);
        if (!r.Succeeded)
        {
            var e = await store.GetAsync(affKey, ct).ConfigureAwait(false);
            r = await store.TxnAsync([new(affKey, e?.ModRevision ?? 0)], [KvOp.Put(affKey, pending)], ct).ConfigureAwait(false);
            if (!r.Succeeded)
            {
                return null;
            }
        }

        affRev = r.Revision;
        view.Affinities[cidr] = (new BlockAffinity { State = BlockAffinity.Pending }, affRev);

        AfterStep("affinity-pending");

        var block = BlockLogic.Create(cidr, view.Node, Now);
        var created = await store.TxnAsync([new(Keys.Block(cidr), 0)], [KvOp.Put(Keys.Block(cidr), RecordJson.Encode(block))], [KvRead.One(Keys.Block(cidr))], ct).ConfigureAwait(false);
        BlockState bs;
        if (created.Succeeded)
        {
            bs = new BlockState(cidr, block, created.Revision);
        }
        else
        {
            bs = BlockState.From(cidr, created.Reads![0].FirstOrDefault());
            if (bs.Block?.Affinity != Keys.AffinityOf(view.Node))
            {
                // Another node got there first: withdraw our pending claim.
                await WithdrawClaimAsync(view, cidr, affRev, ct).ConfigureAwait(false);
                return null;
            }

            // Another claimer of this node (resuming the same claim) created it: it is ours all the same.
        }

        view.Blocks[cidr] = bs;
        AfterStep("block-created");
        await ConfirmAsync(view, cidr, affRev, ct).ConfigureAwait(false);
        AfterStep("affinity-confirmed");
        return bs;
    }

    /// <summary>Takes over an empty block that belongs to no node, or to another node whose claim is at
    /// least <see cref="IpamClientOptions.ReclaimAge"/> old.</summary>
    private async Task<BlockState?> ReclaimBlockAsync(NodeView view, List<IpPool> pools, CancellationToken ct)
    {
        bool v6 = pools[0].IsIPv6;
        var now = Now;
        foreach (var bs in await ReadAllBlocksAsync(v6, ct).ConfigureAwait(false))
        {
            var b = bs.Block!;
            var owner = Keys.NodeOfAffinity(b.Affinity);
            if (owner == view.Node || !pools.Any(p => p.Cidr.Contains(bs.Cidr)) || !BlockLogic.IsEmpty(b))
            {
                continue;
            }

            if (owner is not null && BlockLogic.ParseClaimTime(b.AffinityClaimTime) is { } claimed && now - claimed < options.ReclaimAge)
            {
                continue;
            }

            var ourKey = Keys.Affinity(view.Node, bs.Cidr);
            b.Affinity = Keys.AffinityOf(view.Node);
            b.AffinityClaimTime = BlockLogic.FormatClaimTime(now);
            b.SequenceNumber++;
            var extra = new List<KvOp> { KvOp.Put(ourKey, RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Pending })) };
            if (owner is not null)
            {
                extra.Add(KvOp.Delete(Keys.Affinity(owner, bs.Cidr)));
            }

            if (!await CommitAsync(bs, [], extra, [new(ourKey, 0)], ct).ConfigureAwait(false))
            {
                continue;
            }

            view.Affinities[bs.Cidr] = (new BlockAffinity { State = BlockAffinity.Pending }, bs.Rev);
            view.Blocks[bs.Cidr] = bs;
            await ConfirmAsync(view, bs.Cidr, bs.Rev, ct).ConfigureAwait(false);
            return bs;
        }

        return null;
    }

    internal static IpNet? FirstEndingAtOrAfter(IReadOnlyList<IpNet> sorted, UInt128 value)
    {
        int lo = 0, hi = sorted.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            var m = sorted[mid];
            if (m.Value + (m.Size - 1) < value)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo < sorted.Count ? sorted[lo] : null;
    }

    internal static ulong Fnv1a(string text)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            h = (h ^ b) * 1099511628211UL;
        }

        return h;
    }

    /// <summary>Assigns one given address to a handle. Claims its block for the node when nobody holds it.</summary>
    public Task<AssignedAddress> AssignIpAsync(IPAddress address, string handleId, string node, IReadOnlyDictionary<string, string>? attributes = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(address);
        ValidateHandle(handleId);
        ValidateNode(node);
        return RunAsync($"assigning {address}", t => AssignIpCoreAsync(address, handleId, node, attributes, t), ct);
    }

    private async Task<AssignedAddress> AssignIpCoreAsync(IPAddress address, string handleId, string node, IReadOnlyDictionary<string, string>? attributes, CancellationToken ct)
    {
        var (view, handle) = await ReadNodeViewAsync(node, handleId, [], ct).ConfigureAwait(false);
        var pool = view.Pools.FirstOrDefault(p => p.Cidr.Contains(address))
            ?? throw new IpamException(IpamErrorKind.InvalidArgument, $"{address} is in no IP pool");
        var cidr = IpNet.Enclosing(address, pool.BlockSize);
        await LoadBlocksAsync(view, [cidr], ct).ConfigureAwait(false);
        var bs = view.Blocks[cidr];
        if (bs.Block is null)
        {
            bs = await ClaimSpecificAsync(view, cidr, ct).ConfigureAwait(false) ?? view.Blocks.GetValueOrDefault(cidr) ?? bs;
            if (bs.Block is null)
            {
                await LoadBlocksAsync(view, [cidr], ct).ConfigureAwait(false);
                bs = view.Blocks[cidr];
            }
        }

        var attrs = new Dictionary<string, string>(attributes ?? new Dictionary<string, string>(), StringComparer.Ordinal)
        {
            ["node"] = node,
            ["timestamp"] = BlockLogic.FormatGoTime(Now),
        };
        int ordinal = (int)cidr.OffsetOf(address);
        var written = await EditAndCommitAsync(bs, handle, block =>
        {
            if (block is null)
            {
                throw new IpamException(IpamErrorKind.Conflict, $"block {cidr} vanished while assigning {address}; try again");
            }

            if (!BlockLogic.AllocateOrdinal(block, ordinal, handleId, attrs))
            {
                var holder = BlockLogic.AttributeOf(block, ordinal)?.HandleId;
                throw new IpamException(IpamErrorKind.AddressInUse, $"{address} is already allocated{(holder is null ? string.Empty : $" to handle {holder}")}");
            }

            handle.Add(cidr, 1);
            return block;
        }, $"assigning {address}", ct).ConfigureAwait(false);
        return new AssignedAddress(address, cidr, written!.SequenceNumber);
    }
}
