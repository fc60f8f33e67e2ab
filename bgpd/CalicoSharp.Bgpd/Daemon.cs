using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd;

/// <summary>Writes "time level message" lines to stderr (stdout stays free for tools).</summary>
public sealed class StderrLog
{
    private readonly BgpLogLevel _min;
    private readonly object _gate = new();

    public StderrLog(BgpLogLevel min)
    {
        _min = min;
    }

    public void Write(BgpLogLevel level, string message)
    {
        if (level < _min)
        {
            return;
        }
        string line = $"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} {level.ToString().ToLowerInvariant()} {message}";
        lock (_gate)
        {
            Console.Error.WriteLine(line);
        }
    }
}

/// <summary>How the daemon was started: identity and where its configuration comes from.</summary>
public sealed class DaemonOptions
{
    public string? ConfigFile { get; init; }

    public string? NodeName { get; init; }

    /// <summary>This node's BGP IPv4 address, as a CIDR ("10.0.0.2/24") or an address (flag <c>--ipv4-address</c>).
    /// It wins over the config file's <c>ipv4Address</c>, which wins over the node record's
    /// <c>spec.bgp.ipv4Address</c>; with neither, the record's is followed live.</summary>
    public string? Ipv4Address { get; init; }

    public string? Ipv6Address { get; init; }

    public uint? AsNumber { get; init; }

    /// <summary>etcd endpoints; none: the config file is the only source.</summary>
    public IReadOnlyList<string> EtcdEndpoints { get; init; } = [];

    /// <summary>The datastore to follow instead of etcd at <see cref="EtcdEndpoints"/> (tests: an in-memory store;
    /// it is polled, not watched). The daemon does not dispose it.</summary>
    public IKvStore? Store { get; init; }

    /// <summary>The most routes bgpd keeps from one peer that comes from etcd (a bgppeer or the node mesh), before it
    /// closes the session (Cease / Maximum Number of Prefixes Reached, RFC 4486); flag <c>--peer-max-prefixes</c>.
    /// Null: the config file's <c>peerMaxPrefixes</c>, else <see cref="DefaultPeerMaxPrefixes"/>; 0: no limit. Peers
    /// of the config file have their own <c>maxPrefixes</c> (none unless set).</summary>
    public int? PeerMaxPrefixes { get; init; }

    /// <summary>
    /// 100,000: Kubernetes supports clusters of up to 5,000 nodes and Calico caps a node at 20 blocks by default
    /// (<c>maxBlocksPerHost</c>), so even a route reflector of such a cluster passes on fewer blocks than this
    /// (real nodes hold one to a few); borrowed /32s add a little. A peer past it is broken or hostile, and the cap
    /// bounds what one peer can make bgpd's RIB hold to about 5 MiB (some 50 bytes a route, measured by the bench's
    /// peer-memory run on the code that still stored refused routes). Calico's bgppeers have no such field.
    /// </summary>
    public const int DefaultPeerMaxPrefixes = 100_000;

    /// <summary>Program learned routes and block blackholes into the kernel (off for a pure route server).</summary>
    public bool Kernel { get; init; } = true;

    /// <summary>The kernel's routing table (tests: one in memory); null: the real one over rtnetlink. The daemon
    /// does not dispose a table it is given.</summary>
    public IRouteTable? RouteTable { get; init; }

    /// <summary>How bgpd runs nft for ippools natOutgoing (tests: a fake); null: the real nft when bgpd owns the real kernel
    /// (<see cref="Kernel"/> on and no <see cref="RouteTable"/> given), else natOutgoing is not programmed.</summary>
    public NatOutgoingTable.ScriptRunner? Nft { get; init; }

    /// <summary>The daemon's and its speaker's clock (tests: a fake one to step timers); null: the system's.</summary>
    public TimeProvider? Time { get; init; }

    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(1);

    public TimeSpan ReconcileInterval { get; init; } = TimeSpan.FromSeconds(10);

    public const string DefaultSecretsDirectory = "/etc/calicosharp/secrets";

    /// <summary>Where a bgppeer's password secretKeyRef {name, key} is read: &lt;dir&gt;/&lt;name&gt;/&lt;key&gt;.</summary>
    public string SecretsDirectory { get; init; } = DefaultSecretsDirectory;

    /// <summary>The node's state folder, shared with the CNI plugin: IPAM block hints and the host lock.</summary>
    public string StateDirectory { get; init; } = IpamClientOptions.DefaultStateDirectory;
}

/// <summary>
/// The node daemon: follows its configuration (file and etcd), keeps the speaker's peers and announced
/// prefixes equal to it, and keeps the kernel's routes equal to the RIB's best paths.
/// </summary>
public sealed class Daemon : IAsyncDisposable
{
    private readonly DaemonOptions _options;
    private readonly Action<BgpLogLevel, string> _log;
    private readonly CancellationTokenSource _cts = new();
    private readonly EtcdKvStore? _etcd;
    private readonly EtcdClusterSource? _cluster;
    private readonly IRouteTable? _routeTable;
    private readonly NetlinkRouteTable? _ownRouteTable;
    private readonly TimeProvider _time;
    private readonly KernelRouteSync? _kernel;
    private readonly NatOutgoingTable? _nat;
    private List<(Prefix Prefix, string Kind)> _serviceRanges = [];
    private HashSet<Prefix> _serviceAdvertised = [];
    private EndOfRibWait _eorWait = new([]);
    private DaemonConfig _file;
    private string? _appliedImport;
    private List<Prefix> _pools = [];
    private HashSet<Prefix> _ownBlocks = [];
    private Dictionary<Prefix, PathAttributes?> _originated = [];
    private List<Prefix> _noExport = [];
    private HashSet<Prefix> _borrowed = [];
    private readonly LocalPrefixes _local;
    private Dictionary<IPAddress, (PeerConfig Config, string Key)> _peerKeys = [];
    private Task? _loop;
    private Task? _watch;
    private readonly SemaphoreSlim _wake = new(0, 1);
    private DateTimeOffset _staleDeadline;

