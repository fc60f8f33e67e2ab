using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Text.Json;
using CalicoSharp.Bgp;
using CalicoSharp.Bgp.Bfd;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd;

/// <summary>One <c>interfaces</c> entry of a BFDConfiguration: the interfaces it matches and their timers.</summary>
public sealed record BfdInterface(string MatchPattern, BfdTimers Timers)
{
    /// <summary>Calico Enterprise's patterns: an exact name, a prefix with '*' ("eth*"), or "*" for every interface.</summary>
    public bool Matches(string? interfaceName) => interfaceName is not null && Glob(MatchPattern, interfaceName);

    private static bool Glob(ReadOnlySpan<char> pattern, ReadOnlySpan<char> name)
    {
        int star = pattern.IndexOf('*');
        if (star < 0)
        {
            return pattern.SequenceEqual(name);
        }
        if (!name.StartsWith(pattern[..star]))
        {
            return false;
        }
        ReadOnlySpan<char> rest = pattern[(star + 1)..];
        for (int i = star; i <= name.Length; i++)
        {
            if (Glob(rest, name[i..]))
            {
                return true;
            }
        }
        return false;
    }
}

/// <summary>
/// Calico Enterprise's <c>BFDConfiguration</c> (projectcalico.org/v3), read from
/// <c>/calico/resources/v3/projectcalico.org/bfdconfigurations/&lt;name&gt;</c>: <c>nodeSelector</c> picks the nodes,
/// <c>interfaces</c> the interfaces of those nodes, each with <c>minimumRecvInterval</c>, <c>minimumSendInterval</c>,
/// <c>idleSendInterval</c> and <c>multiplier</c>. BGP peers reached through a matched interface get BFD.
/// </summary>
public sealed record BfdConfigResource(string Name, Selector? NodeSelector, string? NodeSelectorText, IReadOnlyList<BfdInterface> Interfaces)
{
    /// <summary>Reads a spec; anything unusable throws <see cref="ConfigException"/> naming the field, so the whole record
    /// is skipped and reported (a record applies whole or not at all).</summary>
    internal static BfdConfigResource Parse(string name, JsonElement? spec)
    {
        if (spec is not { } s)
        {
            throw new ConfigException("bfdconfiguration without spec");
        }
        string? selectorText = s.TryGetProperty("nodeSelector", out JsonElement ns) ? ns.ValueKind == JsonValueKind.String ? ns.GetString() : throw new ConfigException("nodeSelector: not a string") : null;
        Selector? selector;
        try
        {
            selector = string.IsNullOrWhiteSpace(selectorText) ? null : Selector.Parse(selectorText);
        }
        catch (IpamException e)
        {
            throw new ConfigException($"nodeSelector '{selectorText}': {e.Message}");
        }
        var interfaces = new List<BfdInterface>();
        if (s.TryGetProperty("interfaces", out JsonElement list))
        {
            if (list.ValueKind != JsonValueKind.Array)
            {
                throw new ConfigException("interfaces: not a list");
            }
            int i = 0;
            foreach (JsonElement item in list.EnumerateArray())
            {
                interfaces.Add(ParseInterface(item, $"interfaces[{i++}]"));
            }
        }
        return new BfdConfigResource(name, selector, selectorText, interfaces);
    }

    private static BfdInterface ParseInterface(JsonElement item, string where)
    {
        if (item.ValueKind != JsonValueKind.Object)
        {
            throw new ConfigException($"{where}: not an object");
        }
        BfdTimers d = BfdTimers.Default;
        string pattern = item.TryGetProperty("matchPattern", out JsonElement mp) && mp.ValueKind == JsonValueKind.String && mp.GetString() is { Length: > 0 } p
            ? p : throw new ConfigException($"{where}: matchPattern is missing (an interface name, a prefix like \"eth*\", or \"*\")");
        TimeSpan Duration(string field, TimeSpan fallback)
        {
            if (!item.TryGetProperty(field, out JsonElement v))
            {
                return fallback;
            }
            if (v.ValueKind != JsonValueKind.String)
            {
                throw new ConfigException($"{where}.{field}: not a duration string like \"100ms\"");
            }
            return DaemonConfig.ParseDuration(v.GetString()!, $"{where}.{field}");
        }
        byte multiplier = d.Multiplier;
        if (item.TryGetProperty("multiplier", out JsonElement m))
        {
            multiplier = m.ValueKind == JsonValueKind.Number && m.TryGetInt32(out int mv) && mv is >= 1 and <= 255 ? (byte)mv
                : throw new ConfigException($"{where}.multiplier: {m.GetRawText()} (must be 1-255)");
        }
        var timers = new BfdTimers(Duration("minimumSendInterval", d.MinTx), Duration("minimumRecvInterval", d.MinRx), Duration("idleSendInterval", d.IdleTx), multiplier);
        try
        {
            timers.Validate();
        }
        catch (ArgumentException e)
        {
            throw new ConfigException($"{where}.{e.Message}");
        }
        return new BfdInterface(pattern, timers);
    }

