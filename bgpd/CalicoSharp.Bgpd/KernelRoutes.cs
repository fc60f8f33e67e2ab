using System.Collections.Concurrent;
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
    /// <summary>Routes carrying <paramref name="protocol"/> in the main table, both families (the start-up read, on
    /// the speaker's loop).</summary>
    IReadOnlyList<Route> List(byte protocol);

    /// <summary>Every route of the main table, both families, whatever program installed it (the reconcile's read,
    /// on the writer thread).</summary>
    IReadOnlyList<Route> ListAll();

    /// <summary>Writes each route as its <see cref="RouteChange"/> says; per change null or its error. Deleting a
    /// route that is not there is not an error; creating one where a route already is fails with EEXIST.</summary>
    NetlinkException?[] Apply(IReadOnlyList<(Route Route, RouteChange Change)> changes);

    /// <summary>The gateway through which the kernel reaches a BGP next hop: the next hop itself on a connected
    /// network; else the gateway of the route to it (recursive resolution, as BIRD's "gateway recursive", for
    /// iBGP peers across a routed fabric), never through a route of <paramref name="protocol"/> itself; null when
    /// it is unreachable.</summary>
    IPAddress? Gateway(IPAddress nextHop, byte protocol);

    /// <summary>/32 and /128 routes through cali* interfaces: the pods the CNI plugin wired on this node.</summary>
    IReadOnlyList<Prefix> PodHostRoutes();
}

/// <summary>The real table over rtnetlink, in the daemon's network namespace.</summary>
public sealed class NetlinkRouteTable : IRouteTable, IDisposable
{
    // The speaker loop's socket: the start-up read and the pods' host routes.
    private readonly RtNetlink _nl = RtNetlink.Open();

    // The kernel writer thread's socket: writes, next-hop resolution and the reconcile's read.
    private readonly RtNetlink _writer = RtNetlink.Open();

    public IReadOnlyList<Route> List(byte protocol) => [.. All(_nl).Where(r => r.Protocol == protocol)];

    public IReadOnlyList<Route> ListAll() => All(_writer);

    private static Route[] All(RtNetlink nl) => [.. nl.ListRoutes(AddressFamily.InterNetwork).Concat(nl.ListRoutes(AddressFamily.InterNetworkV6))];

    public NetlinkException?[] Apply(IReadOnlyList<(Route Route, RouteChange Change)> changes) => _writer.ApplyRoutes(changes);

    public IPAddress? Gateway(IPAddress nextHop, byte protocol) => _writer.GetRoute(nextHop) switch
    {
        null => null,
        { Protocol: var p } when p == protocol => null,
        { Type: not Rt.RTN_UNICAST } => null,
        { Gateway: { } via } => via,
        _ => nextHop,
    };

    /// <summary>/32 and /128 routes through cali* interfaces: the pods the CNI plugin wired on this node.</summary>
    public IReadOnlyList<Prefix> PodHostRoutes()
    {
        var cali = _nl.ListLinks().Where(l => l.Name.StartsWith("cali", StringComparison.Ordinal)).Select(l => l.Index).ToHashSet();
        return [.. _nl.ListRoutes(AddressFamily.InterNetwork).Concat(_nl.ListRoutes(AddressFamily.InterNetworkV6))
            .Where(r => cali.Contains(r.OutIndex) && r.PrefixLength == (r.IsIPv6 ? 128 : 32))
            .Select(r => Prefix.FromAddress(r.Destination, r.PrefixLength))];
    }

    public RtNetlink Netlink => _nl;

    public void Dispose()
    {
        _nl.Dispose();
        _writer.Dispose();
    }
}

/// <summary>
/// Keeps the kernel's routes of bgpd's protocol equal to the desired set: changes are queued by <see cref="Set"/>,
/// handed over by <see cref="Flush"/> and written in order by a writer thread in batches (many requests per system
/// call), so the speaker's loop goes on with BGP while the kernel works. The writer thread is the one that talks to
/// the kernel: it resolves next hops to gateways (RTM_GETROUTE) and runs the periodic reconcile that repairs drift,
/// against a copy of the desired set taken when the reconcile was asked for, in order with the changes. After a
/// restart, routes left by the previous run are kept (graceful restart), family by family, until
/// <see cref="ReleaseStale"/> is called for the family, then its stale ones go.
/// <para>
/// bgpd only ever replaces or deletes routes it installed. A route of another program in the place a learned route
/// would take (same table, destination and metric: the CNI plugin's host route of a pod, a static route) is left
/// as it is, and said once in the log. The kernel's replace does not look at the protocol, so bgpd keeps track of
/// the places that hold its own routes (its successful writes, the routes of its protocol found at start and by
/// every reconcile, which reads every route's protocol): those it replaces and deletes; anywhere else it only
/// creates, exclusively, so the kernel refuses when a route is already there.
/// </para>
/// </summary>
public sealed class KernelRouteSync : IDisposable
{
    /// <summary>The route protocol number of bgpd's kernel routes (shown as "calicosharp" with the rt_protos file installed).</summary>
    public const byte Protocol = 81;

