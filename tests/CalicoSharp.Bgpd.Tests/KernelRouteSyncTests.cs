using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>KernelRouteSync against an in-memory route table: batching, next-hop resolution, reconcile.</summary>
public sealed class KernelRouteSyncTests
{
    private static KernelRoute Via(params string[] hops) => new(false, [.. hops.Select(IPAddress.Parse)]);

    /// <summary>A pod's host route as the CNI plugin writes it: <c>10.244.0.7 dev cali... scope link</c>, protocol boot.</summary>
    private static Route PodRoute(string address) => new()
    {
        Destination = IPAddress.Parse(address),
        PrefixLength = 32,
        OutIndex = 12,
        Scope = Rt.RT_SCOPE_LINK,
        Protocol = Rt.RTPROT_BOOT,
    };

    private static void WaitFor(FakeRouteTable table, Func<Dictionary<string, Route>, bool> condition, string what)
    {
        Assert.True(SpinWait.SpinUntil(() => { lock (table.Routes) { return condition(table.Routes); } }, 5000), $"waited for {what}");
    }

    [Fact]
    public void A_learned_route_never_replaces_nor_deletes_a_route_bgpd_did_not_install()
    {
        var table = new FakeRouteTable();
        Route pod = PodRoute("10.244.0.7");
        table.Routes["10.244.0.7/32"] = pod;
        var log = new List<string>();
        using (var sync = new KernelRouteSync(table, (_, m) => { lock (log) { log.Add(m); } }))
        {
            // A peer announces the pod's /32; an ordinary learned block comes in the same batch.
            sync.Set(Prefix.Parse("10.244.0.7/32"), Via("10.0.0.7"));
            sync.Set(Prefix.Parse("10.244.1.0/26"), Via("10.0.0.7"));
            sync.Flush();
            WaitFor(table, r => r.ContainsKey("10.244.1.0/26"), "the learned block");
            Assert.Same(pod, table.Routes["10.244.0.7/32"]);

            // The reconcile neither "repairs" the pod's route into bgpd's nor removes it.
            Assert.Equal((0, 0), sync.Reconcile());
            Assert.Same(pod, table.Routes["10.244.0.7/32"]);

            // The peer withdraws: bgpd deletes only what it installed.
            sync.Set(Prefix.Parse("10.244.0.7/32"), null);
            sync.Set(Prefix.Parse("10.244.1.0/26"), null);
            sync.Flush();
            WaitFor(table, r => !r.ContainsKey("10.244.1.0/26"), "the learned block to go");
            Assert.Same(pod, table.Routes["10.244.0.7/32"]);
        }
        lock (log)
        {
            // Said once, not at every write and reconcile.
            Assert.Single(log, m => m.Contains("10.244.0.7/32", StringComparison.Ordinal) && m.Contains("did not install", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void A_route_another_program_put_over_bgpds_is_left_alone_after_the_reconcile_sees_it()
    {
        var table = new FakeRouteTable();
        using var sync = new KernelRouteSync(table, (_, _) => { });
        sync.Set(Prefix.Parse("10.244.0.9/32"), Via("10.0.0.7"));
        sync.Flush();
        Assert.True(SpinWait.SpinUntil(() => sync.Operations == 1, 5000), "the writer wrote bgpd's route");
        Assert.Equal(KernelRouteSync.Protocol, table.Routes["10.244.0.9/32"].Protocol);

        // The CNI plugin wires a pod with that address and replaces bgpd's route by its host route.
        Route pod = PodRoute("10.244.0.9");
        lock (table.Routes)
        {
            table.Routes["10.244.0.9/32"] = pod;
        }

        // The reconcile reads the protocol and leaves the plugin's route; later changes of the learned path do too.
        Assert.Equal((0, 0), sync.Reconcile());
        sync.Set(Prefix.Parse("10.244.0.9/32"), Via("10.9.3.4"));
        sync.Set(Prefix.Parse("10.244.2.0/26"), Via("10.0.0.7"));
        sync.Flush();
        WaitFor(table, r => r.ContainsKey("10.244.2.0/26"), "the learned block");
        Assert.Same(pod, table.Routes["10.244.0.9/32"]);
        sync.Set(Prefix.Parse("10.244.0.9/32"), null);
        sync.Set(Prefix.Parse("10.244.2.0/26"), null);
        sync.Flush();
        WaitFor(table, r => !r.ContainsKey("10.244.2.0/26"), "the learned block to go");
        Assert.Same(pod, table.Routes["10.244.0.9/32"]);
    }

    [Fact]
    public void Next_hops_are_resolved_batched_and_reconciled_without_churn()
    {
        var table = new FakeRouteTable();
        var log = new List<string>();
        using (var sync = new KernelRouteSync(table, (_, m) => log.Add(m)))
        {
            sync.Set(Prefix.Parse("10.244.1.0/26"), Via("10.0.0.7"));             // on the link
            sync.Set(Prefix.Parse("10.244.2.0/26"), Via("10.9.3.4"));             // beyond it: recursive
            sync.Set(Prefix.Parse("10.244.3.0/26"), Via("10.0.0.7", "10.9.3.4")); // ECMP, both resolved
            sync.Set(Prefix.Parse("10.244.4.0/26"), Via("192.0.2.1"));            // unreachable
            sync.Set(Prefix.Parse("10.244.5.0/26"), KernelRoute.Drop);
            sync.Flush();
        }
        Assert.Equal(IPAddress.Parse("10.0.0.7"), table.Routes["10.244.1.0/26"].Gateway);
        Assert.Equal(IPAddress.Parse("10.0.0.1"), table.Routes["10.244.2.0/26"].Gateway);
        Assert.Equal(["10.0.0.7", "10.0.0.1"], table.Routes["10.244.3.0/26"].MultiPath.Select(h => h.Gateway!.ToString()));
        Assert.False(table.Routes.ContainsKey("10.244.4.0/26"));
        Assert.Contains(log, m => m.Contains("10.244.4.0/26", StringComparison.Ordinal) && m.Contains("no next hop is reachable", StringComparison.Ordinal));
        Assert.Equal(Rt.RTN_BLACKHOLE, table.Routes["10.244.5.0/26"].Type);
        Assert.Single(table.Batches); // one hand-over for all five

        // A second sync over the same table: the resolved routes match, so a reconcile changes nothing; a
        // route the desired set lacks goes.
        table.Routes["10.244.9.0/26"] = new Route { Destination = IPAddress.Parse("10.244.9.0"), PrefixLength = 26, Protocol = KernelRouteSync.Protocol, Gateway = IPAddress.Parse("10.0.0.9") };
        using (var sync = new KernelRouteSync(table, (_, _) => { }))
        {
            sync.Set(Prefix.Parse("10.244.1.0/26"), Via("10.0.0.7"));
            sync.Set(Prefix.Parse("10.244.2.0/26"), Via("10.9.3.4"));
            sync.Set(Prefix.Parse("10.244.3.0/26"), Via("10.9.3.4", "10.0.0.7"));
            sync.Set(Prefix.Parse("10.244.5.0/26"), KernelRoute.Drop);
            sync.Flush();
            Assert.True(SpinWait.SpinUntil(() => { lock (table.Routes) { return table.Batches.Count == 2; } }, 5000), "the writer thread wrote the batch");
            Assert.Equal((0, 1), sync.Reconcile());
        }
        Assert.Equal(["10.244.1.0/26", "10.244.2.0/26", "10.244.3.0/26", "10.244.5.0/26"], table.Routes.Keys.Order());
    }

    /// <summary>The speaker's loop only hands over what it wants: next hops are resolved (RTM_GETROUTE) and the
    /// reconcile reads the table on the writer thread, in order with the writes (issue 15).</summary>
    [Fact]
    public void Next_hops_are_resolved_and_the_table_read_on_the_writer_thread_not_the_callers()
    {
        var table = new FakeRouteTable();
        using var sync = new KernelRouteSync(table, (_, _) => { });
        sync.Set(Prefix.Parse("10.244.2.0/26"), Via("10.9.3.4"));
        sync.Flush();
        Assert.Equal((0, 0), sync.Reconcile());
        Assert.Equal(IPAddress.Parse("10.0.0.1"), table.Routes["10.244.2.0/26"].Gateway);
        Assert.NotEmpty(table.KernelReaders);
        Assert.DoesNotContain(Environment.CurrentManagedThreadId, table.KernelReaders.Keys);
    }

    [Fact]
    public void After_a_restart_each_familys_old_routes_stay_until_that_family_is_released()
    {
        var table = new FakeRouteTable();
        table.Routes["10.244.9.0/26"] = FakeRouteTable.Ours("10.244.9.0/26", "10.0.0.9");
        table.Routes["fd10:244::/122"] = FakeRouteTable.Ours("fd10:244::/122", "fd00::9");
        using var sync = new KernelRouteSync(table, (_, _) => { });
        Assert.Equal(2, sync.Startup());
        Assert.Equal([Afi.IPv4, Afi.IPv6], sync.StaleFamilies.Order());
        // Nothing was announced again. The reconcile keeps both while both are stale.
        Assert.Equal((0, 0), sync.Reconcile());
        // IPv4's End-of-RIB came from every peer: only the IPv4 route goes.
        sync.ReleaseStale(Afi.IPv4);
        WaitFor(table, r => !r.ContainsKey("10.244.9.0/26"), "the old IPv4 route to go");
        Assert.True(table.Routes.ContainsKey("fd10:244::/122"));
        Assert.True(sync.KeepingStale);
        // A withdrawal of a stale family's prefix does not remove its route either (the family is not complete).
        sync.Set(Prefix.Parse("fd10:244::/122"), null);
        sync.Flush();
        Assert.Equal((0, 0), sync.Reconcile());
        Assert.True(table.Routes.ContainsKey("fd10:244::/122"));
        sync.ReleaseStale(Afi.IPv6);
        WaitFor(table, r => !r.ContainsKey("fd10:244::/122"), "the old IPv6 route to go");
        Assert.False(sync.KeepingStale);
    }

    [Fact]
    public void A_family_is_released_when_every_peer_that_may_carry_it_has_sent_its_end_of_rib()
    {
        IPAddress tor = IPAddress.Parse("10.0.0.1"), mesh = IPAddress.Parse("10.0.0.2"), gone = IPAddress.Parse("10.0.0.3");
        var wait = new EndOfRibWait([Afi.IPv4, Afi.IPv6]);
        wait.Add(tor, [Afi.IPv4, Afi.IPv6]);
        wait.Add(mesh, [Afi.IPv4, Afi.IPv6]);
        wait.Add(gone, [Afi.IPv4]);
        // The ToR's IPv4 End-of-RIB: others still owe IPv4; nothing of IPv6 is done by it.
        Assert.Empty(wait.EndOfRib(tor, Afi.IPv4, [Afi.IPv4, Afi.IPv6]));
        // The mesh peer negotiated IPv4 only: its IPv4 End-of-RIB also means no IPv6 one will come from it.
        Assert.Empty(wait.EndOfRib(mesh, Afi.IPv4, [Afi.IPv4]));
        // The last peer owing IPv4 is removed from the configuration: IPv4 is complete, IPv6 still waits for the ToR.
        Assert.Equal([Afi.IPv4], wait.Remove(gone));
        Assert.True(wait.Waiting);
        Assert.Equal([Afi.IPv6], wait.EndOfRib(tor, Afi.IPv6, [Afi.IPv4, Afi.IPv6]));
        Assert.False(wait.Waiting);
        // Families whose old routes were not kept are never waited for.
        var none = new EndOfRibWait([Afi.IPv4]);
        none.Add(tor, [Afi.IPv4, Afi.IPv6]);
        Assert.Empty(none.EndOfRib(tor, Afi.IPv6, [Afi.IPv4, Afi.IPv6]));
        Assert.Equal([Afi.IPv4], none.EndOfRib(tor, Afi.IPv4, [Afi.IPv4, Afi.IPv6]));
    }
}