    public bool SelectsNode(IReadOnlyDictionary<string, string> labels) => NodeSelector?.Matches(labels) ?? true;
}

/// <summary>
/// bgpd's BFD: one session per BGP peer that has it on (RFC 5882), all run by one <see cref="BfdLoop"/> thread; a
/// session that goes down from Up takes its BGP session down at once (posted to the speaker's event loop). The
/// methods here run on the speaker's loop and reach the sessions under the BFD loop's lock. Which peers get BFD, and with which timers, follows the
/// configuration: a BFDConfiguration that selects this node and matches the interface toward the peer, and the
/// file's per-peer <c>bfd</c> switch. Timer changes reach running sessions by a Poll Sequence, never by a BGP reset.
/// </summary>
public sealed class BfdPeers : IDisposable
{
    private readonly BgpSpeaker _speaker;
    private readonly Action<BgpLogLevel, string> _log;
    private readonly BfdUdpTransport? _udp;
    private readonly BfdLoop _loop;
    private readonly Dictionary<IPAddress, string> _configuredBy = [];
    private long _bgpSessionsClosed;

    public BfdPeers(BgpSpeaker speaker, Action<BgpLogLevel, string> log, IBfdTransport? transport = null)
    {
        ArgumentNullException.ThrowIfNull(speaker);
        _speaker = speaker;
        _log = log;
        if (transport is null)
        {
            _udp = new BfdUdpTransport(log);
            transport = _udp;
        }
        _loop = new BfdLoop(speaker.Time, transport, _udp, e => log(BgpLogLevel.Error, $"BFD: {e}"));
        Endpoint = _loop.Endpoint;
        Endpoint.StateChanged += OnStateChanged;
    }

    /// <summary>The sessions; touch them only inside <see cref="BfdLoop.Invoke"/> of <see cref="Loop"/> or on its thread.</summary>
    public BfdEndpoint Endpoint { get; }

    public BfdLoop Loop => _loop;

    /// <summary>BGP sessions BFD took down.</summary>
    public long BgpSessionsClosed => Interlocked.Read(ref _bgpSessionsClosed);

    /// <summary>Session state changes, by the state entered.</summary>
    public long TransitionsTo(BfdState state) => _transitions[(int)state];

    private readonly long[] _transitions = new long[4];

    public long SendErrors => _udp?.SendErrors ?? 0;

    /// <summary>What applies to <paramref name="peer"/>: the file's switch (false: off; true: on, with the timers of a
    /// matching BFDConfiguration or Calico Enterprise's defaults), else the first BFDConfiguration by name that selects
    /// this node and has an interface entry matching the interface toward the peer. Null: no BFD.</summary>
    internal static (BfdTimers Timers, string Source)? Resolve(bool? fileSwitch, string? interfaceName, IReadOnlyList<BfdConfigResource> configs, IReadOnlyDictionary<string, string> nodeLabels)
    {
        if (fileSwitch == false)
        {
            return null;
        }
        foreach (BfdConfigResource c in configs.OrderBy(c => c.Name, StringComparer.Ordinal))
        {
            if (c.SelectsNode(nodeLabels) && c.Interfaces.FirstOrDefault(i => i.Matches(interfaceName)) is { } match)
            {
                return (match.Timers, $"bfdconfiguration {c.Name}, interface {interfaceName} (matchPattern \"{match.MatchPattern}\")");
            }
        }
        return fileSwitch == true ? (BfdTimers.Default, "the config file (default timers)") : null;
    }

    /// <summary>Desired against actual, on the loop: sessions for the peers that should have BFD, with their timers.</summary>
    public void Apply(IReadOnlyList<PeerConfig> peers, IReadOnlyList<PeerSpec> filePeers, ClusterSnapshot cluster, IReadOnlyDictionary<string, string> nodeLabels)
    {
        ArgumentNullException.ThrowIfNull(peers);
        ArgumentNullException.ThrowIfNull(filePeers);
        ArgumentNullException.ThrowIfNull(cluster);
        var switches = new Dictionary<IPAddress, bool>();
        foreach (PeerSpec spec in filePeers)
        {
            if (spec.Bfd is { } on)
            {
                switches[DaemonConfig.ParsePeerAddress(spec.PeerIP, "peerIP").Address] = on;
            }
        }
        List<(IPAddress Address, int Length, string Name)>? interfaces = null;
        var desired = new Dictionary<IPAddress, (PeerConfig Peer, BfdTimers Timers, string Source)>();
        foreach (PeerConfig p in peers)
        {
            bool? sw = switches.TryGetValue(p.Address, out bool v) ? v : null;
            if (sw == false || (sw is null && cluster.BfdConfigurations.Count == 0))
            {
                continue;
            }
            interfaces ??= LocalInterfaces();
            if (Resolve(sw, InterfaceToward(p.Address, interfaces), cluster.BfdConfigurations, nodeLabels) is { } r)
            {
                desired[p.Address] = (p, r.Timers, r.Source);
            }
        }
        if (desired.Count > 0)
        {
            // Port 3784 and the BFD thread only once some peer has BFD.
            _loop.Start();
        }
        _loop.Invoke(() => Reconcile(desired));
    }