    private readonly IRouteTable _table;
    private readonly Action<BgpLogLevel, string> _log;
    private readonly Dictionary<Prefix, KernelRoute> _desired = [];
    private readonly BlockingCollection<Work> _queue = [];
    private readonly Thread _writer;
    private List<(Prefix Prefix, KernelRoute? Route)> _pending = [];

    // The writer thread's: next hops resolved to gateways since the last reconcile.
    private readonly Dictionary<IPAddress, IPAddress?> _gateways = [];

    /// <summary>What the writer thread is handed: desired changes in order (null: remove), or a reconcile.</summary>
    private abstract record Work;

    private sealed record Changes(List<(Prefix Prefix, KernelRoute? Route)> Items) : Work;

    private sealed record ReconcileRun(Dictionary<Prefix, KernelRoute> Desired, HashSet<Afi> Stale, TaskCompletionSource<(int Added, int Removed)> Done) : Work;

    // Shared by the writer thread and the reconcile (the speaker's loop), under _gate: the places whose kernel route
    // is bgpd's, and the places where another program's route was found (said once each).
    private readonly object _gate = new();
    private readonly HashSet<Prefix> _ours = [];
    private readonly HashSet<Prefix> _foreign = [];
    private readonly HashSet<Afi> _staleFamilies = [];
    private long _operations;
    private long _errors;

