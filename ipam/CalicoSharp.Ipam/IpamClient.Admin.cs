using System.Globalization;
using System.Net;
using System.Text.Json.Serialization;

namespace CalicoSharp.Ipam;

public sealed record BlockUsage(IpNet Cidr, string? Affinity, int Total, int InUse)
{
    public int Free => Total - InUse;
}

public sealed record PoolUsage(string Name, IpNet Cidr, UInt128 Total, long InUse, bool Disabled, IReadOnlyList<BlockUsage> Blocks)
{
    public UInt128 Free => Total - (UInt128)InUse;
}

/// <summary>An address allocated to a node from a block that belongs to another node (or to none).</summary>
public sealed record BorrowedAddress(IPAddress Address, IpNet Block, string? BlockNode, string? BorrowingNode, string? HandleId);

/// <summary>The output of <c>ipam check</c>, and the input of <c>ipam release --from-report</c>.</summary>
public sealed class CheckReport
{
    [JsonPropertyName("checkedAt")]
    public string? CheckedAt { get; set; }

    [JsonPropertyName("blocks")]
    public int Blocks { get; set; }

    [JsonPropertyName("handles")]
    public int Handles { get; set; }

    [JsonPropertyName("affinities")]
    public int Affinities { get; set; }

    [JsonPropertyName("allocations")]
    public int Allocations { get; set; }

    [JsonPropertyName("problems")]
    public List<CheckProblem> Problems { get; set; } = [];
}

public sealed class CheckProblem
{
    public const string LeakedAllocation = "leaked-allocation";
    public const string HandleWithoutAddress = "handle-without-address";
    public const string AddressWithoutHandle = "address-without-handle";
    public const string BrokenBlock = "broken-block";
    public const string AffinityWithoutBlock = "affinity-without-block";
    public const string BlockWithoutAffinity = "block-without-affinity";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = string.Empty;

    [JsonPropertyName("message")]
    public string Message { get; set; } = string.Empty;