    private void Reconcile(Dictionary<IPAddress, (PeerConfig Peer, BfdTimers Timers, string Source)> desired)
    {
        foreach (BfdSession s in Endpoint.Sessions.Where(s => !desired.ContainsKey(s.Peer)).ToList())
        {
            _log(BgpLogLevel.Info, $"BFD {s.Name}: no longer configured, session removed (AdminDown sent)");
            _configuredBy.Remove(s.Peer);
            Endpoint.Remove(s);
        }
        foreach ((IPAddress address, (PeerConfig peer, BfdTimers timers, string source)) in desired)
        {
            BfdSession? s = Endpoint.Find(address);
            if (s is null || s.State == BfdState.AdminDown)
            {
                Endpoint.Add(address, peer.LocalAddress, timers, peer.DisplayName);
                _log(BgpLogLevel.Info, $"BFD {peer.DisplayName}: session configured ({timers}) from {source}");
            }
            else if (s.Timers != timers)
            {
                _log(BgpLogLevel.Info, $"BFD {peer.DisplayName}: timers changed to {timers} from {source}; applied by a Poll Sequence, the BGP session stays");
                s.Configure(timers);
            }
            _configuredBy[address] = source;
        }
    }

    /// <summary>The session to <paramref name="peer"/> as node status shows it; null without BFD. On the loop.</summary>
    public Proto.BfdSession? Describe(IPAddress peer) => _loop.Invoke(() => DescribeLocked(peer));

    private Proto.BfdSession? DescribeLocked(IPAddress peer)
    {
        if (Endpoint.Find(peer) is not { } s)
        {
            return null;
        }
        static uint Us(TimeSpan t) => (uint)Math.Min(t.Ticks / TimeSpan.TicksPerMicrosecond, uint.MaxValue);
        return new Proto.BfdSession
        {
            State = s.State.ToString(),
            RemoteState = s.RemoteState.ToString(),
            Diagnostic = s.LocalDiagnostic.ToString(),
            StateSinceUnixMs = s.StateChangedAt.ToUnixTimeMilliseconds(),
            LocalDiscriminator = s.LocalDiscriminator,
            RemoteDiscriminator = s.RemoteDiscriminator,
            MinTxUs = Us(s.Timers.MinTx),
            MinRxUs = Us(s.Timers.MinRx),
            IdleTxUs = Us(s.Timers.IdleTx),
            Multiplier = s.Timers.Multiplier,
            TxIntervalUs = Us(s.TransmitInterval),
            DetectionTimeUs = Us(s.DetectionTime),
            RemoteMultiplier = s.RemoteMultiplier,
            UpTransitions = s.UpTransitions,
            DownTransitions = s.DownTransitions,
            PacketsSent = s.PacketsSent,
            PacketsReceived = s.PacketsReceived,
            Source = _configuredBy.GetValueOrDefault(peer) ?? "",
        };
    }

    /// <summary>The node's addresses with their prefix lengths and interfaces (read once per apply).</summary>
    private static List<(IPAddress Address, int Length, string Name)> LocalInterfaces() =>
        [.. NetworkInterface.GetAllNetworkInterfaces().SelectMany(nic => nic.GetIPProperties().UnicastAddresses.Select(u => (u.Address, u.PrefixLength, nic.Name)))];

    /// <summary>Single hop: the interface whose subnet holds the peer's address.</summary>
    internal static string? InterfaceToward(IPAddress peer, List<(IPAddress Address, int Length, string Name)> interfaces)
    {
        foreach ((IPAddress a, int length, string name) in interfaces)
        {
            if (a.AddressFamily == peer.AddressFamily && length > 0 && SameSubnet(a, peer, length))
            {
                return name;
            }
        }
        return null;
    }

    private static bool SameSubnet(IPAddress a, IPAddress b, int length)
    {
        Span<byte> x = stackalloc byte[16];
        Span<byte> y = stackalloc byte[16];
        if (!a.TryWriteBytes(x, out int n) || !b.TryWriteBytes(y, out int m) || n != m)
        {
            return false;
        }
        for (int bit = 0; bit < length && bit < n * 8; bit++)
        {
            int mask = 0x80 >> (bit % 8);
            if ((x[bit / 8] & mask) != (y[bit / 8] & mask))
            {
                return false;
            }
        }
        return true;
    }

