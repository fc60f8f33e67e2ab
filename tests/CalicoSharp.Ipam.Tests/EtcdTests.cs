using System.Diagnostics;
using System.Net;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Ipam.Tests;

/// <summary>The allocator against a real etcd (Debian's etcd-server) started for this class.</summary>
[Trait("Category", "Etcd")]
public sealed class EtcdTests : IDisposable
{
    private readonly EtcdServer etcd = EtcdServer.Start();
    private readonly ManualTime time = new(DateTimeOffset.UtcNow);
    private readonly IpamClient ipam;

    public EtcdTests() => ipam = Client();

    public void Dispose()
    {
        ipam.Dispose();
        etcd.Dispose();
    }

    private IpamClient Client(double timeoutSeconds = 5) => new(
        new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint], Timeout = TimeSpan.FromSeconds(timeoutSeconds) }),
        new IpamClientOptions { Time = time, Timeout = TimeSpan.FromSeconds(timeoutSeconds) });

    private Task<IReadOnlyList<AssignedAddress>> Assign(string node, string handle, int v4 = 1, IpamClient? client = null) =>
        (client ?? ipam).AutoAssignAsync(new AutoAssignRequest { HandleId = handle, Node = node, Num4 = v4 });

    [Fact]
    public async Task Several_endpoints_fail_over_to_the_live_member()
    {
        using var c = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [$"127.0.0.1:{EtcdServer.FreePort()}", etcd.Endpoint] }));
        await c.AddPoolAsync(new PoolRequest { Cidr = "10.250.0.0/16", Name = "p" });
        Assert.Single(await c.ListPoolsAsync());
    }

    [Fact]
    public async Task A_failed_transaction_answers_with_its_fallback_reads()
    {
        var store = ipam.Store;
        var put = await store.TxnAsync([new KvCompare("/t/a", 0)], [KvOp.Put("/t/a", [1]), KvOp.Put("/t/b", [2])], [KvRead.Under("/t/")], default);
        Assert.True(put.Succeeded);
        Assert.Null(put.Reads);

        var lost = await store.TxnAsync([new KvCompare("/t/a", 0)], [KvOp.Put("/t/a", [9])], [KvRead.Under("/t/"), KvRead.One("/t/none")], default);
        Assert.False(lost.Succeeded);
        Assert.Equal(2, lost.Reads!.Count);
        Assert.Equal(["/t/a", "/t/b"], lost.Reads[0].Select(e => e.Key));
        Assert.All(lost.Reads[0], e => Assert.Equal(put.Revision, e.ModRevision));
        Assert.Equal([1], lost.Reads[0][0].Value);
        Assert.Empty(lost.Reads[1]);
    }

    [Fact]
    public async Task A_kept_node_view_against_etcd_assigns_in_one_transaction_and_survives_changes()
    {
        using var kept = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint] }), new IpamClientOptions { Time = time, KeepNodeView = true });
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.249.0.0/16", Name = "kept" });
        var live = new Dictionary<string, IPAddress>(StringComparer.Ordinal);
        for (int i = 0; i < 10; i++)
        {
            live[$"k{i}"] = Assert.Single(await Assign("node1", $"k{i}", client: kept)).Address;
            if (i % 3 == 2)
            {
                // Another process changes the block under the kept view.
                Assert.Equal(1, await ipam.ReleaseByHandleAsync($"k{i - 1}"));
                live.Remove($"k{i - 1}");
            }
        }

        // Every live handle holds its own address, exactly as recorded, and nothing else is allocated.
        Assert.Equal(live.Count, live.Values.Distinct().Count());
        foreach (var (handle, address) in live)
        {
            Assert.Equal(handle, (await ipam.LookupAsync(address))!.HandleId);
        }

        var report = await ipam.CheckAsync(new HashSet<string>(live.Keys, StringComparer.Ordinal));
        Assert.Empty(report.Problems);
        Assert.Equal(live.Count, report.Allocations);
    }

    [Fact]
    public async Task Exhaustion_borrowing_reclaim_and_node_release()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.251.0.0/25", Name = "two-blocks" });
        var a = await Assign("node1", "a", 64);
        var b = await Assign("node2", "b", 64);
        Assert.Equal(2, a.Concat(b).Select(x => x.Block).Distinct().Count());

        // Full pool: nothing to claim, nothing to borrow.
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node3", "c"));
        Assert.Equal(IpamErrorKind.PoolExhausted, e.Kind);
        Assert.Contains("two-blocks (10.251.0.0/25)", e.Message, StringComparison.Ordinal);
        Assert.Empty(await ipam.Store.ListAsync(Keys.HostAffinityPrefix("node3"), true, default));

        // Borrowing: node3 takes a freed address from node1's block.
        await ipam.ReleaseAsync([new ReleaseRequest(a[5].Address)]);
        var c = await Assign("node3", "c");
        Assert.Equal(a[5].Address, c[0].Address);
        Assert.Equal("node3", Assert.Single(await ipam.GetBorrowedAsync()).BorrowingNode);

        // Reclaim: node2's block, once empty and claimed over a minute ago, goes to node3.
        await ipam.ReleaseByHandleAsync("b");
        await ipam.ConfigureAsync(strictAffinity: true, null);
        time.Now += TimeSpan.FromSeconds(30);
        Assert.Equal(IpamErrorKind.PoolExhausted, (await Assert.ThrowsAsync<IpamException>(() => Assign("node3", "d"))).Kind);
        time.Now += TimeSpan.FromSeconds(31);
        var d = await Assign("node3", "d");
        Assert.Equal(b[0].Block, d[0].Block);
        Assert.Empty((await ipam.CheckAsync()).Problems);

        // Node release: node1's block has addresses, so it loses its affinity but keeps them.
        var r = await ipam.ReleaseNodeAsync("node1");
        Assert.Equal(new NodeReleaseResult(0, 1, 1), r);
        var usage = await ipam.GetUsageAsync();
        Assert.Contains(usage[0].Blocks, x => x.Cidr == a[0].Block && x.Affinity is null && x.InUse == 64);
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task Storm_of_20_node_processes_never_duplicates_an_address()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.252.0.0/16", Name = "storm" });
        var dll = RepoPaths.ProjectDll("tests/CalicoSharp.IpamLoad", "CalicoSharp.IpamLoad");
        var start = DateTimeOffset.UtcNow.AddSeconds(3).ToUnixTimeMilliseconds();
        var runs = Enumerable.Range(1, 20).Select(n => ProcessRunner.RunDllAsync(dll,
            [etcd.Endpoint, $"storm-node{n}", "50", "30", n.ToString(System.Globalization.CultureInfo.InvariantCulture), start.ToString(System.Globalization.CultureInfo.InvariantCulture)],
            TimeSpan.FromMinutes(3))).ToList();
        var results = await Task.WhenAll(runs);
        var held = new List<(string Node, string Ip, string Handle)>();
        for (int n = 0; n < results.Length; n++)
        {
            Assert.True(results[n].ExitCode == 0, $"node {n + 1}: {results[n].Stderr}");
            held.AddRange(results[n].Stdout.Split('\n').Where(l => l.StartsWith("held ", StringComparison.Ordinal))
                .Select(l => l.Split(' ')).Select(p => ($"storm-node{n + 1}", p[1], p[2])));
        }

        Assert.Equal(held.Count, held.Select(h => h.Ip).Distinct().Count());
        var usage = await ipam.GetUsageAsync();
        Assert.Equal(held.Count, usage[0].InUse);
        foreach (var node in held.GroupBy(h => h.Node))
        {
            int blocks = (await ipam.Store.ListAsync(Keys.HostAffinityPrefix(node.Key), true, default)).Count;
            Assert.True(blocks <= (node.Count() + 63) / 64 + 1, $"{node.Key} holds {blocks} blocks for {node.Count()} addresses");
        }

        var report = await ipam.CheckAsync(held.Select(h => h.Handle).ToHashSet());
        Assert.Empty(report.Problems);
    }

    [Fact]
    public async Task Dead_etcd_fails_fast_and_leaves_a_consistent_store()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.253.0.0/16", Name = "p" });
        using var fast = Client(timeoutSeconds: 1);
        var done = new List<string>();
        for (int i = 0; i < 10; i++)
        {
            await Assign("node1", $"h{i}", client: fast);
            done.Add($"h{i}");
        }

        etcd.Stop();
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node1", "h-dead", client: fast));
        Assert.Equal(IpamErrorKind.DatastoreUnavailable, e.Kind);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(3), $"took {sw.Elapsed}");
        Assert.Contains("etcd", e.Message, StringComparison.Ordinal);

        etcd.Launch();
        await ipam.ReleaseByHandleAsync("h-dead"); // what a runtime's DEL would do
        Assert.Empty((await ipam.CheckAsync(done.ToHashSet())).Problems);
    }

    [Fact]
    public async Task Frozen_etcd_times_out_within_the_bound()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.254.0.0/16", Name = "p" });
        using var fast = Client(timeoutSeconds: 1);
        await Assign("node1", "h0", client: fast);
        etcd.Freeze();
        try
        {
            var sw = Stopwatch.StartNew();
            var e = await Assert.ThrowsAsync<IpamException>(() => Assign("node1", "h1", client: fast));
            Assert.Equal(IpamErrorKind.DatastoreUnavailable, e.Kind);
            Assert.Contains("did not", e.Message, StringComparison.Ordinal);
            Assert.InRange(sw.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(3));
        }
        finally
        {
            etcd.Thaw();
        }

        await ipam.ReleaseByHandleAsync("h1");
        Assert.Empty((await ipam.CheckAsync(new HashSet<string> { "h0" })).Problems);
    }
}
