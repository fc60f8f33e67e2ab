using System.Net;
using CalicoSharp.Ipam;

namespace CalicoSharp.Ipam.Tests;

/// <summary>A clock the test moves by hand.</summary>
internal sealed class ManualTime(DateTimeOffset now) : TimeProvider
{
    public DateTimeOffset Now { get; set; } = now;

    public override DateTimeOffset GetUtcNow() => Now;
}

/// <summary>Allocator decisions on the in-memory store (etcd's revision semantics, no I/O).</summary>
public sealed class AllocatorTests : IDisposable
{
    private readonly MemoryKvStore store = new();
    private readonly ManualTime time = new(new DateTimeOffset(2026, 11, 25, 10, 0, 0, TimeSpan.Zero));
    private readonly IpamClient ipam;

    public AllocatorTests() => ipam = new IpamClient(store, new IpamClientOptions { Time = time });

    public void Dispose() => ipam.Dispose();

    private Task<IReadOnlyList<AssignedAddress>> Assign(string node, string handle, int v4 = 1, int v6 = 0) =>
        ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = handle, Node = node, Num4 = v4, Num6 = v6 });

    private Task AddPool(string cidr, string name, int blockSize = 0, string? selector = null) =>
        ipam.AddPoolAsync(new PoolRequest { Cidr = cidr, Name = name, BlockSize = blockSize, NodeSelector = selector });

    [Fact]
    public async Task First_allocation_claims_a_block_two_phase_and_confirms_it()
    {
        await AddPool("10.244.0.0/16", "p4");
        var got = await Assign("node1", "h1");
        var a = Assert.Single(got);
        Assert.True(a.Block.Contains(a.Address));
        Assert.Equal(26, a.Block.PrefixLength);
        var aff = await store.GetAsync(Keys.Affinity("node1", a.Block), default);
        Assert.Equal("confirmed", RecordJson.DecodeAffinity(aff!.Value, aff.Key).State);
        var h = await store.GetAsync(Keys.Handle("h1"), default);
        Assert.Equal(1, RecordJson.DecodeHandle(h!.Value, h.Key).Block![a.Block.ToString()]);
        var block = RecordJson.DecodeBlock((await store.GetAsync(Keys.Block(a.Block), default))!.Value, "b");
        Assert.Equal("node1", block.Attributes[0].Secondary!["node"]);
        Assert.Equal(a.SequenceNumber, BlockLogic.SequenceOf(block, 0));
    }

    [Fact]
    public async Task Warm_allocation_is_one_read_and_one_transaction()
    {
        await AddPool("10.244.0.0/16", "p4");
        await Assign("node1", "h1");
        int before = store.RoundTrips;
        await Assign("node1", "h2");
        Assert.Equal(2, store.RoundTrips - before);
    }

    [Fact]
    public async Task A_kept_node_view_makes_a_warm_allocation_one_transaction()
    {
        using var kept = new IpamClient(new SharedStore(store), new IpamClientOptions { Time = time, KeepNodeView = true });
        await AddPool("10.244.0.0/16", "p4");
        await AddPool("fd00:244::/48", "p6");
        var first = await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h1", Node = "node1", Num4 = 1, Num6 = 1 });
        int before = store.RoundTrips;
        var second = await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h2", Node = "node1", Num4 = 1, Num6 = 1, Attributes = new Dictionary<string, string> { ["pod"] = "p2" } });
        Assert.Equal(1, store.RoundTrips - before);
        Assert.Equal(first.Select(a => a.Block), second.Select(a => a.Block));
        Assert.Empty(first.Select(a => a.Address).Intersect(second.Select(a => a.Address)));

        // What it wrote is what the full path writes: the handle, the attributes, the sequence numbers.
        var h = await store.GetAsync(Keys.Handle("h2"), default);
        Assert.Equal(2, RecordJson.DecodeHandle(h!.Value, h.Key).Block!.Values.Sum());
        foreach (var a in second)
        {
            Assert.Equal("h2", (await ipam.LookupAsync(a.Address))!.HandleId);
            var block = RecordJson.DecodeBlock((await store.GetAsync(Keys.Block(a.Block), default))!.Value, "b");
            Assert.Equal(a.SequenceNumber, BlockLogic.SequenceOf(block, (int)a.Block.OffsetOf(a.Address)));
            Assert.Equal("p2", (await ipam.LookupAsync(a.Address))!.Attributes!["pod"]);
        }

        before = store.RoundTrips;
        await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h3", Node = "node1", Num4 = 1 });
        Assert.Equal(1, store.RoundTrips - before);
    }

    [Fact]
    public async Task A_kept_node_view_that_is_behind_costs_no_extra_round_trip_and_is_never_trusted()
    {
        using var kept = new IpamClient(new SharedStore(store), new IpamClientOptions { Time = time, KeepNodeView = true });
        await AddPool("10.244.0.0/16", "p4");
        await AddPool("10.245.0.0/16", "q4");
        var a1 = Assert.Single(await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h1", Node = "node1", Num4 = 1, Ipv4Pools = ["p4"] }));

        // Another process releases from the same block: the guess fails, and its answer is the fresh view.
        Assert.Equal(1, await ipam.ReleaseByHandleAsync("h1"));
        int before = store.RoundTrips;
        var a2 = Assert.Single(await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h2", Node = "node1", Num4 = 1, Ipv4Pools = ["p4"] }));
        Assert.Equal(2, store.RoundTrips - before);
        Assert.Equal(a1.Block, a2.Block);

        // A pool disabled meanwhile is not allocated from.
        await ipam.SetPoolDisabledAsync("p4", true);
        var err = await Assert.ThrowsAsync<IpamException>(() => kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h3", Node = "node1", Num4 = 1, Ipv4Pools = ["p4"] }));
        Assert.Contains("disabled", err.Message, StringComparison.Ordinal);
        var a3 = Assert.Single(await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h3", Node = "node1", Num4 = 1 }));
        Assert.True(IpNet.Parse("10.245.0.0/16").Contains(a3.Address));

        // A retried ADD (the handle exists) gets what it holds, not a second address.
        var again = Assert.Single(await kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h3", Node = "node1", Num4 = 1, ReuseExisting = true }));
        Assert.Equal(a3.Address, again.Address);

        // Strict affinity switched on meanwhile is honoured by the next assignment (the config is compared).
        await ipam.ConfigureAsync(strictAffinity: true, maxBlocksPerHost: 1);
        await Assert.ThrowsAsync<IpamException>(() => kept.AutoAssignAsync(new AutoAssignRequest { HandleId = "h4", Node = "node1", Num4 = 1, Ipv4Pools = ["p4"] }));
    }

    [Fact]
    public async Task Warm_allocation_uses_the_hint_file_across_clients()
    {
        var dir = Directory.CreateTempSubdirectory("calicosharp-hint-").FullName;
        try
        {
            await AddPool("10.244.0.0/16", "p4");
            using (var first = new IpamClient(store, new IpamClientOptions { HintDirectory = dir }))
            {
                await first.AutoAssignAsync(new AutoAssignRequest { HandleId = "h1", Node = "node1", Num4 = 1 });
            }

            var second = new IpamClient(store, new IpamClientOptions { HintDirectory = dir });
            int before = store.RoundTrips;
            await second.AutoAssignAsync(new AutoAssignRequest { HandleId = "h2", Node = "node1", Num4 = 1 });
            Assert.Equal(2, store.RoundTrips - before);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Nodes_get_different_blocks_and_fill_their_own_first()
    {
        await AddPool("10.244.0.0/16", "p4");
        var a = await Assign("node1", "h1", 70);
        var b = await Assign("node2", "h2", 1);
        Assert.Equal(2, a.Select(x => x.Block).Distinct().Count());
        Assert.DoesNotContain(b[0].Block, a.Select(x => x.Block));
        Assert.Equal(71, a.Concat(b).Select(x => x.Address).Distinct().Count());
    }

    [Fact]
    public async Task Ipv4_and_ipv6_together()
    {
        await AddPool("10.244.0.0/16", "p4");
        await AddPool("fd00:10:244::/56", "p6");
        var got = await Assign("node1", "h1", 1, 1);
        Assert.Equal(2, got.Count);
        Assert.Equal(122, got.Single(x => x.Block.IsIPv6).Block.PrefixLength);
    }

    [Fact]
    public async Task Exhausted_pool_names_the_pools_and_writes_nothing()
    {
        await AddPool("10.9.0.0/26", "tiny");
        await ipam.ConfigureAsync(strictAffinity: true, null);
        await Assign("node1", "h1", 64);
        long rev = store.Revision;
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node2", "h2"));
        Assert.Equal(IpamErrorKind.PoolExhausted, e.Kind);
        Assert.Contains("tiny (10.9.0.0/26)", e.Message, StringComparison.Ordinal);
        Assert.Equal(rev, store.Revision);
    }

    [Fact]
    public async Task A_request_that_cannot_be_met_in_full_gives_back_what_it_took()
    {
        await AddPool("10.9.0.0/26", "tiny");
        await ipam.ConfigureAsync(strictAffinity: true, null);
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node1", "h1", 65));
        Assert.Equal(IpamErrorKind.PoolExhausted, e.Kind);
        Assert.Null(await store.GetAsync(Keys.Handle("h1"), default));
        var usage = await ipam.GetUsageAsync();
        Assert.Equal(0, usage[0].InUse);
    }

    [Fact]
    public async Task Block_limit_has_its_own_error()
    {
        await AddPool("10.244.0.0/16", "p4");
        await ipam.ConfigureAsync(strictAffinity: true, maxBlocksPerHost: 1);
        await Assign("node1", "h1", 64);
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node1", "h2"));
        Assert.Equal(IpamErrorKind.BlockLimitReached, e.Kind);
        Assert.Contains("maxBlocksPerHost", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Borrows_from_another_nodes_block_only_without_strict_affinity()
    {
        await AddPool("10.9.0.0/26", "tiny");
        await Assign("node1", "h1");
        var got = await Assign("node2", "h2");
        Assert.Equal(IpNet.Parse("10.9.0.0/26"), got[0].Block);
        var borrowed = await ipam.GetBorrowedAsync();
        Assert.Equal("node2", Assert.Single(borrowed).BorrowingNode);
        await ipam.ConfigureAsync(strictAffinity: true, null);
        await Assert.ThrowsAsync<IpamException>(() => Assign("node3", "h3"));
    }

    [Fact]
    public async Task Reclaims_an_empty_block_only_after_a_minute()
    {
        await AddPool("10.9.0.0/26", "tiny");
        await ipam.ConfigureAsync(strictAffinity: true, null);
        await Assign("node1", "h1");
        await ipam.ReleaseByHandleAsync("h1");
        time.Now += TimeSpan.FromSeconds(59);
        await Assert.ThrowsAsync<IpamException>(() => Assign("node2", "h2"));
        time.Now += TimeSpan.FromSeconds(1);
        var got = await Assign("node2", "h2");
        Assert.Equal(IpNet.Parse("10.9.0.0/26"), got[0].Block);
        Assert.Null(await store.GetAsync(Keys.Affinity("node1", got[0].Block), default));
        Assert.NotNull(await store.GetAsync(Keys.Affinity("node2", got[0].Block), default));
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task Stale_release_does_not_free_a_reallocated_address()
    {
        await AddPool("10.9.0.0/30", "p", blockSize: 30);
        var first = (await Assign("node1", "h1"))[0];
        await ipam.ReleaseByHandleAsync("h1");
        // All four addresses go round until the first one is handed out again.
        var again = await Assign("node1", "h2", 4);
        var same = again.Single(a => a.Address.Equals(first.Address));
        Assert.NotEqual(first.SequenceNumber, same.SequenceNumber);
        var freed = await ipam.ReleaseAsync([new ReleaseRequest(first.Address, first.SequenceNumber)]);
        Assert.Empty(freed);
        Assert.True((await ipam.LookupAsync(first.Address))!.Allocated);
        freed = await ipam.ReleaseAsync([new ReleaseRequest(first.Address, same.SequenceNumber)]);
        Assert.Single(freed);
    }

    [Fact]
    public async Task A_lost_race_is_retried_and_never_duplicates()
    {
        await AddPool("10.244.0.0/16", "p4");
        var a = (await Assign("node1", "h1"))[0];
        // Another writer takes the next address between our read and our transaction.
        using var other = new IpamClient(new SharedStore(store));
        store.BeforeTxn = _ => other.AutoAssignAsync(new AutoAssignRequest { HandleId = "rival", Node = "node1", Num4 = 1 }).GetAwaiter().GetResult();
        var b = (await Assign("node1", "h2"))[0];
        var rival = await ipam.AddressesOfHandleAsync("rival");
        Assert.Equal(3, new[] { a.Address, b.Address, rival[0].Address }.Distinct().Count());
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task Release_node_deletes_empty_blocks_and_unaffines_the_rest()
    {
        await AddPool("10.244.0.0/16", "p4");
        await Assign("node1", "h1", 65);
        var addrs = await ipam.AddressesOfHandleAsync("h1");
        var second = addrs.GroupBy(a => a.Block).Single(g => g.Count() == 1).Single();
        await ipam.ReleaseAsync([new ReleaseRequest(second.Address)]);
        var r = await ipam.ReleaseNodeAsync("node1");
        Assert.Equal(new NodeReleaseResult(1, 1, 2), r);
        Assert.Empty(await store.ListAsync(Keys.HostAffinityPrefix("node1"), true, default));
        var usage = await ipam.GetUsageAsync();
        var block = Assert.Single(usage[0].Blocks);
        Assert.Null(block.Affinity);
        Assert.Equal(64, block.InUse);
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task Assigning_a_given_address_claims_its_block_and_refuses_a_taken_one()
    {
        await AddPool("10.244.0.0/16", "p4");
        var ip = IPAddress.Parse("10.244.7.9");
        var a = await ipam.AssignIpAsync(ip, "h1", "node1");
        Assert.Equal("10.244.7.0/26", a.Block.ToString());
        var e = await Assert.ThrowsAsync<IpamException>(() => ipam.AssignIpAsync(ip, "h2", "node2"));
        Assert.Equal(IpamErrorKind.AddressInUse, e.Kind);
        Assert.Contains("h1", e.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<IpamException>(() => ipam.AssignIpAsync(IPAddress.Parse("192.0.2.1"), "h3", "node1"));
    }

    [Fact]
    public async Task Pool_validation_happens_before_anything_is_written()
    {
        await AddPool("10.244.0.0/16", "p4");
        long rev = store.Revision;
        foreach (var bad in new[]
        {
            new PoolRequest { Cidr = "10.244.128.0/17" },
            new PoolRequest { Cidr = "10.1.0.0/16", BlockSize = 19 },
            new PoolRequest { Cidr = "fd00::/64", BlockSize = 26 },
            new PoolRequest { Cidr = "10.1.0.0/30", BlockSize = 26 },
            new PoolRequest { Cidr = "10.1.0.0/16", NodeSelector = "rack =" },
            new PoolRequest { Cidr = "10.1.0.0/16", Name = "Bad_Name" },
            new PoolRequest { Cidr = "10.1.0.0/16", Name = "p4" },
        })
        {
            var e = await Assert.ThrowsAsync<IpamException>(() => ipam.AddPoolAsync(bad));
            Assert.Equal(IpamErrorKind.InvalidArgument, e.Kind);
        }

        Assert.Equal(rev, store.Revision);
        var unknown = await Assert.ThrowsAsync<IpamException>(() => ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "h", Node = "n", Num4 = 1, Ipv4Pools = ["nope"] }));
        Assert.Contains("unknown IPv4 pool 'nope'", unknown.Message, StringComparison.Ordinal);
        Assert.Equal(rev, store.Revision);
    }

    [Fact]
    public async Task Node_selector_and_disabled_pools_are_honoured()
    {
        await AddPool("10.1.0.0/16", "rack1", selector: "rack == 'r1'");
        await AddPool("10.2.0.0/16", "any");
        store.Put(Keys.Node("node1"), RecordJson.Encode(new NodeResource { Metadata = new ResourceMetadata { Name = "node1", Labels = new() { ["rack"] = "r1" } } }));
        await ipam.SetPoolDisabledAsync("any", true);
        Assert.True(IpNet.Parse("10.1.0.0/16").Contains((await Assign("node1", "h1"))[0].Address));
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node2", "h2"));
        Assert.Contains("no enabled IPv4 pool selects node node2", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Pool_delete_is_refused_while_in_use()
    {
        await AddPool("10.244.0.0/16", "p4");
        await Assign("node1", "h1");
        var e = await Assert.ThrowsAsync<IpamException>(() => ipam.DeletePoolAsync("p4"));
        Assert.Equal(IpamErrorKind.InUse, e.Kind);
        await ipam.ReleaseByHandleAsync("h1");
        await ipam.DeletePoolAsync("p4");
        Assert.Empty(await ipam.ListPoolsAsync());
        Assert.Empty(await store.ListAsync(Keys.IpamRoot, true, default));
    }

    /// <summary>An ADD killed between its IPv4 and IPv6 allocations, retried: the retry keeps the IPv4 address
    /// the handle holds and takes only the IPv6 one (not a second IPv4 address, held until DEL).</summary>
    [Fact]
    public async Task A_retried_request_that_finds_part_of_it_held_takes_only_the_rest()
    {
        await AddPool("10.244.0.0/16", "p4");
        await AddPool("fd00:244::/48", "p6");
        var v4 = Assert.Single(await Assign("node1", "h1"));
        var got = await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "h1", Node = "node1", Num4 = 1, Num6 = 1, ReuseExisting = true });
        Assert.Equal(2, got.Count);
        Assert.Equal(v4.Address, got.Single(a => !a.Block.IsIPv6).Address);
        Assert.Equal(2, (await ipam.GetUsageAsync()).Sum(u => u.InUse));
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    /// <summary>What a claimer killed mid-claim leaves: the node's affinity <c>pending</c>, and the block created
    /// (for <paramref name="blockOf"/>, maybe another node) or not yet.</summary>
    private async Task InterruptedClaim(string node, IpNet cidr, string? blockOf)
    {
        var ops = new List<KvOp> { KvOp.Put(Keys.Affinity(node, cidr), RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Pending })) };
        if (blockOf is not null)
        {
            ops.Add(KvOp.Put(Keys.Block(cidr), RecordJson.Encode(BlockLogic.Create(cidr, blockOf, time.Now))));
            if (blockOf != node)
            {
                ops.Add(KvOp.Put(Keys.Affinity(blockOf, cidr), RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Confirmed })));
            }
        }

        Assert.True((await store.TxnAsync([], ops, [], default)).Succeeded);
    }

    private async Task<string?> AffinityState(string node, IpNet cidr) =>
        await store.GetAsync(Keys.Affinity(node, cidr), default) is { } e ? RecordJson.DecodeAffinity(e.Value, e.Key).State : null;

    public static TheoryData<string?> InterruptedClaims() => [null, "node1", "node2"];

    /// <summary>A claim cut off between <c>pending</c> and <c>confirmed</c> is settled by the node's next
    /// allocation, also one that another block of the node serves: finished when the block is the node's or
    /// not yet created (so bgpd advertises it and nothing dangles), withdrawn when another node created it.</summary>
    [Theory]
    [MemberData(nameof(InterruptedClaims))]
    public async Task The_next_allocation_settles_an_interrupted_claim(string? blockOf)
    {
        await AddPool("10.244.0.0/16", "p4");
        var own = Assert.Single(await Assign("node1", "h1")).Block;
        var cut = IpNet.Parse(own.ToString().StartsWith("10.244.200.", StringComparison.Ordinal) ? "10.244.201.0/26" : "10.244.200.0/26");
        await InterruptedClaim("node1", cut, blockOf);

        Assert.Equal(own, Assert.Single(await Assign("node1", "h2")).Block);

        var block = await store.GetAsync(Keys.Block(cut), default);
        if (blockOf == "node2")
        {
            Assert.Null(await AffinityState("node1", cut));
            Assert.Equal(Keys.AffinityOf("node2"), RecordJson.DecodeBlock(block!.Value, block.Key).Affinity);
        }
        else
        {
            Assert.Equal(BlockAffinity.Confirmed, await AffinityState("node1", cut));
            Assert.Equal(Keys.AffinityOf("node1"), RecordJson.DecodeBlock(block!.Value, block.Key).Affinity);
        }

        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    private static IpPool Pool(string cidr, int blockSize) =>
        IpPool.FromResource(new IpPoolResource { Metadata = new() { Name = "p" }, Spec = new() { Cidr = cidr, BlockSize = blockSize } }, 0);

    private static IpNet? FirstFree(IpPool pool, List<IpNet> existing, ulong hash) =>
        BlockRegion.Walk(pool, hash).Select(r => r.FindFree(pool, [.. existing.Where(e => e.ToString().StartsWith(r.KeyPrefix, StringComparison.Ordinal))])).FirstOrDefault(f => f is not null);

    [Fact]
    public void Free_block_search_skips_existing_blocks_and_wraps()
    {
        var pool = Pool("10.0.0.0/24", 26);
        var all = new List<IpNet> { IpNet.Parse("10.0.0.0/26"), IpNet.Parse("10.0.0.64/26"), IpNet.Parse("10.0.0.192/26") };
        for (ulong h = 0; h < 4; h++)
        {
            Assert.Equal("10.0.0.128/26", FirstFree(pool, all, h).ToString());
        }

        all.Insert(2, IpNet.Parse("10.0.0.128/25"));
        Assert.Null(FirstFree(pool, all, 1));
    }

    [Fact]
    public void Regions_are_key_prefixes_that_cover_the_pool_once()
    {
        var pool = Pool("10.0.0.0/14", 26);
        var regions = BlockRegion.Walk(pool, 77).ToList();
        Assert.Equal(4, regions.Count); // four /16s
        Assert.Equal(["10.0.", "10.1.", "10.2.", "10.3."], regions.Select(r => r.KeyPrefix).Order(StringComparer.Ordinal));
        Assert.Equal(77UL, (ulong)regions[0].Start);
        Assert.Equal(4096UL, (ulong)regions.Sum(r => (long)(r.End - r.First)));

        // A pool inside one /24 is searched with that /24's prefix.
        Assert.Equal("10.9.8.", Assert.Single(BlockRegion.Walk(Pool("10.9.8.0/24", 26), 3)).KeyPrefix);

        // IPv6: the pool's non-zero leading hextets; a zero hextet cannot be a key prefix.
        Assert.Equal("fd00:10:244:", Assert.Single(BlockRegion.Walk(Pool("fd00:10:244::/56", 122), 5)).KeyPrefix);
        Assert.Equal("fd00:", Assert.Single(BlockRegion.Walk(Pool("fd00:0:244::/48", 122), 5)).KeyPrefix);
        Assert.StartsWith("fd00:10:244:", IpNet.Parse("fd00:10:244:0:1::/122").ToKeyString(), StringComparison.Ordinal);
    }

    [Fact]
    public void A_full_region_moves_the_search_to_the_next()
    {
        var pool = Pool("10.0.0.0/15", 26);
        var first = BlockRegion.Walk(pool, 0).First();
        var full = Enumerable.Range(0, 1024).Select(i => pool.Cidr.Subnet(26, (UInt128)i)).ToList();
        Assert.Equal("10.0.", first.KeyPrefix);
        Assert.Equal("10.1.0.0/26", FirstFree(pool, full, 0).ToString());
    }
}

/// <summary>A second client on the same store that must not dispose it.</summary>
internal sealed class SharedStore(IKvStore inner) : IKvStore
{
    public Task<IReadOnlyList<IReadOnlyList<KvEntry>>> ReadAsync(IReadOnlyList<KvRead> reads, CancellationToken ct) => inner.ReadAsync(reads, ct);

    public Task<KvTxnResult> TxnAsync(IReadOnlyList<KvCompare> compares, IReadOnlyList<KvOp> ops, IReadOnlyList<KvRead> otherwise, CancellationToken ct) => inner.TxnAsync(compares, ops, otherwise, ct);

    public void Dispose()
    {
    }
}
