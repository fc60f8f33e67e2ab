using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>KernelRouteSync against an in-memory route table: batching, next-hop resolution, reconcile.</summary>
public sealed class KernelRouteSyncTests
{
    /// <summary>A kernel table in memory: 10.0.0.0/24 is connected, 10.9.0.0/16 is reached via 10.0.0.1.</summary>
    private sealed class FakeTable : IRouteTable
    {
        public Dictionary<string, Route> Routes { get; } = [];

        public List<int> Batches { get; } = [];

        public IReadOnlyList<Route> List(byte protocol)
        {
            lock (Routes)
            {
                return [.. Routes.Values.Where(r => r.Protocol == protocol)];
            }
        }

        public NetlinkException?[] Apply(IReadOnlyList<(Route Route, bool Delete)> changes)
        {
            lock (Routes)
            {
                Batches.Add(changes.Count);
                foreach ((Route r, bool delete) in changes)
                {
                    string key = $"{r.Destination}/{r.PrefixLength}";
                    if (delete)
                    {
                        Routes.Remove(key);
                    }
                    else
                    {
                        Routes[key] = r;
                    }
                }
                return new NetlinkException?[changes.Count];
            }
        }

        public IPAddress? Gateway(IPAddress nextHop, byte protocol)
        {
            byte[] b = nextHop.GetAddressBytes();
            return (b[0], b[1], b[2]) switch
            {
                (10, 0, 0) => nextHop,
                (10, 9, _) => IPAddress.Parse("10.0.0.1"),
                _ => null,
            };
        }
    }

    private static KernelRoute Via(params string[] hops) => new(false, [.. hops.Select(IPAddress.Parse)]);

    [Fact]
    public void Next_hops_are_resolved_batched_and_reconciled_without_churn()
    {
        var table = new FakeTable();
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
}