    public KernelRouteSync(IRouteTable table, Action<BgpLogLevel, string> log)
    {
        _table = table;
        _log = log;
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "kernel routes" };
        _writer.Start();
    }

    /// <summary>Route writes done so far (by the writer thread).</summary>
    public long Operations => Interlocked.Read(ref _operations);

    public long Errors => Interlocked.Read(ref _errors);

    public IReadOnlyDictionary<Prefix, KernelRoute> Desired => _desired;

    /// <summary>Desired prefixes left alone because another program's route holds their place.</summary>
    public int ForeignRoutesLeft
    {
        get
        {
            lock (_gate)
            {
                return _foreign.Count;
            }
        }
    }

    /// <summary>Routes of our protocol found at start: a previous run crashed and left them (RFC 4724 restarting speaker).</summary>
    public int Startup()
    {
        IReadOnlyList<Route> left = _table.List(Protocol);
        int n = left.Count;
        lock (_gate)
        {
            foreach (Route r in left)
            {
                _ours.Add(PrefixOf(r));
            }
        }
        _staleFamilies.UnionWith(left.Select(r => PrefixOf(r).Family));
        if (n > 0)
        {
            _log(BgpLogLevel.Info, $"kernel: {n} routes of protocol {Protocol} left by a previous run ({string.Join(", ", _staleFamilies.Order())}), kept until the peers have sent End-of-RIB for their family");
        }
        return n;
    }

    public bool KeepingStale => _staleFamilies.Count > 0;

    /// <summary>The families whose routes left by the previous run are still kept.</summary>
    public IReadOnlyCollection<Afi> StaleFamilies => _staleFamilies;

    /// <summary>Every peer has sent End-of-RIB for <paramref name="family"/> (null: every family; or the restart time
    /// ended): its routes that are no longer wanted go.</summary>
    public void ReleaseStale(Afi? family = null)
    {
        bool released = family is { } f ? _staleFamilies.Remove(f) : _staleFamilies.Count > 0;
        if (family is null)
        {
            _staleFamilies.Clear();
        }
        if (released)
        {
            Reconcile();
        }
    }

    /// <summary>Makes <paramref name="route"/> (null: none) the desired route for the prefix; the kernel write waits
    /// for <see cref="Flush"/>.</summary>
    public void Set(Prefix prefix, KernelRoute? route)
    {
        if (route is null)
        {
            if (_desired.Remove(prefix) && !_staleFamilies.Contains(prefix.Family))
            {
                _pending.Add((prefix, null));
            }
            return;
        }
        if (_desired.TryGetValue(prefix, out KernelRoute? current) && Same(current, route))
        {
            return;
        }
        _desired[prefix] = route;
        _pending.Add((prefix, route));
    }

    /// <summary>Hands the queued changes to the writer thread; a failed write is logged and counted (the reconcile
    /// retries it).</summary>
    public void Flush()
    {
        if (_pending.Count == 0)
        {
            return;
        }
        _queue.Add(new Changes(_pending));
        _pending = [];
    }

    private void WriteLoop()
    {
        foreach (Work work in _queue.GetConsumingEnumerable())
        {
            try
            {
                switch (work)
                {
                    case Changes c:
                        Write(Decide(Resolve(c.Items)));
                        break;
                    case ReconcileRun r:
                        r.Done.SetResult(RunReconcile(r.Desired, r.Stale));
                        break;
                }
            }
            catch (Exception e) when (e is NetlinkException or ObjectDisposedException)
            {
                if (work is ReconcileRun r)
                {
                    // The caller (the daemon's guard) says it and counts it.
                    r.Done.TrySetException(e);
                }
                else
                {
                    // Resolving a next hop failed: counted and said; the next reconcile writes what is still wrong.
                    Interlocked.Increment(ref _errors);
                    _log(BgpLogLevel.Warning, $"kernel: {e.Message}");
                }
            }
        }
    }

    /// <summary>The kernel form of each desired change: a removal, or the route via the gateways its next hops
    /// resolve to; with no reachable next hop, its removal (said in the log).</summary>
    private List<(Route Route, bool Delete)> Resolve(List<(Prefix Prefix, KernelRoute? Route)> items)
    {
        var batch = new List<(Route Route, bool Delete)>(items.Count);
        foreach ((Prefix prefix, KernelRoute? route) in items)
        {
            if (route is null)
            {
                batch.Add((Unresolved(prefix), true));
            }
            else if (ToRoute(prefix, route) is { } r)
            {
                batch.Add((r, false));
            }
            else
            {
                _log(BgpLogLevel.Warning, $"kernel: {prefix} {route}: no next hop is reachable (no route to it); not installed");
                batch.Add((Unresolved(prefix), true));
            }
        }
        return batch;
    }

    private void Write(List<(Route Route, RouteChange Change)> changes)
    {
        if (changes.Count == 0)
        {
            return;
        }
        try
        {
            NetlinkException?[] errors = _table.Apply(changes);
            for (int i = 0; i < changes.Count; i++)
            {
                Record(changes[i].Route, changes[i].Change, errors[i]);
            }
        }
        catch (Exception e) when (e is NetlinkException or ObjectDisposedException)
        {
            Interlocked.Increment(ref _errors);
            _log(BgpLogLevel.Warning, $"kernel: writing {changes.Count} routes: {e.Message}");
        }
        Interlocked.Add(ref _operations, changes.Count);
    }

    /// <summary>
    /// How each queued change is written: in a place known to hold bgpd's route, replace or delete it; anywhere else
    /// create exclusively, and never delete (what is there, if anything, is not bgpd's). A later change of a prefix in
    /// the batch supersedes an earlier one (each is the whole desired state), so one place gets one request.
    /// </summary>
    private List<(Route Route, RouteChange Change)> Decide(List<(Route Route, bool Delete)> batch)
    {
        var last = new Dictionary<Prefix, int>(batch.Count);
        for (int i = 0; i < batch.Count; i++)
        {
            last[PrefixOf(batch[i].Route)] = i;
        }
        var changes = new List<(Route Route, RouteChange Change)>(last.Count);
        lock (_gate)
        {
            for (int i = 0; i < batch.Count; i++)
            {
                (Route route, bool delete) = batch[i];
                Prefix p = PrefixOf(route);
                if (last[p] != i)
                {
                    continue;
                }
                bool ours = _ours.Contains(p);
                if (!delete)
                {
                    changes.Add((route, ours ? RouteChange.Replace : RouteChange.Create));
                }
                else if (ours)
                {
                    changes.Add((route, RouteChange.Delete));
                }
            }
        }
        return changes;
    }

    /// <summary>Notes what one write did to the places bgpd owns; errors are logged and counted (the reconcile
    /// retries), except an exclusive create refused because another program's route is there.</summary>
    private void Record(Route route, RouteChange change, NetlinkException? error)
    {
        Prefix p = PrefixOf(route);
        string? say = null;
        lock (_gate)
        {
            if (change == RouteChange.Delete)
            {
                _ours.Remove(p);
            }
            else if (error is null)
            {
                _ours.Add(p);
                _foreign.Remove(p);
            }
            else if (change == RouteChange.Create && error.Exists)
            {
                if (_foreign.Add(p))
                {
                    say = $"kernel: {p} already has a route bgpd did not install; leaving it as it is (not replacing it with {route})";
                }
                error = null;
            }
        }
        if (say is not null)
        {
            _log(BgpLogLevel.Warning, say);
        }
        if (error is not null)
        {
            Interlocked.Increment(ref _errors);
            _log(BgpLogLevel.Warning, $"kernel: {error.Message}");
        }
    }

    /// <summary>The route of a place with no gateway: enough to delete it.</summary>
    private static Route Unresolved(Prefix p) => new() { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol };

    private static Prefix PrefixOf(Route r) => Prefix.FromAddress(r.Destination, r.PrefixLength);

    /// <summary>The metric the kernel gives a route without one: 0 for IPv4, 1024 for IPv6 (IP6_RT_PRIO_USER).
    /// Routes of the same table, destination and metric take the same place: one replaces the other.</summary>
    private static uint Metric(Route r) => r.Priority != 0 ? r.Priority : DefaultMetric(r.IsIPv6);

    private static uint DefaultMetric(bool ipv6) => ipv6 ? 1024u : 0u;

    /// <summary>Writes what is still queued, then stops the writer thread.</summary>
    public void Dispose()
    {
        Flush();
        _queue.CompleteAdding();
        _writer.Join(TimeSpan.FromSeconds(10));
        _queue.Dispose();
    }

    /// <summary>Desired against actual, run by the writer thread after the changes queued before it: add what is
    /// missing, fix what differs, remove what is not wanted; a place where another program's route is, is left to it
    /// (the protocol of every route is read here). Waits for it; a failure to read or resolve is thrown here.</summary>
    public (int Added, int Removed) Reconcile()
    {
        Flush();
        var run = new ReconcileRun(new Dictionary<Prefix, KernelRoute>(_desired), [.. _staleFamilies],
            new TaskCompletionSource<(int Added, int Removed)>(TaskCreationOptions.RunContinuationsAsynchronously));
        _queue.Add(run);
        return run.Done.Task.GetAwaiter().GetResult();
    }

    private (int Added, int Removed) RunReconcile(Dictionary<Prefix, KernelRoute> desired, HashSet<Afi> stale)
    {
        int added = 0, removed = 0;
        _gateways.Clear(); // next hops are resolved afresh: the routes to them may have changed
        var actual = new Dictionary<Prefix, Route>();
        var foreign = new Dictionary<Prefix, Route>();
        foreach (Route r in _table.ListAll())
        {
            Prefix p = PrefixOf(r);
            if (r.Protocol == Protocol)
            {
                actual[p] = r;
            }
            else if (Metric(r) == DefaultMetric(r.IsIPv6))
            {
                // In the place bgpd's route (written without a metric) would take.
                foreign[p] = r;
            }
        }
        var newlyForeign = new List<(Prefix Prefix, Route Route)>();
        lock (_gate)
        {
            _ours.UnionWith(actual.Keys);
            foreach ((Prefix p, Route r) in foreign)
            {
                if (!actual.ContainsKey(p))
                {
                    _ours.Remove(p);
                    if (desired.ContainsKey(p) && _foreign.Add(p))
                    {
                        newlyForeign.Add((p, r));
                    }
                }
            }
            _foreign.RemoveWhere(p => !foreign.ContainsKey(p) || !desired.ContainsKey(p));
        }
        foreach ((Prefix p, Route r) in newlyForeign)
        {
            _log(BgpLogLevel.Warning, $"kernel: {p} already has a route bgpd did not install ({r}); leaving it as it is (not replacing it with {desired[p]})");
        }
        var batch = new List<(Route Route, bool Delete)>();
        foreach ((Prefix p, KernelRoute want) in desired)
        {
            bool present = actual.Remove(p, out Route? have);
            if (!present && foreign.ContainsKey(p))
            {
                continue; // another program's route: not bgpd's to replace
            }
            Route? route = ToRoute(p, want);
            if (route is null)
            {
                // No next hop is reachable (Set said so): nothing to install, and nothing stale may stay.
                if (present)
                {
                    batch.Add((have!, true));
                    removed++;
                }
            }
            else if (!present || !Matches(have!, route))
            {
                batch.Add((route, false));
                added++;
            }
        }
        foreach ((Prefix p, Route r) in actual)
        {
            if (!stale.Contains(p.Family))
            {
                batch.Add((r, true));
                removed++;
            }
        }
        Write(Decide(batch));
        if (added + removed > 0)
        {
            _log(BgpLogLevel.Info, $"kernel reconcile: {added} added or repaired, {removed} removed");
        }
        return (added, removed);
    }

    private static bool Same(KernelRoute a, KernelRoute b) => a.Blackhole == b.Blackhole
        && a.NextHops.Select(g => g.ToString()).Order(StringComparer.Ordinal).SequenceEqual(b.NextHops.Select(g => g.ToString()).Order(StringComparer.Ordinal));

    /// <summary>Whether the kernel's route is the one we would write (type and gateways).</summary>
    private static bool Matches(Route have, Route want)
    {
        if (have.Type != want.Type)
        {
            return false;
        }
        static IEnumerable<string> Gateways(Route r) =>
            (r.MultiPath.Count > 0 ? r.MultiPath.Select(n => n.Gateway) : [r.Gateway]).Where(g => g is not null).Select(g => g!.ToString()).Order(StringComparer.Ordinal);
        return Gateways(have).SequenceEqual(Gateways(want));
    }

    /// <summary>The kernel route for a desired one, each BGP next hop as the gateway the kernel reaches it by (null
    /// when none is reachable). On the writer thread.</summary>
    private Route? ToRoute(Prefix p, KernelRoute r)
    {
        if (r.Blackhole)
        {
            return new Route { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol, Type = Rt.RTN_BLACKHOLE };
        }
        var gateways = new List<IPAddress>(r.NextHops.Count);
        foreach (IPAddress nh in r.NextHops)
        {
            if (!_gateways.TryGetValue(nh, out IPAddress? gw))
            {
                gw = _table.Gateway(nh, Protocol);
                _gateways[nh] = gw;
            }
            if (gw is not null && !gateways.Contains(gw))
            {
                gateways.Add(gw);
            }
        }
        return gateways.Count switch
        {
            0 => null,
            1 => new Route { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol, Gateway = gateways[0] },
            _ => new Route { Destination = p.Address, PrefixLength = p.Length, Protocol = Protocol, MultiPath = [.. gateways.Select(g => new NextHop(g, 0))] },
        };
    }
}