    public Daemon(DaemonOptions options, Action<BgpLogLevel, string> log)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _log = log;
        _time = options.Time ?? TimeProvider.System;
        StartedAt = _time.GetUtcNow();
        _local = new LocalPrefixes(log);
        _file = options.ConfigFile is { } f ? DaemonConfig.Load(f) : new DaemonConfig();
        NodeName = options.NodeName ?? _file.NodeName ?? Environment.GetEnvironmentVariable("NODENAME") ?? Environment.MachineName;
        // The operator's own, checked at once: a bad flag or file address stops bgpd (the node record's are judged live).
        DaemonConfig.ParseNodeAddress(options.Ipv4Address, AddressFamily.InterNetwork, "--ipv4-address");
        DaemonConfig.ParseNodeAddress(options.Ipv6Address, AddressFamily.InterNetworkV6, "--ipv6-address");
        Ipv4Cidr = NonEmpty(options.Ipv4Address) ?? NonEmpty(_file.Ipv4Address);
        Ipv6Cidr = NonEmpty(options.Ipv6Address) ?? NonEmpty(_file.Ipv6Address);
        IKvStore? store = options.Store;
        if (store is null && options.EtcdEndpoints.Count > 0)
        {
            store = _etcd = new EtcdKvStore(new EtcdOptions { Endpoints = options.EtcdEndpoints });
        }
        if (store is not null)
        {
            _cluster = new EtcdClusterSource(store, NodeName);
            // Not disposed on its own: it shares the daemon's etcd client, which the daemon disposes.
            // It assigns for this node alone, request after request: the next one starts from what the last one knew.
            Ipam = new IpamClient(store, IpamClientOptions.InStateDirectory(options.StateDirectory, TimeSpan.FromSeconds(5)) with { KeepNodeView = true });
        }
        if (options.Kernel)
        {
            _routeTable = options.RouteTable ?? (_ownRouteTable = new NetlinkRouteTable());
            _kernel = new KernelRouteSync(_routeTable, log);
        }
        if (options.Nft is not null || (options.Kernel && options.RouteTable is null))
        {
            _nat = new NatOutgoingTable(log, options.Nft);
        }
        ValidateFile(_file);
    }

    /// <summary>Everything of a config file that can be wrong, checked before it is used: at start a bad file stops
    /// bgpd (it is the operator's own), on reload it is refused and the running configuration stays.</summary>
    private void ValidateFile(DaemonConfig file)
    {
        if (file.Import is not "pools" and not "all")
        {
            throw new ConfigException($"import: '{file.Import}' (must be \"pools\" or \"all\")");
        }
        foreach (PeerSpec spec in file.Peers)
        {
            ToPeerConfig(spec, file);
        }
        foreach (string p in file.IpPools)
        {
            DaemonConfig.ParsePrefix(p, "ipPools");
        }
        foreach (string p in file.Originate)
        {
            DaemonConfig.ParsePrefix(p, "originate");
        }
        foreach ((List<CidrEntry> list, string kind) in new[] { (file.ServiceClusterIPs, "serviceClusterIPs"), (file.ServiceExternalIPs, "serviceExternalIPs"), (file.ServiceLoadBalancerIPs, "serviceLoadBalancerIPs") })
        {
            foreach (CidrEntry e in list)
            {
                if (!IpNet.TryParse(e.Cidr, true, out _, out string error))
                {
                    throw new ConfigException($"{kind}: {error}");
                }
            }
        }
        DaemonConfig.ParseAddress(file.ListenAddress, "listenAddress");
        DaemonConfig.ParseNodeAddress(file.Ipv4Address, AddressFamily.InterNetwork, "ipv4Address");
        DaemonConfig.ParseNodeAddress(file.Ipv6Address, AddressFamily.InterNetworkV6, "ipv6Address");
        foreach ((string? id, string what) in new[] { (file.RouterId, "routerId"), (file.RouteReflectorClusterId, "routeReflectorClusterID") })
        {
            if (id is not null)
            {
                ParseId(id, what);
            }
        }
        if (file.HoldTime is 1 or 2)
        {
            throw new ConfigException($"holdTime: {file.HoldTime} s (must be 0 or at least 3, RFC 4271 §4.2)");
        }
        if (file.PeerMaxPrefixes is < 0)
        {
            throw new ConfigException($"peerMaxPrefixes: {file.PeerMaxPrefixes} (0 for no limit, or a number of prefixes)");
        }
    }

    /// <summary>The limit a peer from etcd gets (null: none): the flag, the file, the default.</summary>
    internal int? EtcdPeerMaxPrefixes => (_options.PeerMaxPrefixes ?? _file.PeerMaxPrefixes ?? DaemonOptions.DefaultPeerMaxPrefixes) is var n and > 0 ? n : null;

    public string NodeName { get; }

    /// <summary>The allocator the control API serves to the CNI plugin; null without etcd.</summary>
    internal IpamClient? Ipam { get; }

    /// <summary>The IPv4 address bgpd was given (flag, else config file) as written; published to the node record
    /// at start. Null: the node record's is followed.</summary>
    public string? Ipv4Cidr { get; private set; }

    public string? Ipv6Cidr { get; private set; }

    /// <summary>This node's BGP IPv4 address in use (the router id unless the file has one, the sessions' source):
    /// from the flag, the config file or the node record, in that order; changes with the record.</summary>
    public IPAddress? Ipv4 { get; private set; }

    public IPAddress? Ipv6 { get; private set; }

    /// <summary>Where <see cref="Ipv4"/> comes from ("--ipv4-address", "the config file's ipv4Address", "etcd
    /// &lt;key&gt; spec.bgp.ipv4Address"); null without one.</summary>
    public string? Ipv4Source { get; private set; }

    public string? Ipv6Source { get; private set; }

    private static string? NonEmpty(string? s) => string.IsNullOrWhiteSpace(s) ? null : s;

    public BgpSpeaker Speaker { get; private set; } = null!;

    /// <summary>Where the speaker listens (the port chosen when the configuration says 0).</summary>
    public IPEndPoint? ListenEndpoint { get; private set; }

    public KernelRouteSync? Kernel => _kernel;

    /// <summary>BFD beside the BGP sessions (BfdPeers.cs); null before start.</summary>
    public BfdPeers? Bfd { get; private set; }

    public ClusterSnapshot Cluster { get; private set; } = ClusterSnapshot.Empty;

    public DateTimeOffset StartedAt { get; }

    public long EtcdErrors { get; private set; }

    /// <summary>Records in etcd that bgpd skips, by key, and why (node status and metrics show them).</summary>
    public IReadOnlyList<ResourceProblem> Problems { get; private set; } = [];

    /// <summary>Times applying the configuration or reconciling the kernel failed as a whole (each is retried at
    /// the next change or poll).</summary>
    public long ApplyErrors { get; private set; }

    public bool EtcdConfigured => _cluster is not null;

    /// <summary>The etcd watch is open: changes wake the daemon at once (else it notices them at the next poll).</summary>
    public bool WatchUp { get; private set; }

    public long WatchRestarts { get; private set; }

    /// <summary>The etcd revision the watch has reached (the start read's, then each batch's): a new watch resumes after it.</summary>
    private long _watchRevision;

    public string? LastEtcdError { get; private set; }

    public DateTimeOffset? LastEtcdRead { get; private set; }

    public IReadOnlyCollection<Prefix> OwnBlocks => _ownBlocks;

    /// <summary>ippools natOutgoing: bgpd's nftables table now; null when bgpd does not program the dataplane.</summary>
    public NatOutgoingState? NatOutgoing => _nat?.State;

    /// <summary>The service ranges (bgpconfigurations serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs)
    /// this node advertises now, with the list each came from; empty when it advertises none.</summary>
    public IReadOnlyList<(Prefix Prefix, string Kind)> ServiceAdvertised { get; private set; } = [];

    /// <summary>Routes from peers inside a service range, refused (never installed: another node's advertisement of a
    /// Service range would loop the traffic between nodes).</summary>
    public long ServiceRoutesRefused { get; private set; }

    /// <summary>Announcements from peers refused because they fall inside this node's blocks or borrowed addresses.</summary>
    public long LocalPrefixesRefused => _local.Refused;

    /// <summary>The AS this node speaks: flag, then the node's record, the file, the cluster default, 64512.</summary>
    public uint LocalAs => _options.AsNumber ?? Cluster.Nodes.FirstOrDefault(n => n.Name == NodeName)?.AsNumber ?? _file.AsNumber ?? Cluster.AsNumber ?? 64512;

    public async Task StartAsync()
    {
        int stale = _kernel?.Startup() ?? 0;
        if (_cluster is not null)
        {
            if (Ipv4Cidr is not null || Ipv6Cidr is not null || _options.AsNumber is not null)
            {
                // As calico/node does: a node given its identity by flags publishes it for the mesh and the CLI.
                await _cluster.WriteNodeAsync(Ipv4Cidr, Ipv6Cidr, _options.AsNumber, _cts.Token).ConfigureAwait(false);
            }
            Cluster = await _cluster.ReadAsync(_cts.Token).ConfigureAwait(false);
            LastEtcdRead = _time.GetUtcNow();
            _watchRevision = Cluster.Revision;
        }
        var addressProblems = new List<ResourceProblem>();
        ApplyAddresses(Cluster, addressProblems, starting: true);
        if (Ipv4 is null && _file.RouterId is null)
        {
            // Nothing to speak with: no router id and no source address. systemd starts bgpd again (Restart=on-failure),
            // so a node that comes up before its record has an address joins once it has.
            string why = addressProblems.Count > 0 ? addressProblems[0].Reason + "; " : _cluster is null ? "" : $"etcd {Keys.Node(NodeName)} has no spec.bgp.ipv4Address; ";
            throw new ConfigException($"node {NodeName} has no BGP IPv4 address (its router id): {why}give --ipv4-address, ipv4Address in the config file"
                + (_cluster is null ? "" : $", spec.bgp.ipv4Address in etcd {Keys.Node(NodeName)}") + ", or routerId in the config file");
        }
        (uint routerId, uint? cluster, _) = Identity(Cluster);
        Speaker = new BgpSpeaker(new SpeakerConfig
        {
            LocalAs = LocalAs,
            RouterId = routerId,
            ClusterId = cluster,
            Restarting = stale > 0,
            Log = _log,
        }, _time);
        Speaker.Import = ImportPolicy;
        Speaker.ConfigureSocket = SocketOptions.Apply;
        Speaker.ConfigureListener = SocketOptions.ApplyListener;
        Speaker.Rib.BestChanged += OnBestChanged;
        Speaker.Rib.EndOfRibReceived += OnEndOfRib;
        Bfd = new BfdPeers(Speaker, _log);
        _listenWanted = WantedListen(Cluster);
        IPEndPoint bound = Speaker.Listen(_listenWanted);
        ListenEndpoint = bound;
        _log(BgpLogLevel.Info, $"node {NodeName}: listening on {bound}, AS {LocalAs}, router id {Dotted(routerId)}{(cluster is null ? "" : ", route reflector")}");
        _staleDeadline = _time.GetUtcNow() + TimeSpan.FromSeconds(Speaker.Config.RestartTime);
        _eorWait = new EndOfRibWait(_kernel?.StaleFamilies ?? []);
        // A record in etcd that cannot be used is skipped and reported, never a reason not to start.
        await Speaker.InvokeAsync(() => Guard("applying the configuration", Apply)).ConfigureAwait(false);
        _nat?.Apply(Cluster.NatPools);
        _loop = Task.Run(LoopAsync);
        if (_etcd is not null && _cluster is not null)
        {
            _watch = Task.Run(WatchLoopAsync);
        }
    }

    /// <summary>Keeps an etcd watch on everything bgpd follows; each change wakes the main loop, which re-reads
    /// the snapshot (one round trip) and applies it. The poll stays as a safety net.</summary>
    private async Task WatchLoopAsync()
    {
        while (!_cts.IsCancellationRequested)
        {
            try
            {
                // After a break (its member died, lost its leader), the watch resumes on the next member from the
                // revision it had reached: the changes made meanwhile arrive as events, with no reset of anything.
                await _etcd!.WatchAsync(_cluster!.WatchedPrefixes, _watchRevision == 0 ? 0 : _watchRevision + 1, revision =>
                {
                    _watchRevision = Math.Max(_watchRevision, revision);
                    Wake();
                }, () =>
                {
                    WatchUp = true;
                    Wake();
                }, _cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_cts.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is IpamException or IOException or Grpc.Core.RpcException or InvalidOperationException)
            {
                if (WatchUp)
                {
                    _log(BgpLogLevel.Warning, $"etcd watch: {e.Message}; polling until it is back");
                }
                WatchUp = false;
                WatchRestarts++;
            }
            try
            {
                await Task.Delay(TimeSpan.FromSeconds(1), _cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private void Wake()
    {
        try
        {
            _wake.Release();
        }
        catch (SemaphoreFullException)
        {
            // Already woken: one re-read covers every change so far.
        }
    }

    private async Task LoopAsync()
    {
        DateTimeOffset nextReconcile = _time.GetUtcNow() + _options.ReconcileInterval;
        while (!_cts.IsCancellationRequested)
        {
            try
            {
                // Woken by the watch at once; otherwise a poll (the safety net, and borrowed-address discovery).
                await _wake.WaitAsync(_options.PollInterval, _cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            if (_cluster is not null)
            {
                try
                {
                    ClusterSnapshot snap = await _cluster.ReadAsync(_cts.Token).ConfigureAwait(false);
                    LastEtcdRead = _time.GetUtcNow();
                    LastEtcdError = null;
                    Cluster = snap;
                    await UpdateBorrowedAsync(snap).ConfigureAwait(false);
                    // Off the speaker's loop: nft takes tens of milliseconds, BGP keeps running meanwhile.
                    _nat?.Apply(snap.NatPools);
                }
                catch (OperationCanceledException) when (_cts.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception e) when (e is IpamException or IOException or ConfigException or Grpc.Core.RpcException)
                {
                    EtcdErrors++;
                    if (LastEtcdError != e.Message)
                    {
                        _log(BgpLogLevel.Warning, $"etcd: {e.Message} (keeping the last known configuration)");
                    }
                    LastEtcdError = e.Message;
                }
            }
            bool reconcile = _time.GetUtcNow() >= nextReconcile;
            if (reconcile)
            {
                nextReconcile = _time.GetUtcNow() + _options.ReconcileInterval;
            }
            await Speaker.InvokeAsync(() =>
            {
                Guard("applying the configuration", Apply);
                Guard("kernel routes", () =>
                {
                    if (_kernel is { KeepingStale: true } && _time.GetUtcNow() >= _staleDeadline)
                    {
                        _log(BgpLogLevel.Info, $"kernel: restart time over, removing routes no peer sent again ({string.Join(", ", _kernel.StaleFamilies.Order())})");
                        _eorWait.Clear();
                        _kernel.ReleaseStale();
                    }
                    else if (reconcile)
                    {
                        _kernel?.Reconcile();
                    }
                });
            }).ConfigureAwait(false);
        }
    }

    private readonly Dictionary<string, string> _guardErrors = new(StringComparer.Ordinal);

    /// <summary>Runs one step of the loop so that nothing it throws ends the loop: bgpd must keep following etcd,
    /// announcing and reconciling while the process lives (a dead loop in a live process is never restarted by
    /// systemd). Logged once per distinct failure, counted, retried at the next change or poll.</summary>
    private void Guard(string what, Action step)
    {
        try
        {
            step();
            if (_guardErrors.Remove(what))
            {
                _log(BgpLogLevel.Info, $"{what}: working again");
            }
        }
#pragma warning disable CA1031 // the loop must outlive any one failure; each is logged and retried
        catch (Exception e)
#pragma warning restore CA1031
        {
            ApplyErrors++;
            string text = $"{e.GetType().Name}: {e.Message}";
            if (!_guardErrors.TryGetValue(what, out string? last) || last != text)
            {
                _log(BgpLogLevel.Error, $"{what} failed: {text}; what did apply stays, retrying at the next change or poll");
            }
            _guardErrors[what] = text;
        }
    }

    /// <summary>Pod /32s on this node outside its own blocks that IPAM allocated to it: borrowed addresses.</summary>
    private async Task UpdateBorrowedAsync(ClusterSnapshot snap)
    {
        if (_routeTable is null || _cluster is null)
        {
            return;
        }
        var own = snap.ConfirmedBlocks.Select(b => Prefix.Parse(b.ToString())).ToList();
        // The netlink socket belongs to the speaker's loop (kernel route writes happen there): read it there too.
        IRouteTable table = _routeTable;
        IReadOnlyList<Prefix> hostRoutes = await Speaker.InvokeAsync(table.PodHostRoutes).ConfigureAwait(false);
        List<IPAddress> candidates = [.. hostRoutes.Where(h => !own.Any(b => b.Contains(h))).Select(h => h.Address)];
        HashSet<IPAddress> borrowed = candidates.Count == 0 ? [] : await _cluster.BorrowedAsync(candidates, snap, _cts.Token).ConfigureAwait(false);
        _borrowed = [.. borrowed.Select(a => Prefix.FromAddress(a, a.AddressFamily == AddressFamily.InterNetwork ? 32 : 128))];
    }

    /// <summary>SIGHUP: read the config file again and apply it.</summary>
    public async Task ReloadAsync()
    {
        if (_options.ConfigFile is not { } f)
        {
            return;
        }
        DaemonConfig next = DaemonConfig.Load(f);
        await Speaker.InvokeAsync(() =>
        {
            // Checked whole before it replaces the running file: a refused reload changes nothing.
            ValidateFile(next);
            _file = next;
            Guard("applying the configuration", Apply);
        }).ConfigureAwait(false);
        _log(BgpLogLevel.Info, $"reloaded {f}");
        string? v4 = NonEmpty(_options.Ipv4Address) ?? NonEmpty(next.Ipv4Address), v6 = NonEmpty(_options.Ipv6Address) ?? NonEmpty(next.Ipv6Address);
        if ((v4 != Ipv4Cidr || v6 != Ipv6Cidr) && _cluster is not null)
        {
            // A new address in the file is published as at start, so the other nodes' mesh follows it.
            try
            {
                await _cluster.WriteNodeAsync(v4, v6, null, _cts.Token).ConfigureAwait(false);
                (Ipv4Cidr, Ipv6Cidr) = (v4, v6);
            }
            catch (Exception e) when (e is IpamException or IOException or Grpc.Core.RpcException)
            {
                _log(BgpLogLevel.Warning, $"etcd {Keys.Node(NodeName)}: cannot publish the reloaded address: {e.Message}; the node uses it, the other nodes do not see it yet");
            }
        }
    }

    /// <summary>Desired against actual, on the speaker's loop: pools, peers, announced prefixes.</summary>
    private void Apply()
    {
        ClusterSnapshot c = Cluster;
        var pools = c.Pools.Select(p => Prefix.Parse(p.ToString())).Concat(_file.IpPools.Select(p => DaemonConfig.ParsePrefix(p, "ipPools"))).Distinct().ToList();
        var blocks = c.ConfirmedBlocks.Select(b => Prefix.Parse(b.ToString())).ToHashSet();
        bool poolsChanged = !pools.SequenceEqual(_pools);
        // A new pool, a block or borrowed address gone, "all" instead of "pools": the policy may accept routes it
        // refused before, which bgpd did not keep; the RIB asks the peers for them again (route refresh).
        bool mayAcceptMore = pools.Except(_pools).Any();
        _pools = pools;
        bool importChanged = _file.Import != _appliedImport;
        mayAcceptMore |= importChanged && _file.Import == "all";
        _appliedImport = _file.Import;
        bool localChanged = _local.Update(blocks, _borrowed);
        mayAcceptMore |= localChanged && _local.Released;
        var problems = new List<ResourceProblem>(c.Problems);
        List<(Prefix Prefix, string Kind)> serviceRanges = ServiceRanges(c, problems);
        bool servicesChanged = !serviceRanges.SequenceEqual(_serviceRanges);
        mayAcceptMore |= _serviceRanges.Select(r => r.Prefix).Except(serviceRanges.Select(r => r.Prefix)).Any();
        _serviceRanges = serviceRanges;
        // Each changes what the import policy accepts: what the peers sent is judged again.
        if (localChanged | poolsChanged | importChanged | servicesChanged)
        {
            foreach (BgpPeer p in Speaker.Peers)
            {
                Speaker.Rib.Reimport(p, mayAcceptMore);
            }
        }
        ApplyAddresses(c, problems, starting: false);
        ApplyIdentity(c, problems);
        List<PeerConfig> desired = DesiredPeers(c, problems);
        ApplyPeers(desired);
        Guard("BFD", () => Bfd?.Apply(desired, _file.Peers, c, c.Nodes.FirstOrDefault(n => n.Name == NodeName)?.Labels ?? new Dictionary<string, string>()));
        ApplyNoExport(c);
        List<CommunityRule> rules = CommunityRules(c, problems);
        Report(problems);
        var originate = new HashSet<Prefix>(blocks);
        foreach (string s in _file.Originate)
        {
            originate.Add(DaemonConfig.ParsePrefix(s, "originate"));
        }
        foreach (Prefix host in _borrowed)
        {
            // Addresses this node borrowed from other nodes' blocks: advertised as /32 (/128).
            if (!blocks.Any(b => b.Contains(host)))
            {
                originate.Add(host);
            }
        }
        _ownBlocks = blocks;
        // Calico's service advertisement: every node announces the configured ranges (the fabric spreads the traffic
        // over the nodes, ECMP), except a node labelled to be left out of external load balancers.
        NodeInfo? me = c.Nodes.FirstOrDefault(n => n.Name == NodeName);
        bool excluded = me?.Labels.GetValueOrDefault(ExcludeLabel) == "true";
        List<(Prefix Prefix, string Kind)> advertised = excluded ? [] : [.. serviceRanges.Where(r => !originate.Contains(r.Prefix)).DistinctBy(r => r.Prefix)];
        if (excluded != _excludedLogged)
        {
            _log(BgpLogLevel.Info, excluded ? $"node {NodeName} is labelled {ExcludeLabel}=true: it advertises no service range"
                : $"node {NodeName}: no longer labelled {ExcludeLabel}=true");
            _excludedLogged = excluded;
        }
        _serviceAdvertised = [.. advertised.Select(r => r.Prefix)];
        ServiceAdvertised = advertised;
        foreach ((Prefix p, string _) in advertised)
        {
            originate.Add(p);
        }
        foreach (Prefix gone in _originated.Keys.Where(p => !originate.Contains(p)).ToList())
        {
            Speaker.Rib.WithdrawLocal(gone);
            _log(BgpLogLevel.Info, $"withdrawing {gone}");
        }
        var next = new Dictionary<Prefix, PathAttributes?>();
        foreach (Prefix p in originate)
        {
            PathAttributes? attrs = CommunityRule.AttributesFor(rules, p);
            next[p] = attrs;
            bool known = _originated.TryGetValue(p, out PathAttributes? had);
            if (known && Equals(had, attrs))
            {
                continue;
            }
            Speaker.Rib.Originate(p, attrs);
            string what = blocks.Contains(p) ? " (block affine to this node)"
                : advertised.FirstOrDefault(r => r.Prefix == p).Kind is { } kind ? $" (service range, {kind})"
                : p.Length is 32 or 128 ? " (borrowed address)" : "";
            string with = attrs is null ? "" : $" with {CommunityRule.Describe(attrs)}";
            _log(BgpLogLevel.Info, known ? $"announcing {p}{what} again{(attrs is null ? " without communities" : with)}" : $"announcing {p}{what}{with}");
        }
        _originated = next;
    }

    private IPEndPoint _listenWanted = new(IPAddress.IPv6Any, 179);

    /// <summary>Kubernetes' well-known label: a node carrying it with "true" advertises no service range (as Calico).</summary>
    public const string ExcludeLabel = "node.kubernetes.io/exclude-from-external-load-balancers";

    private bool _excludedLogged;

    /// <summary>The service ranges of the default bgpconfiguration and of the config file, checked: an entry that is not
    /// a CIDR is reported and left out, the others apply. In the order given, each prefix once.</summary>
    private List<(Prefix Prefix, string Kind)> ServiceRanges(ClusterSnapshot c, List<ResourceProblem> problems)
    {
        var result = new List<(Prefix, string)>();
        IEnumerable<ServiceRange> fromFile = _file.ServiceClusterIPs.Select(e => new ServiceRange("serviceClusterIPs", e.Cidr))
            .Concat(_file.ServiceExternalIPs.Select(e => new ServiceRange("serviceExternalIPs", e.Cidr)))
            .Concat(_file.ServiceLoadBalancerIPs.Select(e => new ServiceRange("serviceLoadBalancerIPs", e.Cidr)));
        foreach (ServiceRange r in c.ServiceRanges.Concat(fromFile))
        {
            // As Calico: a CIDR with its length, host bits zero (a single address is written /32 or /128).
            if (IpNet.TryParse(r.Cidr, true, out IpNet net, out string error))
            {
                Prefix p = Prefix.Parse(net.ToString());
                if (!result.Any(x => x.Item1 == p))
                {
                    result.Add((p, r.Kind));
                }
            }
            else
            {
                problems.Add(new ResourceProblem(EtcdClusterSource.BgpConfigurations + "default", $"{r.Kind}: {error}; left out"));
            }
        }
        return result;
    }

    private IPEndPoint WantedListen(ClusterSnapshot c) =>
        new(DaemonConfig.ParseAddress(_file.ListenAddress, "listenAddress") ?? IPAddress.IPv6Any, _file.ListenPort ?? c.ListenPort ?? 179);

    private static string Dotted(uint id) => $"{id >> 24}.{(id >> 16) & 255}.{(id >> 8) & 255}.{id & 255}";

    private string? _overrideNoted;

    /// <summary>
    /// This node's BGP addresses: per family the flag, else the config file, else the node record's
    /// <c>spec.bgp.ipv4Address</c> / <c>ipv6Address</c> (Calico's "10.0.0.5/24", or a bare address). A change is
    /// logged and applied here; what it touches follows in the same pass: the router id (when it is the IPv4 address)
    /// resets every session, a new source address resets the sessions bound to it (see <see cref="Key"/>), the mesh's
    /// active/passive sides are chosen again. An address in use is never dropped live: a record whose address
    /// becomes unreadable, empty or missing (or has no bgp section) is reported and the last address stays until
    /// one is given again or bgpd restarts.
    /// </summary>
    private void ApplyAddresses(ClusterSnapshot c, List<ResourceProblem> problems, bool starting)
    {
        NodeInfo? me = c.Nodes.FirstOrDefault(n => n.Name == NodeName);
        string key = Keys.Node(NodeName);
        var overrides = new List<string>();
        (IPAddress? address, string? source) Resolve(bool v4, IPAddress? current, string? currentSource)
        {
            AddressFamily family = v4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
            string field = v4 ? "ipv4Address" : "ipv6Address";
            string? recordText = v4 ? me?.Ipv4Text : me?.Ipv6Text;
            IPAddress? record = null;
            string? recordProblem = null;
            try
            {
                record = DaemonConfig.ParseNodeAddress(recordText, family, $"spec.bgp.{field}");
            }
            catch (ConfigException e)
            {
                recordProblem = e.Message;
            }
            (IPAddress? given, string? givenSource) = (v4 ? _options.Ipv4Address : _options.Ipv6Address) is { } flag && NonEmpty(flag) is not null
                ? (DaemonConfig.ParseNodeAddress(flag, family, "--" + (v4 ? "ipv4" : "ipv6") + "-address"), "--" + (v4 ? "ipv4" : "ipv6") + "-address")
                : (DaemonConfig.ParseNodeAddress(v4 ? _file.Ipv4Address : _file.Ipv6Address, family, field), $"the config file's {field}");
            if (given is not null)
            {
                if (record is not null && !record.Equals(given))
                {
                    overrides.Add($"spec.bgp.{field} {recordText} is not used: {givenSource} ({given}) wins");
                }
                return (given, givenSource);
            }
            string recordSource = $"etcd {key} spec.bgp.{field}";
            if (record is not null)
            {
                return (record, recordSource);
            }
            if (recordProblem is not null)
            {
                problems.Add(new ResourceProblem(key, current is null ? $"{recordProblem}; this node has no BGP {(v4 ? "IPv4" : "IPv6")} address"
                    : $"{recordProblem}; keeping {current} until it is fixed"));
            }
            else if (current is not null && !starting)
            {
                string how = me is null ? "the node record is gone" : recordText is null ? $"spec.bgp.{field} is missing" : $"spec.bgp.{field} is empty";
                problems.Add(new ResourceProblem(key, $"{how}: keeping this node's {(v4 ? "IPv4" : "IPv6")} address {current} (was from {currentSource}) until one is given or bgpd restarts"));
            }
            return (current, current is null ? null : currentSource);
        }
        (IPAddress? v4, string? v4Source) = Resolve(true, Ipv4, Ipv4Source);
        (IPAddress? v6, string? v6Source) = Resolve(false, Ipv6, Ipv6Source);
        string noted = string.Join("; ", overrides);
        if (noted != (_overrideNoted ?? "") && noted.Length > 0)
        {
            _log(BgpLogLevel.Warning, $"node {NodeName}: {noted}");
        }
        _overrideNoted = noted;
        foreach ((IPAddress? was, IPAddress? now, string? from, string what) in new[] { (Ipv4, v4, v4Source, "IPv4"), (Ipv6, v6, v6Source, "IPv6") })
        {
            if (!Equals(was, now) && now is not null)
            {
                _log(BgpLogLevel.Info, starting || was is null
                    ? $"node {NodeName}: BGP {what} address {now} (from {from})"
                    : $"node {NodeName}: BGP {what} address {was} -> {now} (from {from}); sessions that use it are reset");
            }
        }
        (Ipv4, Ipv4Source, Ipv6, Ipv6Source) = (v4, v4Source, v6, v6Source);
    }

    /// <summary>The router id (the file's routerId, else the node's IPv4 address) and route reflector cluster id (the
    /// file's, else this node's record) as configured now. The file's are the operator's own and checked when it is
    /// read; a bad cluster id in the node record is returned as a problem and ignored.</summary>
    private (uint RouterId, uint? ClusterId, string? Problem) Identity(ClusterSnapshot c)
    {
        string rid = _file.RouterId ?? Ipv4?.ToString() ?? throw new ConfigException("no router id: give an IPv4 address (--ipv4-address, ipv4Address, the node record's spec.bgp.ipv4Address) or routerId");
        uint routerId = ParseId(rid, "routerId");
        if (_file.RouteReflectorClusterId is { } fileCluster)
        {
            return (routerId, ParseId(fileCluster, "routeReflectorClusterID"), null);
        }
        if (c.Nodes.FirstOrDefault(n => n.Name == NodeName)?.ClusterId is not { } nodeCluster)
        {
            return (routerId, null, null);
        }
        try
        {
            return (routerId, SpeakerConfig.ParseRouterId(nodeCluster), null);
        }
        catch (FormatException e)
        {
            return (routerId, null, $"bgp.routeReflectorClusterID: {e.Message}; not a route reflector until it is fixed");
        }
    }

    private static uint ParseId(string text, string what)
    {
        try
        {
            return SpeakerConfig.ParseRouterId(text);
        }
        catch (FormatException e)
        {
            throw new ConfigException($"{what}: {e.Message}");
        }
    }

    /// <summary>AS number, router id, cluster id and listen address applied live: each change says in the log what it
    /// changed and which sessions it reset (see <see cref="BgpSpeaker.ChangeIdentity"/>); a new listen port or address
    /// resets none.</summary>
    private void ApplyIdentity(ClusterSnapshot c, List<ResourceProblem> problems)
    {
        (uint routerId, uint? cluster, string? problem) = Identity(c);
        if (problem is not null)
        {
            problems.Add(new ResourceProblem(Keys.Node(NodeName), problem));
        }
        SpeakerConfig now = Speaker.Config;
        uint asn = LocalAs;
        var changes = new List<string>();
        if (asn != now.LocalAs)
        {
            changes.Add($"AS {now.LocalAs} -> {asn}");
        }
        if (routerId != now.RouterId)
        {
            changes.Add($"router id {Dotted(now.RouterId)} -> {Dotted(routerId)}");
        }
        if (cluster != now.ClusterId)
        {
            changes.Add($"route reflector cluster id {(now.ClusterId is { } o ? Dotted(o) : "none")} -> {(cluster is { } n ? Dotted(n) : "none")}");
        }
        if (changes.Count > 0)
        {
            string what = string.Join(", ", changes);
            IReadOnlyList<BgpPeer> reset = Speaker.ChangeIdentity(asn, routerId, cluster, $"configuration changed: {what}");
            _log(BgpLogLevel.Info, $"node {NodeName}: {what}: " + (reset.Count == 0
                ? "no session needs a reset (reflected routes are sent again with the new cluster id)"
                : $"resetting {reset.Count} sessions ({string.Join(", ", reset.Select(p => p.Config.DisplayName))}): their OPEN carries it"));
        }
        IPEndPoint want = WantedListen(c);
        if (!want.Equals(_listenWanted))
        {
            try
            {
                ListenEndpoint = Speaker.Relisten(want);
                _log(BgpLogLevel.Info, $"node {NodeName}: now listening on {ListenEndpoint} (was {_listenWanted}); established sessions stay");
                _listenWanted = want;
            }
            catch (SocketException e)
            {
                problems.Add(new ResourceProblem(EtcdClusterSource.BgpConfigurations + "default", $"cannot listen on {want}: {e.Message}; still listening on {ListenEndpoint}"));
            }
        }
    }

    /// <summary>Calico's ippools <c>disableBGPExport</c>: nothing inside such a pool is advertised to any peer (the
    /// node still installs its blocks' blackholes and routes to the pool's other blocks). An export policy while
    /// there is such a pool; a change judges every advertised route again.</summary>
    private void ApplyNoExport(ClusterSnapshot c)
    {
        List<Prefix> noExport = [.. c.NoExportPools.Select(p => Prefix.Parse(p.ToString()))];
        if (noExport.SequenceEqual(_noExport))
        {
            return;
        }
        foreach (Prefix p in noExport.Except(_noExport))
        {
            _log(BgpLogLevel.Info, $"ippool {p}: disableBGPExport: nothing inside it is advertised");
        }
        foreach (Prefix p in _noExport.Except(noExport))
        {
            _log(BgpLogLevel.Info, $"ippool {p}: advertised again (disableBGPExport off or the pool removed)");
        }
        _noExport = noExport;
        Speaker.Export = noExport.Count == 0 ? null : NoExportPolicy;
        Speaker.Rib.Reexport();
    }

    private PolicyResult NoExportPolicy(BgpPeer? peer, Prefix prefix, ref PathAttributes attributes)
    {
        foreach (Prefix pool in _noExport)
        {
            if (pool.Contains(prefix))
            {
                return PolicyResult.Reject;
            }
        }
        return PolicyResult.Accept;
    }

    /// <summary>The default bgpconfiguration's prefixAdvertisements with their communities resolved; an entry with a
    /// bad CIDR or community is reported and left out whole, the others apply.</summary>
    private static List<CommunityRule> CommunityRules(ClusterSnapshot c, List<ResourceProblem> problems)
    {
        var rules = new List<CommunityRule>();
        foreach (PrefixAdvertisement pa in c.PrefixAdvertisements)
        {
            try
            {
                rules.Add(CommunityRule.Resolve(pa, c.CommunityNames));
            }
            catch (ConfigException e)
            {
                problems.Add(new ResourceProblem(EtcdClusterSource.BgpConfigurations + "default", e.Message));
            }
        }
        return rules;
    }

    private Dictionary<string, string> _problems = new(StringComparer.Ordinal);

    /// <summary>Logs each skipped record once (again when its reason changes), and when it applies again.</summary>
    private void Report(List<ResourceProblem> found)
    {
        var next = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (ResourceProblem p in found)
        {
            // Several problems of one record (two bad entries of a list) are all said, not only the first.
            next[p.Key] = next.TryGetValue(p.Key, out string? earlier) && earlier != p.Reason ? $"{earlier}; {p.Reason}" : p.Reason;
        }
        foreach ((string key, string reason) in next)
        {
            if (!_problems.TryGetValue(key, out string? had) || had != reason)
            {
                _log(BgpLogLevel.Error, $"etcd {key}: {reason}; this record is skipped, everything else applies");
            }
        }
        foreach (string key in _problems.Keys.Where(k => !next.ContainsKey(k)))
        {
            _log(BgpLogLevel.Info, $"etcd {key}: no longer skipped (fixed or removed)");
        }
        _problems = next;
        Problems = [.. next.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => new ResourceProblem(kv.Key, kv.Value))];
    }

    /// <summary>The peers this node should have: the file's, the bgppeers that select it, and the node mesh. A
    /// bgppeer that cannot be used (a bad address, selector, timer, password) goes into <paramref name="problems"/>
    /// and is left out; the others apply.</summary>
    internal List<PeerConfig> DesiredPeers(ClusterSnapshot c, List<ResourceProblem> problems)
    {
        var result = new List<PeerConfig>();
        var seen = new HashSet<IPAddress>();
        NodeInfo? me = c.Nodes.FirstOrDefault(n => n.Name == NodeName);
        IReadOnlyDictionary<string, string> myLabels = me?.Labels ?? new Dictionary<string, string>();
        bool iAmReflector = (_file.RouteReflectorClusterId ?? me?.ClusterId) is not null;
        void Add(PeerConfig p)
        {
            if (!p.Address.Equals(Ipv4) && !p.Address.Equals(Ipv6) && seen.Add(p.Address))
            {
                result.Add(p);
            }
        }
        foreach (PeerSpec spec in _file.Peers)
        {
            Add(ToPeerConfig(spec));
        }
        foreach (PeerResource r in c.Peers)
        {
            try
            {
                AddResource(r);
            }
            catch (Exception e) when (e is ConfigException or IpamException or FormatException or ArgumentException)
            {
                problems.Add(new ResourceProblem(EtcdClusterSource.BgpPeers + r.Name, e.Message));
            }
        }
        void AddResource(PeerResource r)
        {
            bool Selected(string name, IReadOnlyDictionary<string, string> labels) => r.Node is not null ? r.Node == name
                : r.NodeSelector is null || Selector.Parse(r.NodeSelector).Matches(labels);
            // Between two nodes, as in the mesh, only the one with the lower address connects.
            (string, uint, bool, bool) ToNode(NodeInfo n) => (n.Ipv4!.ToString(), n.AsNumber ?? c.AsNumber ?? 64512, iAmReflector && n.ClusterId is null,
                Ipv4 is not null && Compare(Ipv4, n.Ipv4!) > 0);
            var targets = new List<(string Ip, uint As, bool Client, bool Passive)>();
            if (r.PeerSelector is null && r.PeerIP is null)
            {
                throw new ConfigException("bgppeer has neither peerIP nor peerSelector");
            }
            if (r.PeerSelector is null && r.AsNumber == 0)
            {
                throw new ConfigException($"bgppeer {r.Name}: peerIP {r.PeerIP} without asNumber");
            }
            if (Selected(NodeName, myLabels))
            {
                targets.AddRange(r.PeerSelector is { } sel
                    ? c.Nodes.Where(n => n.Name != NodeName && n.Ipv4 is not null && Selector.Parse(sel).Matches(n.Labels)).Select(ToNode)
                    : [(r.PeerIP!, r.AsNumber, false, false)]);
            }
            // The other end: a bgppeer whose peerSelector picks this node makes the nodes it applies to peers of
            // this node too (Calico configures both ends, e.g. route reflectors and their clients).
            if (r.PeerSelector is { } mine && Selector.Parse(mine).Matches(myLabels))
            {
                targets.AddRange(c.Nodes.Where(n => n.Name != NodeName && n.Ipv4 is not null && Selected(n.Name, n.Labels)).Select(ToNode));
            }
            string? password = r.Password;
            if (r.PasswordSecret is { } secret && targets.Count > 0 && (password = ReadSecret(secret, r.Name)) is null)
            {
                return; // without its password the session could not come up; ReadSecret said why
            }
            // Every target converted before any is added: a bgppeer applies whole or not at all.
            List<PeerConfig> configs = [.. targets.Select(t => ToPeerConfig(new PeerSpec
            {
                Name = r.Name,
                PeerIP = t.Ip,
                AsNumber = t.As,
                KeepaliveTime = r.KeepaliveTime,
                MaxRestartTime = r.MaxRestartTime,
                Password = password,
                TtlSecurity = r.TtlSecurity,
                SourceAddress = r.SourceAddress,
                RouteReflectorClient = t.Client,
                Passive = t.Passive,
                MaxPrefixes = EtcdPeerMaxPrefixes,
            }))];
            configs.ForEach(Add);
        }
        if (c.NodeToNodeMesh ?? (c.Nodes.Count > 0 && _cluster is not null))
        {
            foreach (NodeInfo n in c.Nodes.Where(n => n.Name != NodeName && n.Ipv4 is not null && Ipv4 is not null))
            {
                // One side connects: the node with the lower address; the other waits (Calico's mesh is symmetric,
                // BGP's collision resolution would sort out two connections, one is cheaper).
                bool passive = Compare(Ipv4!, n.Ipv4!) > 0;
                Add(ToPeerConfig(new PeerSpec
                {
                    Name = $"mesh-{n.Name}",
                    PeerIP = n.Ipv4!.ToString(),
                    AsNumber = n.AsNumber ?? c.AsNumber ?? 64512,
                    Passive = passive,
                    RouteReflectorClient = iAmReflector && n.ClusterId is null,
                    MaxPrefixes = EtcdPeerMaxPrefixes,
                }));
            }
        }
        return result;
    }

    private readonly HashSet<string> _secretWarnings = [];

    /// <summary>The password a secretKeyRef names (the file's text, without a trailing newline), or null, logged once
    /// per problem.</summary>
    private string? ReadSecret(SecretRef secret, string peer)
    {
        string? problem = null;
        string path = Path.Combine(_options.SecretsDirectory, secret.Name, secret.Key);
        if (!SecretRef.IsValidPart(secret.Name) || !SecretRef.IsValidPart(secret.Key))
        {
            problem = $"bgppeer {peer}: password secretKeyRef {{name: '{secret.Name}', key: '{secret.Key}'}} is not a valid secret name and key";
        }
        else
        {
            try
            {
                string text = File.ReadAllText(path).TrimEnd('\r', '\n');
                if (text.Length is > 0 and <= 80)
                {
                    _secretWarnings.RemoveWhere(w => w.StartsWith($"bgppeer {peer}:", StringComparison.Ordinal));
                    return text;
                }
                problem = $"bgppeer {peer}: the password in {path} must be 1 to 80 characters (TCP MD5), not {text.Length}";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                problem = $"bgppeer {peer}: cannot read its password from {path}: {e.Message}";
            }
        }
        if (_secretWarnings.Add(problem))
        {
            _log(BgpLogLevel.Error, problem + "; the peer is left out until it can be read");
        }
        return null;
    }

    private static int Compare(IPAddress a, IPAddress b) => a.GetAddressBytes().AsSpan().SequenceCompareTo(b.GetAddressBytes());

    private void ApplyPeers(List<PeerConfig> desired)
    {
        var next = new Dictionary<IPAddress, (PeerConfig, string)>();
        foreach (PeerConfig p in desired)
        {
            next[p.Address] = (p, Key(p));
        }
        foreach ((IPAddress addr, (PeerConfig _, string key)) in _peerKeys)
        {
            if (!next.TryGetValue(addr, out (PeerConfig Config, string Key) n) || n.Key != key)
            {
                if (Speaker.FindPeer(addr) is { } old)
                {
                    _log(BgpLogLevel.Info, $"peer {old.Config.DisplayName}: {(next.ContainsKey(addr) ? "configuration changed" : "no longer configured")}");
                    Speaker.RemovePeer(old, next.ContainsKey(addr) ? "configuration changed" : "peer removed from the configuration");
                    if (!next.ContainsKey(addr))
                    {
                        ReleaseKernelFamilies(_eorWait.Remove(addr), $"peer {old.Config.DisplayName} is no longer configured");
                    }
                }
            }
        }
        foreach ((IPAddress addr, (PeerConfig config, string key)) in next)
        {
            if (_peerKeys.TryGetValue(addr, out (PeerConfig Config, string Key) same) && same.Key == key && Speaker.FindPeer(addr) is { } live
                && SoftKey(same.Config) != SoftKey(config))
            {
                Speaker.UpdatePeer(live, config);
                _log(BgpLogLevel.Info, $"peer {config.DisplayName}: {SoftKey(same.Config)} -> {SoftKey(config)}, applied without a session reset");
                continue;
            }
            if (!_peerKeys.TryGetValue(addr, out (PeerConfig Config, string Key) have) || have.Key != key || Speaker.FindPeer(addr) is null)
            {
                Speaker.AddPeer(config);
                _eorWait.Add(config.Address, config.Families);
                _log(BgpLogLevel.Info, $"peer {config.DisplayName}: configured (AS {config.RemoteAs}{(config.Passive ? ", passive" : "")}{(config.RouteReflectorClient ? ", route reflector client" : "")})");
            }
        }
        _peerKeys = next;
    }

    /// <summary>What a session is made with: a change resets it.</summary>
    private static string Key(PeerConfig p) =>
        $"{p.Address}|{p.Port}|{p.RemoteAs}|{p.LocalAddress}|{p.LocalAddressOtherFamily}|{p.HoldTime}|{p.KeepaliveTime}|{p.Passive}|{p.MaxPrefixes}|{p.GracefulRestart}|{SocketOptions.Describe(p)}";

    /// <summary>What applies to a running session (<see cref="BgpSpeaker.UpdatePeer"/>).</summary>
    private static string SoftKey(PeerConfig p) =>
        $"maxRestartTime {(p.MaxRestartTime is { } m ? $"{m.TotalSeconds:0} s" : "none")}, {(p.RouteReflectorClient ? "" : "not ")}a route reflector client, next hop self {(p.NextHopSelf ? "on" : "off")}";

    private void OnEndOfRib(BgpPeer peer, Afi family) =>
        ReleaseKernelFamilies(_eorWait.EndOfRib(peer.Config.Address, family, [.. peer.Families]), "every peer has sent End-of-RIB");

    /// <summary>After a restart, the kernel routes of a family left by the previous run stay until every peer has sent
    /// that family's End-of-RIB (RFC 4724 §4.1); then those no peer sent again go.</summary>
    private void ReleaseKernelFamilies(IReadOnlyList<Afi> families, string why)
    {
        foreach (Afi f in families)
        {
            if (_kernel is not null && _kernel.StaleFamilies.Contains(f))
            {
                _log(BgpLogLevel.Info, $"kernel: {why} for {f}, removing {f} routes no peer sent again");
                _kernel.ReleaseStale(f);
            }
        }
    }

    /// <summary>Only prefixes inside the IP pools are accepted (unless the file says "all"): a peer announcing a
    /// default route or foreign prefixes must not capture this node's traffic. Never, whatever the file says, a
    /// prefix inside this node's own blocks or an address it borrowed: those are its own pods.</summary>
    private PolicyResult ImportPolicy(BgpPeer? peer, Prefix prefix, ref PathAttributes attributes)
    {
        if (_local.Refuse(peer, prefix))
        {
            return PolicyResult.Reject;
        }
        foreach ((Prefix range, string _) in _serviceRanges)
        {
            if (peer is not null && range.Contains(prefix))
            {
                ServiceRoutesRefused++;
                return PolicyResult.Reject;
            }
        }
        if (_file.Import == "all")
        {
            return PolicyResult.Accept;
        }
        foreach (Prefix pool in _pools)
        {
            if (pool.Contains(prefix))
            {
                return PolicyResult.Accept;
            }
        }
        return PolicyResult.Reject;
    }

    private void OnBestChanged(IReadOnlyList<RouteEntry> changed)
    {
        if (_kernel is null)
        {
            return;
        }
        foreach (RouteEntry e in changed)
        {
            _kernel.Set(e.Prefix, KernelRouteFor(e));
        }
        _kernel.Flush();
    }

    /// <summary>Own blocks are blackholes; a borrowed /32 needs nothing (the CNI plugin's route serves it);
    /// learned prefixes go via their best next hop(s).</summary>
    internal KernelRoute? KernelRouteFor(RouteEntry e)
    {
        if (e.Best is not { } best)
        {
            return null;
        }
        if (best.IsLocal)
        {
            // A service range is only advertised: kube-proxy's rules take its traffic before routing, and a blackhole
            // would break the node's own connections to addresses of the range.
            if (_serviceAdvertised.Contains(e.Prefix))
            {
                return null;
            }
            return e.Prefix.Length == e.Prefix.MaxLength ? null : KernelRoute.Drop;
        }
        var hops = new List<IPAddress>();
        foreach (RoutePath p in e.Multipath)
        {
            Prefix nh = p.Attributes.NextHop;
            if (nh.Family == e.Prefix.Family && !nh.Address.Equals(Ipv4) && !nh.Address.Equals(Ipv6) && !hops.Contains(nh.Address))
            {
                hops.Add(nh.Address);
            }
        }
        return hops.Count == 0 ? null : new KernelRoute(false, hops);
    }

    public PeerConfig ToPeerConfig(PeerSpec spec) => ToPeerConfig(spec, _file);

    private PeerConfig ToPeerConfig(PeerSpec spec, DaemonConfig file)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (string.IsNullOrEmpty(spec.PeerIP))
        {
            throw new ConfigException("a peer without peerIP");
        }
        (IPAddress address, int? port) = DaemonConfig.ParsePeerAddress(spec.PeerIP, "peerIP");
        if (spec.AsNumber == 0)
        {
            throw new ConfigException($"peer {spec.PeerIP}: asNumber is missing");
        }
        bool v4 = address.AddressFamily == AddressFamily.InterNetwork;
        // Calico's sourceAddress: "UseNodeIP" (the default) binds the session to the node's address of the peer's
        // family; "None" leaves the source to the kernel, the address of the interface toward the peer (a node
        // whose uplinks are on different subnets: bound to the node's address, a session to the ToR of another
        // link sends from an address that ToR has no route back to). The file may name an address.
        IPAddress? source = spec.SourceAddress switch
        {
            null or "" or "UseNodeIP" => v4 ? Ipv4 : Ipv6,
            "None" => null,
            string a => DaemonConfig.ParseAddress(a, $"peer {spec.PeerIP} sourceAddress"),
        };
        ushort hold = file.HoldTime ?? 90;
        if (spec.HoldTime is { } h)
        {
            hold = DaemonConfig.ParseSeconds(h, $"peer {spec.PeerIP} holdTime", 0, ushort.MaxValue);
        }
        ushort? keepalive = spec.KeepaliveTime is { } k ? DaemonConfig.ParseSeconds(k, $"peer {spec.PeerIP} keepaliveTime", 0, ushort.MaxValue) : null;
        // Calico's maxRestartTime: here the cap on how long the peer's routes are kept while it restarts.
        ushort? maxRestart = spec.MaxRestartTime is { } mr ? DaemonConfig.ParseSeconds(mr, $"peer {spec.PeerIP} maxRestartTime", 0, ushort.MaxValue) : null;
        if (spec.TtlSecurity is < 0 or > 254)
        {
            throw new ConfigException($"peer {spec.PeerIP}: ttlSecurity {spec.TtlSecurity} (0-254 hops)");
        }
        var config = new PeerConfig
        {
            Address = address,
            Port = port ?? 179,
            RemoteAs = spec.AsNumber,
            Name = spec.Name,
            LocalAddress = source,
            LocalAddressOtherFamily = v4 ? Ipv6 : Ipv4,
            HoldTime = hold,
            KeepaliveTime = keepalive,
            Passive = spec.Passive,
            RouteReflectorClient = spec.RouteReflectorClient,
            NextHopSelf = spec.NextHopSelf,
            MaxPrefixes = spec.MaxPrefixes,
            Families = [Afi.IPv4, Afi.IPv6],
            Password = spec.Password,
            TtlSecurityHops = spec.TtlSecurity ?? 0,
            MaxRestartTime = maxRestart is { } m ? TimeSpan.FromSeconds(m) : null,
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new ConfigException(e.Message);
        }
        return config;
    }

    /// <summary>A planned stop. With <paramref name="restarting"/> (SIGTERM: a service restart, an upgrade), sessions
    /// with graceful restart on both ends close without a NOTIFICATION, so those peers keep our routes until we are
    /// back (RFC 4724); the others, and every session when bgpd stops for good (SIGINT), get a Cease and withdraw our
    /// routes at once. Kernel routes are left in place either way: the node keeps forwarding, and a new run finds and
    /// keeps them while sessions come back.</summary>
    public async Task StopAsync(string reason, bool restarting = false)
    {
        await _cts.CancelAsync().ConfigureAwait(false);
        foreach (Task? t in new[] { _loop, _watch })
        {
            if (t is not null)
            {
                await t.ConfigureAwait(false);
            }
        }
        // Closing the sessions takes the peers' paths out of the RIB; the kernel keeps its routes (see above).
        await Speaker.InvokeAsync(() => { Speaker.Rib.BestChanged -= OnBestChanged; Bfd?.Stop(); }).ConfigureAwait(false);
        await Speaker.StopAsync(reason, TimeSpan.FromMilliseconds(300), restarting).ConfigureAwait(false);
        // natOutgoing: a restart keeps the table (pods keep reaching the outside meanwhile); stopping for good removes it.
        if (!restarting)
        {
            _nat?.Remove();
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_cts.IsCancellationRequested)
        {
            await _cts.CancelAsync().ConfigureAwait(false);
        }
        if (Speaker is not null)
        {
            await Speaker.DisposeAsync().ConfigureAwait(false);
        }
        Bfd?.Dispose();
        _etcd?.Dispose();
        _kernel?.Dispose();
        _ownRouteTable?.Dispose();
        _wake.Dispose();
        _cts.Dispose();
    }
}
