using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>A kernel table in memory: 10.0.0.0/24 is connected, 10.9.0.0/16 is reached via 10.0.0.1. One route
/// per destination (all at the default metric). As the kernel: replace takes the place whoever's route is in
/// it, an exclusive create fails with EEXIST where a route is, a delete matches the request's protocol.</summary>
internal sealed class FakeRouteTable : IRouteTable
{
    public Dictionary<string, Route> Routes { get; } = [];

    public List<int> Batches { get; } = [];

    /// <summary>The managed threads that resolved a next hop or read every route (the reconcile).</summary>
    public System.Collections.Concurrent.ConcurrentDictionary<int, bool> KernelReaders { get; } = new();

    /// <summary>While set, every call fails as a netlink socket in trouble would (ENOBUFS).</summary>
    public bool Broken { get; set; }

    private void ThrowIfBroken()
    {
        if (Broken)
        {
            throw new NetlinkException("dumping routes", 105);
        }
    }

    public IReadOnlyList<Route> List(byte protocol)
    {
        ThrowIfBroken();
        lock (Routes)
        {
            return [.. Routes.Values.Where(r => r.Protocol == protocol)];
        }
    }

    public IReadOnlyList<Route> ListAll()
    {
        KernelReaders[Environment.CurrentManagedThreadId] = true;
        ThrowIfBroken();
        lock (Routes)
        {
            return [.. Routes.Values];
        }
    }

    public NetlinkException?[] Apply(IReadOnlyList<(Route Route, RouteChange Change)> changes)
    {
        ThrowIfBroken();
        lock (Routes)
        {
            Batches.Add(changes.Count);
            var errors = new NetlinkException?[changes.Count];
            for (int i = 0; i < changes.Count; i++)
            {
                (Route r, RouteChange change) = changes[i];
                string key = $"{r.Destination}/{r.PrefixLength}";
                switch (change)
                {
                    case RouteChange.Delete:
                        if (Routes.TryGetValue(key, out Route? have) && (r.Protocol == 0 || have.Protocol == r.Protocol))
                        {
                            Routes.Remove(key);
                        }
                        break;
                    case RouteChange.Create when Routes.ContainsKey(key):
                        errors[i] = new NetlinkException($"adding route {r}", 17);
                        break;
                    default:
                        Routes[key] = r;
                        break;
                }
            }
            return errors;
        }
    }

    public IPAddress? Gateway(IPAddress nextHop, byte protocol)
    {
        KernelReaders[Environment.CurrentManagedThreadId] = true;
        byte[] b = nextHop.GetAddressBytes();
        return (b[0], b[1], b[2]) switch
        {
            (10, 0, 0) => nextHop,
            (10, 9, _) => IPAddress.Parse("10.0.0.1"),
            _ => null,
        };
    }

    public IReadOnlyList<Prefix> PodHostRoutes() => [];

    /// <summary>A route of bgpd's protocol, as a previous run left it.</summary>
    public static Route Ours(string prefix, string via) => new()
    {
        Destination = IPAddress.Parse(prefix.Split('/')[0]),
        PrefixLength = int.Parse(prefix.Split('/')[1], System.Globalization.CultureInfo.InvariantCulture),
        Protocol = KernelRouteSync.Protocol,
        Gateway = IPAddress.Parse(via),
    };
}