/// <summary>
/// After bgpd restarted with routes left in the kernel (RFC 4724 §4.1, restarting speaker): which peers still owe
/// End-of-RIB for each family whose old routes are kept. A family is released when every peer that may carry it has
/// sent its End-of-RIB, or has come up without negotiating it, or is no longer configured.
/// </summary>
public sealed class EndOfRibWait
{
    private readonly Dictionary<Afi, HashSet<IPAddress>> _pending = [];

    public EndOfRibWait(IEnumerable<Afi> families)
    {
        ArgumentNullException.ThrowIfNull(families);
        foreach (Afi f in families)
        {
            _pending[f] = [];
        }
    }

    public bool Waiting => _pending.Count > 0;

    /// <summary>A configured peer that may carry <paramref name="families"/>: each of those waits for it.</summary>
    public void Add(IPAddress peer, IEnumerable<Afi> families)
    {
        ArgumentNullException.ThrowIfNull(families);
        foreach (Afi f in families)
        {
            if (_pending.TryGetValue(f, out HashSet<IPAddress>? set))
            {
                set.Add(peer);
            }
        }
    }

    /// <summary>The peer is no longer configured: the families it was the last one owing are done.</summary>
    public IReadOnlyList<Afi> Remove(IPAddress peer) => Done(f => true, peer);

    /// <summary>The peer sent End-of-RIB for <paramref name="family"/>; families the session did not negotiate
    /// (<paramref name="negotiated"/>) will never get one from it either. Returns the families now complete.</summary>
    public IReadOnlyList<Afi> EndOfRib(IPAddress peer, Afi family, IReadOnlyCollection<Afi> negotiated)
    {
        ArgumentNullException.ThrowIfNull(negotiated);
        return Done(f => f == family || !negotiated.Contains(f), peer);
    }

    private List<Afi> Done(Func<Afi, bool> which, IPAddress peer)
    {
        var done = new List<Afi>();
        foreach ((Afi f, HashSet<IPAddress> set) in _pending)
        {
            if (which(f) && set.Remove(peer) && set.Count == 0)
            {
                done.Add(f);
            }
        }
        foreach (Afi f in done)
        {
            _pending.Remove(f);
        }
        return done;
    }

    /// <summary>The restart time is over: nothing is waited for any more.</summary>
    public void Clear() => _pending.Clear();
}
