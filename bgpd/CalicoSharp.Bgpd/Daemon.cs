using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;

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

/// <summary>The node daemon: a BGP speaker configured from the local config file.</summary>
public sealed class Daemon : IAsyncDisposable
{
    private readonly List<Prefix> _pools = [];

    public Daemon(DaemonConfig config, Action<BgpLogLevel, string> log)
    {
        ArgumentNullException.ThrowIfNull(config);
        Config = config;
        Log = log;
        IPAddress? v4 = DaemonConfig.ParseAddress(config.Ipv4Address, "ipv4Address");
        IPAddress? v6 = DaemonConfig.ParseAddress(config.Ipv6Address, "ipv6Address");
        if (v4 is not null && v4.AddressFamily != AddressFamily.InterNetwork)
        {
            throw new ConfigException($"ipv4Address: {v4} is not an IPv4 address");
        }
        if (v6 is not null && v6.AddressFamily != AddressFamily.InterNetworkV6)
        {
            throw new ConfigException($"ipv6Address: {v6} is not an IPv6 address");
        }
        string? rid = config.RouterId ?? v4?.ToString();
        if (rid is null)
        {
            throw new ConfigException("no router id: set routerId or ipv4Address");
        }
        uint routerId;
        try
        {
            routerId = SpeakerConfig.ParseRouterId(rid);
        }
        catch (FormatException e)
        {
            throw new ConfigException(e.Message);
        }
        if (config.Import is not "pools" and not "all")
        {
            throw new ConfigException($"import: '{config.Import}' (must be \"pools\" or \"all\")");
        }
        foreach (string p in config.IpPools)
        {
            _pools.Add(DaemonConfig.ParsePrefix(p, "ipPools"));
        }
        uint? cluster = config.RouteReflectorClusterId is { } c ? ParseId(c, "routeReflectorClusterID") : null;
        Speaker = new BgpSpeaker(new SpeakerConfig
        {
            LocalAs = config.AsNumber ?? 64512,
            RouterId = routerId,
            ClusterId = cluster,
            Log = log,
        });
        Speaker.Import = ImportPolicy;
        Ipv4 = v4;
        Ipv6 = v6;
    }

    public DaemonConfig Config { get; }

    public BgpSpeaker Speaker { get; }

    public IPAddress? Ipv4 { get; }

    public IPAddress? Ipv6 { get; }

    private Action<BgpLogLevel, string> Log { get; }

    private static uint ParseId(string text, string what)
    {
        try
        {
            return SpeakerConfig.ParseRouterId(text);
        }
        catch (FormatException)
        {
            throw new ConfigException($"{what}: '{text}' is not an IPv4-style id");
        }
    }

    /// <summary>By default only prefixes inside the IP pools are accepted: a peer announcing a default route or
    /// foreign prefixes must not capture this node's traffic.</summary>
    private PolicyResult ImportPolicy(BgpPeer? peer, Prefix prefix, ref PathAttributes attributes)
    {
        if (Config.Import == "all")
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

    public PeerConfig ToPeerConfig(PeerSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        IPAddress address = DaemonConfig.ParseAddress(spec.PeerIP, "peerIP") ?? throw new ConfigException("a peer without peerIP");
        if (spec.AsNumber == 0)
        {
            throw new ConfigException($"peer {spec.PeerIP}: asNumber is missing");
        }
        bool v4 = address.AddressFamily == AddressFamily.InterNetwork;
        IPAddress? source = DaemonConfig.ParseAddress(spec.SourceAddress, "sourceAddress") ?? (v4 ? Ipv4 : Ipv6);
        ushort hold = Config.HoldTime ?? 90;
        if (spec.HoldTime is { } h)
        {
            hold = (ushort)DaemonConfig.ParseDuration(h, $"peer {spec.PeerIP} holdTime").TotalSeconds;
        }
        ushort? keepalive = spec.KeepaliveTime is { } k ? (ushort)DaemonConfig.ParseDuration(k, $"peer {spec.PeerIP} keepaliveTime").TotalSeconds : null;
        var config = new PeerConfig
        {
            Address = address,
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

    public async Task StartAsync()
    {
        var peers = Config.Peers.Select(ToPeerConfig).ToList();
        var originate = Config.Originate.Select(p => DaemonConfig.ParsePrefix(p, "originate")).ToList();
        IPAddress listen = DaemonConfig.ParseAddress(Config.ListenAddress, "listenAddress") ?? IPAddress.IPv6Any;
        IPEndPoint bound = Speaker.Listen(new IPEndPoint(listen, Config.ListenPort ?? 179));
        Log(BgpLogLevel.Info, $"listening on {bound}, AS {Speaker.Config.LocalAs}, router id {new IPAddress(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(Speaker.Config.RouterId))}");
        await Speaker.InvokeAsync(() =>
        {
            foreach (PeerConfig p in peers)
            {
                Speaker.AddPeer(p);
            }
            foreach (Prefix p in originate)
            {
                Speaker.Rib.Originate(p);
            }
        }).ConfigureAwait(false);
    }

    /// <summary>A planned stop (SIGTERM): Cease to every peer, so they withdraw our routes at once.</summary>
    public Task StopAsync(string reason) => Speaker.StopAsync(reason, TimeSpan.FromMilliseconds(300));

    public ValueTask DisposeAsync() => Speaker.DisposeAsync();
}
