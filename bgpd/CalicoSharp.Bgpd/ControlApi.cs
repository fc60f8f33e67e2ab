using System.Globalization;
using System.Net;
using System.Text;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;
using CalicoSharp.Proto;
using CalicoSharp.Rpc;
using CalicoSharp.ServiceNat;
using Grpc.Core;
using KernelRouteEntry = CalicoSharp.Netlink.Route;
using Route = CalicoSharp.Proto.Route;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The control API (gRPC over HTTP/2 on a Unix socket, CalicoSharp.Rpc's server) and the Prometheus
/// metrics endpoint (HTTP/1.1 on a TCP address).
/// </summary>
public sealed class ControlApi : IAsyncDisposable
{
    public const string DefaultSocket = Proto.ControlSocket.Default;

    private readonly GrpcServer? _grpc;
    private readonly MetricsEndpoint? _metrics;
    private readonly NodeIpamService? _nodeIpam;

    private ControlApi(GrpcServer? grpc, MetricsEndpoint? metrics, NodeIpamService? nodeIpam)
    {
        _grpc = grpc;
        _metrics = metrics;
        _nodeIpam = nodeIpam;
    }

    /// <summary>Where the metrics endpoint listens (its port when 0 was asked for), if it is on.</summary>
    public IPEndPoint? MetricsEndPoint => _metrics?.LocalEndPoint;

    public static async Task<ControlApi> StartAsync(Daemon daemon, string? socketPath, string? metricsAddress, Action<BgpLogLevel, string>? log = null)
    {
        ArgumentNullException.ThrowIfNull(daemon);
        IPEndPoint? metricsEndpoint = null;
        if (!string.IsNullOrEmpty(metricsAddress) && (!IPEndPoint.TryParse(metricsAddress, out metricsEndpoint) || metricsEndpoint.Port == 0 && !metricsAddress.EndsWith(":0", StringComparison.Ordinal)))
        {
            throw new ConfigException($"--metrics-address '{metricsAddress}' is not address:port");
        }

        GrpcServer? grpc = null;
        MetricsEndpoint? metrics = null;
        NodeIpamService? nodeIpam = null;
        try
        {
            if (!string.IsNullOrEmpty(socketPath))
            {
                grpc = new GrpcServer(new GrpcServerOptions
                {
                    OnHandlerError = (method, e) => log?.Invoke(BgpLogLevel.Error, $"control API {method} failed: {e}"),
                });
                grpc.AddService(b => Proto.Bgpd.BindService(b, new BgpdService(daemon)));
                if (daemon.Ipam is { } ipam)
                {
                    nodeIpam = new NodeIpamService(ipam, daemon.NodeName, log ?? ((_, _) => { }));
                    grpc.AddService(b => Proto.NodeIpam.BindService(b, nodeIpam));
                }

                // Root and its group only: the socket shows the node's routing state and allocates its addresses.
                grpc.ListenUnixSocket(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
            }

            if (metricsEndpoint is not null)
            {
                metrics = MetricsEndpoint.Start(metricsEndpoint, () => Metrics.RenderAsync(daemon));
            }
        }
        catch
        {
            // Nothing half-started stays behind: the socket file goes before the error is reported.
            if (grpc is not null)
            {
                await grpc.DisposeAsync().ConfigureAwait(false);
            }

            nodeIpam?.Dispose();
            throw;
        }

        return new ControlApi(grpc, metrics, nodeIpam);
    }

    public async ValueTask DisposeAsync()
    {
        if (_grpc is not null)
        {
            await _grpc.DisposeAsync().ConfigureAwait(false);
        }

        if (_metrics is not null)
        {
            await _metrics.DisposeAsync().ConfigureAwait(false);
        }

        // After the server: no call can be waiting for its turn any more.
        _nodeIpam?.Dispose();
    }
}

/// <summary>The gRPC service; every read of speaker state runs on the speaker's loop.</summary>
internal sealed class BgpdService : Proto.Bgpd.BgpdBase
{
    private readonly Daemon _d;

    public BgpdService(Daemon daemon)
    {
        _d = daemon;
    }

    public override Task<NodeStatus> GetStatus(StatusRequest request, ServerCallContext context) => _d.Speaker.InvokeAsync(() =>
    {
        var s = new NodeStatus
        {
            NodeName = _d.NodeName,
            RouterId = Dotted(_d.Speaker.Config.RouterId),
            AsNumber = _d.Speaker.Config.LocalAs,
            StartedUnixMs = _d.StartedAt.ToUnixTimeMilliseconds(),
            Routes = _d.Speaker.Rib.Count,
            EtcdConfigured = _d.EtcdConfigured,
            EtcdError = _d.LastEtcdError ?? "",
            EtcdLastReadUnixMs = _d.LastEtcdRead?.ToUnixTimeMilliseconds() ?? 0,
            KernelOperations = _d.Kernel?.Operations ?? 0,
            KernelErrors = _d.Kernel?.Errors ?? 0,
            KernelKeepingStale = _d.Kernel?.KeepingStale ?? false,
            Version = typeof(Daemon).Assembly.GetName().Version?.ToString() ?? "",
        };
        s.OwnBlocks.AddRange(_d.OwnBlocks.Select(b => b.ToString()).Order(StringComparer.Ordinal));
        s.Skipped.AddRange(_d.Problems.Select(p => new SkippedResource { Key = p.Key, Reason = p.Reason }));
        s.ApplyErrors = _d.ApplyErrors;
        if (_d.NatOutgoing is { } nat)
        {
            s.NatOutgoing = new NatOutgoingStatus
            {
                Programmed = nat.Programmed,
                Error = nat.Error ?? "",
                Updates = nat.Updates,
                Errors = nat.Errors,
                LastProgramMs = nat.LastProgramMs,
                Table = NatOutgoingRules.QualifiedName,
            };
            s.NatOutgoing.MasqueradePools.AddRange(nat.MasqueradePools);
            s.NatOutgoing.AllPools.AddRange(nat.AllPools);
        }
        s.ServiceRanges.AddRange(_d.ServiceAdvertised.Select(r => new ServiceRangeStatus { Cidr = r.Prefix.ToString(), Kind = r.Kind }));
        s.ServiceRoutesRefused = _d.ServiceRoutesRefused;
        return s;
    });

    public override Task<PeersReply> ListPeers(PeersRequest request, ServerCallContext context) => _d.Speaker.InvokeAsync(() =>
    {
        var r = new PeersReply();
        foreach (BgpPeer p in _d.Speaker.Peers)
        {
            r.Peers.Add(new Proto.Peer
            {
                Name = p.Config.DisplayName,
                Address = p.Config.Address.ToString(),
                AsNumber = p.Config.RemoteAs,
                Type = (p.IsEbgp ? "eBGP" : "iBGP") + (p.Config.RouteReflectorClient ? " (route reflector client)" : ""),
                State = p.State.ToString(),
                StateSinceUnixMs = p.StateChangedAt.ToUnixTimeMilliseconds(),
                LastError = p.LastError ?? "",
                PrefixesReceived = p.PrefixesReceived,
                PrefixesAccepted = p.PrefixesAccepted,
                PrefixesRefused = p.PrefixesRefused,
                PrefixesAdvertised = p.PrefixesAdvertised,
                UpdatesReceived = p.UpdatesReceived,
                UpdatesSent = p.UpdatesSent,
                HoldTime = (uint)p.NegotiatedHoldTime.TotalSeconds,
                RouterId = p.RemoteOpen?.RouterId.ToString() ?? "",
                RoutesStale = p.RoutesStale,
                Bfd = _d.Bfd?.Describe(p.Config.Address),
            });
        }
        return r;
    });

    public override Task<RoutesReply> ListRoutes(RoutesRequest request, ServerCallContext context)
    {
        string filter = request.Prefix.Trim();
        Prefix? exact = null;
        IPAddress? address = null;
        if (filter.Length > 0)
        {
            if (filter.Contains('/', StringComparison.Ordinal))
            {
                exact = Prefix.TryParse(filter, out Prefix p) ? p : throw new RpcException(new Status(StatusCode.InvalidArgument, $"'{filter}' is not a prefix"));
            }
            else
            {
                address = IPAddress.TryParse(filter, out IPAddress? a) ? a : throw new RpcException(new Status(StatusCode.InvalidArgument, $"'{filter}' is not a prefix or an address"));
            }
        }
        return _d.Speaker.InvokeAsync(() =>
        {
            var r = new RoutesReply();
            IEnumerable<RouteEntry> entries = exact is { } e ? (_d.Speaker.Rib.Find(e) is { } one ? [one] : [])
                : address is not null ? (_d.Speaker.Rib.LongestMatch(address) is { } lm ? [lm] : [])
                : _d.Speaker.Rib.Entries.OrderBy(x => x.Prefix);
            foreach (RouteEntry entry in entries)
            {
                r.Routes.Add(ToRoute(_d, entry));
            }
            return r;
        });
    }

    /// <summary>A BGP identifier (host order) as a dotted quad.</summary>
    private static string Dotted(uint id) => new IPAddress(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(id)).ToString();

    internal static Route ToRoute(Daemon d, RouteEntry entry)
    {
        var route = new Route
        {
            Prefix = entry.Prefix.ToString(),
            Reason = Decision.Describe(entry.Reason),
            Kernel = d.KernelRouteFor(entry)?.ToString() ?? "",
        };
        IReadOnlyList<RoutePath> multipath = entry.Multipath;
        for (int i = 0; i < entry.PathCount; i++)
        {
            RoutePath p = entry.PathAt(i);
            PathAttributes a = p.Attributes;
            var path = new Proto.Path
            {
                Peer = p.Peer?.Config.DisplayName ?? "local",
                PeerAddress = p.Peer?.Config.Address.ToString() ?? "",
                AsPath = a.AsPath.ToString(),
                NextHop = a.HasNextHop ? a.NextHop.Address.ToString() : "",
                LocalPref = a.LocalPref ?? Decision.DefaultLocalPref,
                HasMed = a.Med is not null,
                Med = a.Med ?? 0,
                Origin = a.Origin.ToString().ToLowerInvariant(),
                Best = i == 0,
                Multipath = multipath.Any(m => m.Peer == p.Peer),
                Stale = p.Stale,
                OriginatorId = a.OriginatorId is { } o ? Dotted(o) : "",
            };
            path.Communities.AddRange(a.Communities.Select(c => $"{c >> 16}:{c & 0xFFFF}"));
            route.Paths.Add(path);
        }
        return route;
    }

    public override Task<ServiceLookupReply> LookupService(ServiceLookupRequest request, ServerCallContext context) => Task.Run(() =>
    {
        INatContext? ctx = null;
        INatContext Context() => ctx ??= new ServiceLookup.KernelContext();
        IPAddress? self = IPAddress.TryParse(request.Address, out IPAddress? a) ? ServiceLookup.NodeAddress(_d.Speaker.Config.RouterId, a.AddressFamily, Context()) : null;
        return ServiceLookup.Answer(request, _d.NodeName, ServiceLookup.Run, Context, self);
    });

    public override async Task<LookupReply> Lookup(LookupRequest request, ServerCallContext context)
    {
        if (!IPAddress.TryParse(request.Address, out IPAddress? address))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"'{request.Address}' is not an IP address"));
        }
        var reply = new LookupReply { Address = address.ToString(), NodeName = _d.NodeName };
        using (RtNetlink nl = RtNetlink.Open())
        {
            if (request.PodNamespace.Length > 0 || request.ContainerId.Length > 0)
            {
                string name = HostInterface.Name(request.PodNamespace, request.PodName, request.ContainerId);
                Link? link = nl.GetLink(name);
                reply.PodInterface = new PodInterface
                {
                    Name = name,
                    Exists = link is not null,
                    Up = link is not null && (link.Flags & Rt.IFF_UP) != 0,
                    LowerUp = link is not null && (link.Flags & Rt.IFF_LOWER_UP) != 0,
                    Index = link?.Index ?? 0,
                    Mtu = link?.Mtu ?? 0,
                    Mac = link?.Mac is { } mac ? string.Join(':', mac.GetAddressBytes().Select(b => b.ToString("x2", CultureInfo.InvariantCulture))) : "",
                };
            }
            KernelRouteEntry? r = nl.MatchRoute(address);
            if (r is not null)
            {
                reply.HasKernelRoute = true;
                reply.KernelDestination = $"{r.Destination}/{r.PrefixLength}";
                reply.KernelType = r.Type switch { Rt.RTN_BLACKHOLE => "blackhole", Rt.RTN_UNICAST => "unicast", Rt.RTN_LOCAL => "local", Rt.RTN_UNREACHABLE => "unreachable", Rt.RTN_PROHIBIT => "prohibit", _ => $"type {r.Type}" };
                IPAddress? gw = r.Gateway ?? r.MultiPath.FirstOrDefault()?.Gateway;
                reply.KernelGateway = r.MultiPath.Count > 1 ? string.Join(", ", r.MultiPath.Select(n => n.Gateway)) : gw?.ToString() ?? "";
                int dev = r.OutIndex != 0 ? r.OutIndex : r.MultiPath.FirstOrDefault()?.OutIndex ?? 0;
                reply.KernelDevice = dev != 0 ? nl.GetLink(dev)?.Name ?? $"#{dev}" : "";
                reply.KernelProtocol = r.Protocol;
                reply.KernelProtocolName = r.Protocol switch
                {
                    KernelRouteSync.Protocol => "calicosharp (bgpd)",
                    Rt.RTPROT_KERNEL => "kernel",
                    Rt.RTPROT_BOOT => "boot (the CNI plugin, or configured)",
                    Rt.RTPROT_STATIC => "static",
                    _ => r.Protocol.ToString(CultureInfo.InvariantCulture),
                };
            }
        }
        Route? bgp = await _d.Speaker.InvokeAsync(() => _d.Speaker.Rib.LongestMatch(address) is { } e ? ToRoute(_d, e) : null).ConfigureAwait(false);
        if (bgp is not null)
        {
            reply.BgpRoute = bgp;
            reply.HasBgpRoute = true;
        }
        return reply;
    }
}