    [JsonPropertyName("block")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Block { get; set; }

    [JsonPropertyName("ip")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Ip { get; set; }

    [JsonPropertyName("sequenceNumber")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public ulong? SequenceNumber { get; set; }

    [JsonPropertyName("handle")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Handle { get; set; }

    [JsonPropertyName("node")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Node { get; set; }
}

/// <summary>What a repair did, per problem kind.</summary>
public sealed record RepairResult(int Repaired, int Skipped, IReadOnlyList<string> Actions);

public sealed partial class IpamClient
{
    /// <summary>Use of every pool and its blocks.</summary>
    public Task<IReadOnlyList<PoolUsage>> GetUsageAsync(CancellationToken ct = default) =>
        RunAsync("reading IPAM usage", async t =>
        {
            var r = await store.ReadAsync([KvRead.Under(Keys.PoolPrefix), KvRead.Under(Keys.BlockPrefix(false)), KvRead.Under(Keys.BlockPrefix(true))], t).ConfigureAwait(false);
            var pools = PoolsFrom(r[0]);
            var blocks = r[1].Concat(r[2]).Select(e => RecordJson.DecodeBlock(e.Value, e.Key)).ToList();
            var result = new List<PoolUsage>(pools.Count);
            foreach (var pool in pools)
            {
                var usages = blocks
                    .Select(b => (Block: b, Cidr: BlockLogic.CidrOf(b)))
                    .Where(x => pool.Cidr.Contains(x.Cidr))
                    .Select(x => new BlockUsage(x.Cidr, x.Block.Affinity, x.Block.Allocations.Count, BlockLogic.InUse(x.Block)))
                    .OrderBy(b => b.Cidr)
                    .ToList();
                result.Add(new PoolUsage(pool.Name, pool.Cidr, pool.Cidr.Size, usages.Sum(b => (long)b.InUse), pool.Disabled, usages));
            }

            return (IReadOnlyList<PoolUsage>)result;
        }, ct);

    /// <summary>Addresses whose allocating node is not their block's node.</summary>
    public Task<IReadOnlyList<BorrowedAddress>> GetBorrowedAsync(CancellationToken ct = default) =>
        RunAsync("reading borrowed addresses", async t =>
        {
            var r = await store.ReadAsync([KvRead.Under(Keys.BlockPrefix(false)), KvRead.Under(Keys.BlockPrefix(true))], t).ConfigureAwait(false);
            var list = new List<BorrowedAddress>();
            foreach (var e in r[0].Concat(r[1]))
            {
                var b = RecordJson.DecodeBlock(e.Value, e.Key);
                var owner = Keys.NodeOfAffinity(b.Affinity);
                for (int o = 0; o < b.Allocations.Count; o++)
                {
                    if (BlockLogic.AttributeOf(b, o) is { } a && (a.Secondary?.GetValueOrDefault("node") is var n) && n != owner)
                    {
                        list.Add(new BorrowedAddress(BlockLogic.AddressOf(b, o), BlockLogic.CidrOf(b), owner, n, a.HandleId));
                    }
                }
            }

            return (IReadOnlyList<BorrowedAddress>)list;
        }, ct);

    /// <summary>Whether the node holds any block affinity (one keys-only range read of its affinity keys).</summary>
    public Task<bool> NodeHasBlocksAsync(string node, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(node);
        return RunAsync($"reading node {node}'s affinities", async t =>
            (await store.ListAsync(Keys.HostAffinityPrefix(node), keysOnly: true, t).ConfigureAwait(false)).Count > 0, ct);
    }

    /// <summary>Allocated addresses whose attributes include every given key and value (e.g. pod and namespace),
    /// over every block of both families.</summary>
    public Task<IReadOnlyList<IpLookup>> FindAllocationsAsync(IReadOnlyDictionary<string, string> attributes, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(attributes);
        return RunAsync("searching allocations", async t =>
        {
            var r = await store.ReadAsync([KvRead.Under(Keys.PoolPrefix), KvRead.Under(Keys.BlockPrefix(false)), KvRead.Under(Keys.BlockPrefix(true))], t).ConfigureAwait(false);
            var pools = PoolsFrom(r[0]);
            var list = new List<IpLookup>();
            foreach (var e in r[1].Concat(r[2]))
            {
                var b = RecordJson.DecodeBlock(e.Value, e.Key);
                for (int o = 0; o < b.Allocations.Count; o++)
                {
                    if (BlockLogic.AttributeOf(b, o) is { } a && a.Secondary is { } sec
                        && attributes.All(kv => sec.TryGetValue(kv.Key, out var v) && v == kv.Value))
                    {
                        var address = BlockLogic.AddressOf(b, o);
                        list.Add(new IpLookup(address, BlockLogic.CidrOf(b), Keys.NodeOfAffinity(b.Affinity), true, a.HandleId, sec,
                            BlockLogic.SequenceOf(b, o), pools.FirstOrDefault(p => p.Cidr.Contains(address))?.Name));
                    }
                }
            }

            return (IReadOnlyList<IpLookup>)list;
        }, ct);
    }

    /// <summary>Checks the whole IPAM state, read at one revision, for every defect it knows.
    /// With <paramref name="liveHandles"/>, allocations whose handle is not in it are leaks.</summary>
    public Task<CheckReport> CheckAsync(IReadOnlySet<string>? liveHandles = null, CancellationToken ct = default) =>
        RunAsync("checking IPAM", async t =>
        {
            var all = await store.ListAsync(Keys.IpamRoot, keysOnly: false, t).ConfigureAwait(false);
            return Check(all, liveHandles, Now);
        }, ct);

    internal static CheckReport Check(IReadOnlyList<KvEntry> all, IReadOnlySet<string>? liveHandles, DateTimeOffset now)
    {
        var report = new CheckReport { CheckedAt = BlockLogic.FormatClaimTime(now) };
        var blocks = new Dictionary<IpNet, AllocationBlock>();
        var handles = new Dictionary<string, IpamHandle>(StringComparer.Ordinal);
        var affinities = new HashSet<(string Node, IpNet Cidr)>();
        foreach (var e in all)
        {
            if (Keys.TryParseBlockKey(e.Key, out var cidr))
            {
                blocks[cidr] = RecordJson.DecodeBlock(e.Value, e.Key);
            }
            else if (e.Key.StartsWith(Keys.HandlePrefix, StringComparison.Ordinal))
            {
                handles[e.Key[Keys.HandlePrefix.Length..]] = RecordJson.DecodeHandle(e.Value, e.Key);
            }
            else if (Keys.TryParseAffinityKey(e.Key, out var node, out var acidr))
            {
                affinities.Add((node, acidr));
            }
        }

        report.Blocks = blocks.Count;
        report.Handles = handles.Count;
        report.Affinities = affinities.Count;

        // What the blocks say each handle holds.
        var actual = new Dictionary<string, Dictionary<string, int>>(StringComparer.Ordinal);
        foreach (var (cidr, b) in blocks.OrderBy(x => x.Key))
        {
            var broken = BlockLogic.Validate(b);
            if (broken.Count > 0)
            {
                report.Problems.Add(new CheckProblem
                {
                    Kind = CheckProblem.BrokenBlock,
                    Block = cidr.ToString(),
                    Message = $"block {cidr}: {string.Join("; ", broken.Take(5))}{(broken.Count > 5 ? $" (+{broken.Count - 5} more)" : string.Empty)}",
                });
            }

            if (b.Cidr != cidr.ToString())
            {
                continue;
            }

            for (int o = 0; o < b.Allocations.Count; o++)
            {
                if (b.Allocations[o] is null)
                {
                    continue;
                }

                report.Allocations++;
                var attr = BlockLogic.AttributeOf(b, o);
                var ip = cidr.AddressAt((UInt128)o).ToString();
                var seq = BlockLogic.SequenceOf(b, o);
                if (attr?.HandleId is not { } h)
                {
                    if (attr is not null)
                    {
                        report.Problems.Add(new CheckProblem { Kind = CheckProblem.AddressWithoutHandle, Block = cidr.ToString(), Ip = ip, SequenceNumber = seq, Message = $"{ip} is allocated with no handle" });
                    }

                    continue;
                }

                var counts = actual.TryGetValue(h, out var c) ? c : actual[h] = new Dictionary<string, int>(StringComparer.Ordinal);
                counts[cidr.ToString()] = counts.GetValueOrDefault(cidr.ToString()) + 1;
                if (liveHandles is not null && !liveHandles.Contains(h))
                {
                    report.Problems.Add(new CheckProblem
                    {
                        Kind = CheckProblem.LeakedAllocation,
                        Block = cidr.ToString(),
                        Ip = ip,
                        SequenceNumber = seq,
                        Handle = h,
                        Node = attr.Secondary?.GetValueOrDefault("node"),
                        Message = $"{ip} is held by handle {h}, which is not live (leaked; pod {attr.Secondary?.GetValueOrDefault("namespace")}/{attr.Secondary?.GetValueOrDefault("pod")})",
                    });
                }
            }
        }

        foreach (var (h, counts) in actual)
        {
            var recorded = handles.TryGetValue(h, out var handle) ? handle.Block ?? [] : null;
            foreach (var (block, n) in counts)
            {
                int have = recorded?.GetValueOrDefault(block) ?? 0;
                if (have < n)
                {
                    report.Problems.Add(new CheckProblem
                    {
                        Kind = CheckProblem.AddressWithoutHandle,
                        Block = block,
                        Handle = h,
                        Message = recorded is null
                            ? $"handle {h} holds {n} address(es) in block {block} but has no handle record"
                            : $"handle {h} holds {n} address(es) in block {block} but its record counts {have}",
                    });
                }
            }
        }

        foreach (var (h, handle) in handles)
        {
            var counts = actual.GetValueOrDefault(h);
            foreach (var (block, n) in handle.Block ?? [])
            {
                int real = counts?.GetValueOrDefault(block) ?? 0;
                if (n > real)
                {
                    report.Problems.Add(new CheckProblem
                    {
                        Kind = CheckProblem.HandleWithoutAddress,
                        Block = block,
                        Handle = h,
                        Message = $"handle {h} counts {n} address(es) in block {block}, but the block holds {real} for it",
                    });
                }
            }

            if (handle.Block is not { Count: > 0 })
            {
                report.Problems.Add(new CheckProblem { Kind = CheckProblem.HandleWithoutAddress, Handle = h, Message = $"handle {h} holds no address" });
            }
        }

        foreach (var (node, cidr) in affinities.OrderBy(a => a.Node, StringComparer.Ordinal).ThenBy(a => a.Cidr))
        {
            if (!blocks.TryGetValue(cidr, out var b) || b.Affinity != Keys.AffinityOf(node))
            {
                report.Problems.Add(new CheckProblem
                {
                    Kind = CheckProblem.AffinityWithoutBlock,
                    Block = cidr.ToString(),
                    Node = node,
                    Message = b is null
                        ? $"node {node} has an affinity for block {cidr}, which does not exist"
                        : $"node {node} has an affinity for block {cidr}, which belongs to {b.Affinity ?? "no node"}",
                });
            }
        }

        foreach (var (cidr, b) in blocks.OrderBy(x => x.Key))
        {
            if (Keys.NodeOfAffinity(b.Affinity) is { } node && !affinities.Contains((node, cidr)))
            {
                report.Problems.Add(new CheckProblem
                {
                    Kind = CheckProblem.BlockWithoutAffinity,
                    Block = cidr.ToString(),
                    Node = node,
                    Message = $"block {cidr} names node {node}, which has no affinity record for it",
                });
            }
        }

        return report;
    }

    /// <summary>Repairs what a check report found, each fix guarded by compare-and-swap against the
    /// current state; problems that no longer hold are skipped.</summary>
    public Task<RepairResult> RepairAsync(CheckReport report, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(report);
        return RunAsync("repairing IPAM", t => RepairCoreAsync(report, t), ct);
    }

    private async Task<RepairResult> RepairCoreAsync(CheckReport report, CancellationToken ct)
    {
        var actions = new List<string>();
        int repaired = 0, skipped = 0;
        void Done(bool ok, string what)
        {
            if (ok)
            {
                repaired++;
                actions.Add(what);
            }
            else
            {
                skipped++;
            }
        }

        // 1. Broken block structures first: the other fixes read the blocks.
        foreach (var p in report.Problems.Where(p => p.Kind == CheckProblem.BrokenBlock))
        {
            var cidr = ParseReportCidr(p);
            var bs = BlockState.From(cidr, await store.GetAsync(Keys.Block(cidr), ct).ConfigureAwait(false));
            bool ok = false;
            if (bs.Block is not null && BlockLogic.Validate(bs.Block).Count > 0)
            {
                bs.Block.Cidr = cidr.ToString();
                BlockLogic.Rebuild(bs.Block);
                ok = await CommitAsync(bs, [], [], [], ct).ConfigureAwait(false);
            }

            Done(ok, $"rebuilt block {cidr}");
        }

        // 2. Leaked and handle-less allocations: released, guarded by their sequence numbers.
        var toRelease = report.Problems
            .Where(p => p.Ip is not null && (p.Kind == CheckProblem.LeakedAllocation || (p.Kind == CheckProblem.AddressWithoutHandle && p.Handle is null)))
            .ToList();
        if (toRelease.Count > 0)
        {
            var freed = await ReleaseCoreAsync([.. toRelease.Select(p => new ReleaseRequest(ParseReportIp(p), p.SequenceNumber))], ct).ConfigureAwait(false);
            foreach (var p in toRelease)
            {
                Done(freed.Contains(ParseReportIp(p)), $"released {p.Ip} ({p.Kind})");
            }
        }

        // 3. Handle records that disagree with the blocks: rewritten from what the blocks hold.
        var handleIds = report.Problems
            .Where(p => p.Handle is not null && p.Kind is CheckProblem.HandleWithoutAddress or CheckProblem.AddressWithoutHandle)
            .Select(p => p.Handle!).Distinct(StringComparer.Ordinal).ToList();
        if (handleIds.Count > 0)
        {
            var blocks = (await ReadAllBlocksAsync(false, ct).ConfigureAwait(false)).Concat(await ReadAllBlocksAsync(true, ct).ConfigureAwait(false)).ToList();
            foreach (var id in handleIds)
            {
                Done(await RewriteHandleAsync(id, blocks, ct).ConfigureAwait(false), $"rewrote handle {id} from its blocks");
            }
        }

        // 4. Affinities: stale ones removed, missing ones restored.
        foreach (var p in report.Problems.Where(p => p.Kind is CheckProblem.AffinityWithoutBlock or CheckProblem.BlockWithoutAffinity))
        {
            var cidr = ParseReportCidr(p);
            var node = p.Node ?? throw new IpamException(IpamErrorKind.InvalidArgument, $"report problem '{p.Message}' names no node");
            var affKey = Keys.Affinity(node, cidr);
            var r = await store.ReadAsync([KvRead.One(Keys.Block(cidr)), KvRead.One(affKey)], ct).ConfigureAwait(false);
            var bs = BlockState.From(cidr, r[0].FirstOrDefault());
            long affRev = r[1].FirstOrDefault()?.ModRevision ?? 0;
            bool blockIsNodes = bs.Block?.Affinity == Keys.AffinityOf(node);
            bool ok = false;
            if (p.Kind == CheckProblem.AffinityWithoutBlock && affRev != 0 && !blockIsNodes)
            {
                ok = (await store.TxnAsync([new(affKey, affRev), new(Keys.Block(cidr), bs.Rev)], [KvOp.Delete(affKey)], ct).ConfigureAwait(false)).Succeeded;
                Done(ok, $"removed affinity of {node} for {cidr}");
            }
            else if (p.Kind == CheckProblem.BlockWithoutAffinity && affRev == 0 && blockIsNodes)
            {
                ok = (await store.TxnAsync([new(affKey, 0), new(Keys.Block(cidr), bs.Rev)],
                    [KvOp.Put(affKey, RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Confirmed }))], ct).ConfigureAwait(false)).Succeeded;
                Done(ok, $"restored affinity of {node} for {cidr}");
            }
            else
            {
                Done(false, string.Empty);
            }
        }

        return new RepairResult(repaired, skipped, actions);
    }

    private async Task<bool> RewriteHandleAsync(string id, List<BlockState> blocks, CancellationToken ct)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var b in blocks)
        {
            int n = BlockLogic.OrdinalsOf(b.Block!, id).Count;
            if (n > 0)
            {
                counts[b.Cidr.ToString()] = n;
            }
        }

        var key = Keys.Handle(id);
        var compares = new List<KvCompare> { new(key, (await store.GetAsync(key, ct).ConfigureAwait(false))?.ModRevision ?? 0) };
        compares.AddRange(blocks.Where(b => counts.ContainsKey(b.Cidr.ToString())).Select(b => new KvCompare(Keys.Block(b.Cidr), b.Rev)));
        var op = counts.Count > 0 ? KvOp.Put(key, RecordJson.Encode(new IpamHandle { Block = counts })) : KvOp.Delete(key);
        return (await store.TxnAsync(compares, [op], ct).ConfigureAwait(false)).Succeeded;
    }

    private static IpNet ParseReportCidr(CheckProblem p) =>
        IpNet.TryParse(p.Block, strict: true, out var c, out var err) ? c
            : throw new IpamException(IpamErrorKind.InvalidArgument, $"report problem '{p.Message}': block: {err}");

    private static IPAddress ParseReportIp(CheckProblem p) =>
        IPAddress.TryParse(p.Ip, out var ip) ? ip
            : throw new IpamException(IpamErrorKind.InvalidArgument, $"report problem '{p.Message}': '{p.Ip}' is not an IP address");
}
