using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;

namespace CalicoSharp.Bgpd;

/// <summary>What one prefix should look like in the kernel: a blackhole (our own block) or via next hops.</summary>
public sealed record KernelRoute(bool Blackhole, IReadOnlyList<IPAddress> NextHops)
{
    public static readonly KernelRoute Drop = new(true, []);

    public override string ToString() => Blackhole ? "blackhole" : "via " + string.Join(", ", NextHops);
}

/// <summary>The kernel's routing table as the reconciler needs it (a fake in unit tests).</summary>
public interface IRouteTable
{
    /// <summary>Routes carrying <paramref name="protocol"/> in the main table, both families.</summary>
    IReadOnlyList<Route> List(byte protocol);

    void Replace(Route route);

    bool Delete(Route route);
}

/// <summary>The real table over rtnetlink, in the daemon's network namespace.</summary>
public sealed class NetlinkRouteTable : IRouteTable, IDisposable
{
    private readonly RtNetlink _nl = RtNetlink.Open();

    public IReadOnlyList<Route> List(byte protocol) =>
        [.. _nl.ListRoutes(AddressFamily.InterNetwork).Concat(_nl.ListRoutes(AddressFamily.InterNetworkV6)).Where(r => r.Protocol == protocol)];

    public void Replace(Route route) => _nl.AddRoute(route, replace: true);

    public bool Delete(Route route) => _nl.DeleteRoute(route);

    /// <summary>/32 and /128 routes through cali* interfaces: the pods the CNI plugin wired on this node.</summary>
    public IReadOnlyList<Prefix> PodHostRoutes()
    {
        var cali = _nl.ListLinks().Where(l => l.Name.StartsWith("cali", StringComparison.Ordinal)).Select(l => l.Index).ToHashSet();
        return [.. _nl.ListRoutes(AddressFamily.InterNetwork).Concat(_nl.ListRoutes(AddressFamily.InterNetworkV6))
            .Where(r => cali.Contains(r.OutIndex) && r.PrefixLength == (r.IsIPv6 ? 128 : 32))
            .Select(r => Prefix.FromAddress(r.Destination, r.PrefixLength))];
    }

    public RtNetlink Netlink => _nl;

    public void Dispose() => _nl.Dispose();
}

/// <summary>
/// Keeps the kernel's routes of bgpd's protocol equal to the desired set: changes are applied as they come
/// (replace semantics), and a periodic reconcile repairs drift. After a restart, routes left by the previous
/// run are kept (graceful restart) until <see cref="ReleaseStale"/> is called, then stale ones go.
/// </summary>
public sealed class KernelRouteSync
{
    /// <summary>The route protocol number of bgpd's kernel routes (shown as "calicosharp" with the rt_protos file installed).</summary>
    public const byte Protocol = 81;

    private readonly IRouteTable _table;
    private readonly Action<BgpLogLevel, string> _log;
    private readonly Dictionary<Prefix, KernelRoute> _desired = [];
    private bool _keepStale;

    public KernelRouteSync(IRouteTable table, Action<BgpLogLevel, string> log)
    {
        _table = table;
        _log = log;
    }

    public long Operations { get; private set; }

    public long Errors { get; private set; }

    public IReadOnlyDictionary<Prefix, KernelRoute> Desired => _desired;

    /// <summary>Routes of our protocol found at start: a previous run crashed and left them (RFC 4724 restarting speaker).</summary>
    public int Startup()
    {
        int n = _table.List(Protocol).Count;
        _keepStale = n > 0;
        if (n > 0)
        {
            _log(BgpLogLevel.Info, $"kernel: {n} routes of protocol {Protocol} left by a previous run, kept until the peers have sent End-of-RIB");
        }
        return n;
    }

    public bool KeepingStale => _keepStale;

    /// <summary>Every peer has sent End-of-RIB (or the restart time ended): remove what is no longer wanted.</summary>
    public void ReleaseStale()
    {
        if (_keepStale)
        {
            _keepStale = false;
            Reconcile();
        }
    }

    public void Set(Prefix prefix, KernelRoute? route)
    {
        if (route is null)
        {
            if (_desired.Remove(prefix, out KernelRoute? old) && !_keepStale)
            {
                Apply(() => _table.Delete(ToRoute(prefix, old)), $"deleting {prefix}");
            }
            return;
        }
        if (_desired.TryGetValue(prefix, out KernelRoute? current) && Same(current, route))
        {
            return;
        }
        _desired[prefix] = route;
        Apply(() => _table.Replace(ToRoute(prefix, route)), $"replacing {prefix} {route}");
    }

    private void Apply(Action op, string what)
    {
        try
        {
            Operations++;
            op();
        }
        catch (NetlinkException e)
        {
            Errors++;
            _log(BgpLogLevel.Warning, $"kernel: {what}: {e.Message}");
        }
    }

    /// <summary>Desired against actual: add what is missing, fix what differs, remove what is not wanted.</summary>
    public (int Added, int Removed) Reconcile()
    {
        int added = 0, removed = 0;
        var actual = new Dictionary<Prefix, Route>();
        foreach (Route r in _table.List(Protocol))
        {
            actual[Prefix.FromAddress(r.Destination, r.PrefixLength)] = r;
        }
        foreach ((Prefix p, KernelRoute want) in _desired)
        {
            if (!actual.Remove(p, out Route? have) || !Matches(have, want))
            {
                Apply(() => _table.Replace(ToRoute(p, want)), $"repairing {p}");
                added++;
            }
        }
        if (!_keepStale)
        {
            foreach (Route r in actual.Values)
            {
                Apply(() => _table.Delete(r), $"removing stale {r}");
                removed++;
            }
        }
        if (added + removed > 0)
        {
            _log(BgpLogLevel.Info, $"kernel reconcile: {added} added or repaired, {removed} removed");
        }
        return (added, removed);
    }

    private static bool Same(KernelRoute a, KernelRoute b) => a.Blackhole == b.Blackhole
        && a.NextHops.Select(g => g.ToString()).Order(StringComparer.Ordinal).SequenceEqual(b.NextHops.Select(g => g.ToString()).Order(StringComparer.Ordinal));

    private static bool Matches(Route have, KernelRoute want)
    {
        if (want.Blackhole)
        {
            return have.Type == Rt.RTN_BLACKHOLE;
        }
        if (have.Type != Rt.RTN_UNICAST)
        {
            return false;
        }
        IEnumerable<IPAddress?> gws = have.MultiPath.Count > 0 ? have.MultiPath.Select(n => n.Gateway) : [have.Gateway];
        return gws.Where(g => g is not null).Select(g => g!.ToString()).Order(StringComparer.Ordinal)
            .SequenceEqual(want.NextHops.Select(g => g.ToString()).Order(StringComparer.Ordinal));
    }

    internal static Route ToRoute(Prefix p, KernelRoute r)
    {
        if (r.Blackhole)
        {
            return new Route { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol, Type = Rt.RTN_BLACKHOLE };
        }
        if (r.NextHops.Count == 1)
        {
            return new Route { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol, Gateway = r.NextHops[0] };
        }
        return new Route
        {
            Destination = p.Address,
            PrefixLength = p.Length,
            Protocol = Protocol,
            MultiPath = [.. r.NextHops.Select(g => new NextHop(g, 0))],
        };
    }
}