    private void OnStateChanged(BfdSession s, BfdState old)
    {
        _transitions[(int)s.State]++;
        string why = s.LocalDiagnostic switch
        {
            BfdDiagnostic.ControlDetectionTimeExpired => $"no packet for the detection time ({BfdTimers.Format(s.ExpiredDetectionTime)})",
            BfdDiagnostic.NeighborSignaledSessionDown => s.RemoteState == BfdState.AdminDown ? "the peer took it down administratively" : "the peer said it is down",
            BfdDiagnostic.AdministrativelyDown => "removed from the configuration",
            _ => "",
        };
        _log(s.State == BfdState.Up || old != BfdState.Up ? BgpLogLevel.Info : BgpLogLevel.Warning,
            $"BFD {s.Name}: {old} -> {s.State}{(why.Length > 0 && s.State != BfdState.Up ? $": {why}" : "")}");
        // RFC 5882 §3.2: Up to Down is a failure of the path, unless the peer said AdminDown (then it is no failure).
        // On the BFD thread: the BGP session is the speaker's, so its loop closes it.
        if (old == BfdState.Up && s.State == BfdState.Down && s.RemoteState != BfdState.AdminDown)
        {
            IPAddress address = s.Peer;
            _speaker.Loop.Post(() =>
            {
                if (_speaker.FindPeer(address) is { } peer && peer.CloseForBfd($"session down: {why}"))
                {
                    Interlocked.Increment(ref _bgpSessionsClosed);
                    _log(BgpLogLevel.Warning, $"peer {peer.Config.DisplayName}: BFD session down ({why}): BGP session taken down, its routes withdrawn");
                }
            });
        }
    }

    /// <summary>The BFD metrics (Prometheus text format), on the loop.</summary>
    internal void RenderMetrics(System.Text.StringBuilder sb, Action<string, string, string> metric) => _loop.Invoke(() => RenderMetricsLocked(sb, metric));

    private void RenderMetricsLocked(System.Text.StringBuilder sb, Action<string, string, string> metric)
    {
        metric("calicosharp_bfd_sessions", "gauge", "BFD sessions by state.");
        foreach (BfdState st in Enum.GetValues<BfdState>())
        {
            sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_sessions{{state=\"{st}\"}} {Endpoint.Sessions.Count(s => s.State == st)}\n");
        }
        metric("calicosharp_bfd_state_changes_total", "counter", "BFD session state changes, by the state entered.");
        foreach (BfdState st in Enum.GetValues<BfdState>())
        {
            sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_state_changes_total{{state=\"{st}\"}} {TransitionsTo(st)}\n");
        }
        metric("calicosharp_bfd_session_up", "gauge", "1 while the BFD session with the peer is Up.");
        foreach (BfdSession s in Endpoint.Sessions)
        {
            sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_session_up{{peer=\"{s.Peer}\",name=\"{Metrics.EscapeLabelValue(s.Name)}\"}} {(s.State == BfdState.Up ? 1 : 0)}\n");
        }
        metric("calicosharp_bfd_bgp_sessions_closed_total", "counter", "BGP sessions taken down because their BFD session went down (RFC 5882).");
        sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_bgp_sessions_closed_total {BgpSessionsClosed}\n");
        metric("calicosharp_bfd_packets_discarded_total", "counter", "Received BFD packets discarded, by the rule of RFC 5880 §6.8.6 / RFC 5881 §5 they broke.");
        foreach (BfdDiscard why in Enum.GetValues<BfdDiscard>().Where(w => w != BfdDiscard.None))
        {
            sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_packets_discarded_total{{reason=\"{why}\"}} {Endpoint.DiscardedFor(why)}\n");
        }
        metric("calicosharp_bfd_packets_received_total", "counter", "BFD packets received, accepted or discarded.");
        sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_packets_received_total {Endpoint.Received}\n");
        metric("calicosharp_bfd_send_errors_total", "counter", "BFD packets that could not be sent (no route, interface down).");
        sb.Append(CultureInfo.InvariantCulture, $"calicosharp_bfd_send_errors_total {SendErrors}\n");
    }

    /// <summary>A planned stop: every session tells its peer AdminDown, so the peer sees no failure (RFC 5880 §6.8.16).</summary>
    public void Stop() => _loop.Invoke(() =>
    {
        foreach (BfdSession s in Endpoint.Sessions.ToList())
        {
            Endpoint.Remove(s);
        }
    });

    public void Dispose()
    {
        _loop.Dispose();
        Endpoint.Clear();
        _udp?.Dispose();
    }
}