/// <summary>Prometheus text exposition of the daemon's state.</summary>
internal static class Metrics
{
    /// <summary>
    /// Prometheus text exposition format ("Text format details", label values): a label value may hold any UTF-8, but
    /// backslash, double quote and line feed are written \\, \" and \n. Peer names come from etcd and config files,
    /// so without this one name could break the line or forge samples.
    /// </summary>
    public static string EscapeLabelValue(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        if (value.AsSpan().IndexOfAny('\\', '"', '\n') < 0)
        {
            return value;
        }
        var sb = new StringBuilder(value.Length + 8);
        foreach (char c in value)
        {
            switch (c)
            {
                case '\\':
                    sb.Append(@"\\");
                    break;
                case '"':
                    sb.Append(@"\""");
                    break;
                case '\n':
                    sb.Append(@"\n");
                    break;
                default:
                    sb.Append(c);
                    break;
            }
        }
        return sb.ToString();
    }

    public static Task<string> RenderAsync(Daemon d) => d.Speaker.InvokeAsync(() =>
    {
        var sb = new StringBuilder();
        void Metric(string name, string type, string help)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
        }
        string Label(BgpPeer p) => $"peer=\"{EscapeLabelValue(p.Config.Address.ToString())}\",name=\"{EscapeLabelValue(p.Config.DisplayName)}\"";
        Metric("calicosharp_bgp_sessions", "gauge", "BGP sessions by state.");
        foreach (SessionState s in Enum.GetValues<SessionState>())
        {
            sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bgp_sessions{{state=\"{EscapeLabelValue(s.ToString())}\"}} {d.Speaker.Peers.Count(p => p.State == s)}\n");
        }
        void PerPeer(string name, string type, string help, Func<BgpPeer, long> value)
        {
            Metric(name, type, help);
            foreach (BgpPeer p in d.Speaker.Peers)
            {
                sb.Append(CultureInfo.InvariantCulture, $"{name}{{{Label(p)}}} {value(p)}\n");
            }
        }
        PerPeer("calicosharp_bgp_peer_up", "gauge", "1 when the session with the peer is established.", p => p.State == SessionState.Established ? 1 : 0);
        PerPeer("calicosharp_bgp_prefixes_received_total", "counter", "Prefix announcements received from the peer in the current session, before import policy (re-announcements count again).", p => p.PrefixesReceived);
        PerPeer("calicosharp_bgp_prefixes_refused_total", "counter", "Prefix announcements from the peer in the current session that were not stored: refused by import policy, or unusable.", p => p.PrefixesRefused);
        PerPeer("calicosharp_bgp_prefixes_accepted", "gauge", "The peer's routes in the RIB (accepted by import policy; what maxPrefixes limits).", p => p.PrefixesAccepted);
        PerPeer("calicosharp_bgp_prefixes_advertised", "gauge", "Prefixes advertised to the peer (Adj-RIB-Out).", p => p.PrefixesAdvertised);
        PerPeer("calicosharp_bgp_updates_received_total", "counter", "UPDATE messages received in the current session.", p => p.UpdatesReceived);
        PerPeer("calicosharp_bgp_updates_sent_total", "counter", "UPDATE messages sent in the current session.", p => p.UpdatesSent);
        void Value(string name, string type, string help, FormattableString value)
        {
            Metric(name, type, help);
            sb.Append(name).Append(' ').Append(FormattableString.Invariant(value)).Append('\n');
        }
        Value("calicosharp_bgp_rib_routes", "gauge", "Prefixes in the RIB.", $"{d.Speaker.Rib.Count}");
        Value("calicosharp_kernel_route_operations_total", "counter", "Kernel route replaces and deletes.", $"{d.Kernel?.Operations ?? 0}");
        Value("calicosharp_kernel_route_errors_total", "counter", "Kernel route operations that failed.", $"{d.Kernel?.Errors ?? 0}");
        Value("calicosharp_bgp_local_prefixes_refused_total", "counter", "Announcements from peers refused because the prefix is inside a block affine to this node or an address it borrowed.",
            $"{d.LocalPrefixesRefused}");
        Value("calicosharp_kernel_routes_left_to_others", "gauge", "Learned prefixes not installed because a route bgpd did not install (a pod's, a static one) holds their place.",
            $"{d.Kernel?.ForeignRoutesLeft ?? 0}");
        Value("calicosharp_etcd_up", "gauge", "1 when the last etcd read succeeded (0 without etcd or after an error).", $"{(d.EtcdConfigured && d.LastEtcdError is null ? 1 : 0)}");
        Value("calicosharp_etcd_watch_up", "gauge", "1 while the etcd watch is open (changes apply at once; else at the next poll).", $"{(d.WatchUp ? 1 : 0)}");
        Value("calicosharp_etcd_watch_restarts_total", "counter", "Times the etcd watch broke and was opened again.", $"{d.WatchRestarts}");
        Value("calicosharp_etcd_errors_total", "counter", "Failed etcd reads.", $"{d.EtcdErrors}");
        Value("calicosharp_config_skipped_resources", "gauge", "Records in etcd that bgpd skips as unusable (node status names them).", $"{d.Problems.Count}");
        Value("calicosharp_config_apply_errors_total", "counter", "Times applying the configuration or reconciling the kernel failed as a whole.", $"{d.ApplyErrors}");
        Value("calicosharp_etcd_last_read_age_seconds", "gauge", "Seconds since the last successful etcd read.",
            $"{(d.LastEtcdRead is { } t ? (DateTimeOffset.UtcNow - t).TotalSeconds : -1):0.###}");
        if (d.NatOutgoing is { } nat)
        {
            Value("calicosharp_nat_outgoing_programmed", "gauge", "1 while bgpd's nftables table inet calicosharp masquerades some pool (ippools natOutgoing).", $"{(nat.Programmed ? 1 : 0)}");
            Value("calicosharp_nat_outgoing_pools", "gauge", "Pools whose pods are masqueraded toward addresses outside every pool.", $"{nat.MasqueradePools.Count}");
            Value("calicosharp_nat_outgoing_updates_total", "counter", "Times the natOutgoing table was replaced (or removed).", $"{nat.Updates}");
            Value("calicosharp_nat_outgoing_errors_total", "counter", "Times programming the natOutgoing table failed (node status says why).", $"{nat.Errors}");
            Value("calicosharp_nat_outgoing_last_program_seconds", "gauge", "How long the last nft transaction for the natOutgoing table took.", $"{nat.LastProgramMs / 1000:0.######}");
        }
        Value("calicosharp_service_ranges_advertised", "gauge", "Service ranges (bgpconfigurations serviceClusterIPs, serviceExternalIPs, serviceLoadBalancerIPs) this node advertises.",
            $"{d.ServiceAdvertised.Count}");
        Value("calicosharp_service_routes_refused_total", "counter", "Routes from peers inside a service range, refused (never installed into the kernel).", $"{d.ServiceRoutesRefused}");
        d.Bfd?.RenderMetrics(sb, Metric);
        ProcessMetrics.Render(sb, Metric);
        return sb.ToString();
    });
}
