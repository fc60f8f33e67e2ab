using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The local config file: the same meaning and (where Calico has them) the same names as the
/// bgpconfigurations, bgppeers, nodes and ippools resources, for a node without those records and for
/// the lab and benchmarks.
/// </summary>
public sealed class DaemonConfig
{
    /// <summary>This node's name (as in the nodes resource and the IPAM block affinities).</summary>
    public string? NodeName { get; set; }

    /// <summary>bgpconfigurations/nodes asNumber (default 64512, as Calico).</summary>
    public uint? AsNumber { get; set; }

    /// <summary>nodes bgp.ipv4Address: this node's BGP address (a CIDR as Calico writes it, or an address).</summary>
    public string? Ipv4Address { get; set; }

    /// <summary>nodes bgp.ipv6Address.</summary>
    public string? Ipv6Address { get; set; }

    /// <summary>BGP identifier; default the IPv4 address.</summary>
    public string? RouterId { get; set; }

    /// <summary>bgpconfigurations listenPort (default 179).</summary>
    public int? ListenPort { get; set; }

    /// <summary>Address to listen on (default: all).</summary>
    public string? ListenAddress { get; set; }

    /// <summary>nodes bgp.routeReflectorClusterID: set, this node reflects routes to its client peers.</summary>
    [JsonPropertyName("routeReflectorClusterID")]
    public string? RouteReflectorClusterId { get; set; }

    public List<PeerSpec> Peers { get; set; } = [];

    /// <summary>ippools cidr list: prefixes accepted from peers (unless <see cref="Import"/> is "all").</summary>
    public List<string> IpPools { get; set; } = [];

    /// <summary>Prefixes this node always announces (lab and benchmark use).</summary>
    public List<string> Originate { get; set; } = [];

    /// <summary>"pools" (default): accept only prefixes inside the IP pools; "all": accept everything (a route server).</summary>
    public string Import { get; set; } = "pools";

    /// <summary>Hold time we offer (seconds; 0 or at least 3).</summary>
    public ushort? HoldTime { get; set; }

    /// <summary>The most routes kept from one peer that comes from etcd (bgppeers, the node mesh) before its session is
    /// closed (default 100,000; 0: no limit; the flag --peer-max-prefixes wins). Peers of this file use their own
    /// <see cref="PeerSpec.MaxPrefixes"/>.</summary>
    public int? PeerMaxPrefixes { get; set; }

    /// <summary>bgpconfigurations serviceClusterIPs: ranges every node advertises (added to etcd's).</summary>
    [JsonPropertyName("serviceClusterIPs")]
    public List<CidrEntry> ServiceClusterIPs { get; set; } = [];

    /// <summary>bgpconfigurations serviceExternalIPs.</summary>
    [JsonPropertyName("serviceExternalIPs")]
    public List<CidrEntry> ServiceExternalIPs { get; set; } = [];

    /// <summary>bgpconfigurations serviceLoadBalancerIPs.</summary>
    [JsonPropertyName("serviceLoadBalancerIPs")]
    public List<CidrEntry> ServiceLoadBalancerIPs { get; set; } = [];

    public static DaemonConfig Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"config file {path}: {e.Message}");
        }
        return Parse(text, path);
    }

    public static DaemonConfig Parse(string json, string source = "config")
    {
        try
        {
            return JsonSerializer.Deserialize(json, DaemonJson.Default.DaemonConfig) ?? throw new ConfigException($"{source}: empty");
        }
        catch (JsonException e)
        {
            throw new ConfigException($"{source}: {e.Message}");
        }
    }

    /// <summary>Calico writes durations as Go does ("30s", "1m30s", "2m"); plain numbers are seconds.</summary>
    public static TimeSpan ParseDuration(string text, string what)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double plain))
        {
            return TimeSpan.FromSeconds(plain);
        }
        TimeSpan total = TimeSpan.Zero;
        int i = 0;
        while (i < text.Length)
        {
            int start = i;
            while (i < text.Length && (char.IsAsciiDigit(text[i]) || text[i] == '.'))
            {
                i++;
            }
            int unitStart = i;
            while (i < text.Length && char.IsAsciiLetter(text[i]))
            {
                i++;
            }
            if (start == unitStart || !double.TryParse(text.AsSpan(start, unitStart - start), NumberStyles.Float, CultureInfo.InvariantCulture, out double v))
            {
                throw new ConfigException($"{what}: '{text}' is not a duration (like 30s or 1m30s)");
            }
            total += text[unitStart..i] switch
            {
                "h" => TimeSpan.FromHours(v),
                "m" => TimeSpan.FromMinutes(v),
                "s" => TimeSpan.FromSeconds(v),
                "ms" => TimeSpan.FromMilliseconds(v),
                _ => throw new ConfigException($"{what}: unknown unit in '{text}'"),
            };
        }
        return total;
    }

    /// <summary>A duration as whole seconds within [<paramref name="min"/>, <paramref name="max"/>]: BGP's timers are
    /// 16-bit seconds on the wire, so a larger value must be refused, not wrapped.</summary>
    public static ushort ParseSeconds(string text, string what, int min, int max)
    {
        TimeSpan d;
        try
        {
            d = ParseDuration(text, what);
        }
        catch (Exception e) when (e is OverflowException or ArgumentException)
        {
            throw new ConfigException($"{what}: '{text}' is not a duration in range ({min}-{max} s)");
        }
        double seconds = d.TotalSeconds;
        return seconds >= min && seconds <= max ? (ushort)seconds
            : throw new ConfigException($"{what}: '{text}' is {seconds:0.###} s (must be {min}-{max} s)");
    }

    /// <summary>Calico's bgppeers peerIP: an address, or an address and a port ("10.0.0.1:1790", "[fd00::1]:1790";
    /// an IPv6 address with a port needs the brackets). A "/length" suffix is tolerated as before.</summary>
    public static (IPAddress Address, int? Port) ParsePeerAddress(string text, string what)
    {
        ArgumentNullException.ThrowIfNull(text);
        // Not IPAddress.TryParse first: it accepts "[fd00::1]:1790" and drops the port.
        if (text.Contains('/', StringComparison.Ordinal) || (!text.StartsWith('[') && IPAddress.TryParse(text, out _)))
        {
            return (ParseAddress(text, what) ?? throw new ConfigException($"{what}: empty"), null);
        }
        if (IPEndPoint.TryParse(text, out IPEndPoint? ep) && ep.Port is > 0 and <= 65535)
        {
            return (ep.Address, ep.Port);
        }
        throw new ConfigException($"{what}: '{text}' is not an IP address or address:port");
    }

    internal static IPAddress? ParseAddress(string? text, string what)
    {
        if (string.IsNullOrEmpty(text))
        {
            return null;
        }
        string a = text.Split('/')[0];
        return IPAddress.TryParse(a, out IPAddress? ip) ? ip : throw new ConfigException($"{what}: '{text}' is not an IP address");
    }

    /// <summary>A node's BGP address as Calico writes it (nodes <c>spec.bgp.ipv4Address</c> / <c>ipv6Address</c>: the
    /// address with its subnet's length, "10.0.0.5/24"), or a bare address; null when absent, empty or blank. Anything
    /// else, an address of the other family or a length out of range, is refused with the text.</summary>
    public static IPAddress? ParseNodeAddress(string? text, System.Net.Sockets.AddressFamily family, string what)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return null;
        }
        bool v4 = family == System.Net.Sockets.AddressFamily.InterNetwork;
        string t = text.Trim();
        int slash = t.IndexOf('/', StringComparison.Ordinal);
        string address = slash < 0 ? t : t[..slash];
        bool lengthOk = slash < 0 || (int.TryParse(t.AsSpan(slash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int len) && len <= (v4 ? 32 : 128));
        if (!lengthOk || !IPAddress.TryParse(address, out IPAddress? ip) || ip.AddressFamily != family || (!v4 && address.Contains('%', StringComparison.Ordinal)))
        {
            throw new ConfigException($"{what}: '{text}' is not an {(v4 ? "IPv4" : "IPv6")} address (Calico writes it with its subnet's length, e.g. {(v4 ? "10.0.0.5/24" : "fd00::5/64")})");
        }
        return ip;
    }

    internal static Prefix ParsePrefix(string text, string what) =>
        Prefix.TryParse(text, out Prefix p) ? p : throw new ConfigException($"{what}: '{text}' is not a CIDR");
}

/// <summary>Calico's <c>{cidr: "10.96.0.0/12"}</c> list entry.</summary>
public sealed class CidrEntry
{
    public string Cidr { get; set; } = "";
}

/// <summary>A bgppeers entry (Calico's field names).</summary>
public sealed class PeerSpec
{
    public string? Name { get; set; }

    public string PeerIP { get; set; } = "";

    public uint AsNumber { get; set; }

    /// <summary>Calico duration ("30s"): the keepalive interval.</summary>
    public string? KeepaliveTime { get; set; }

    /// <summary>Calico duration: the hold time (default 90 s).</summary>
    public string? HoldTime { get; set; }

    /// <summary>Calico duration: how long a restarting peer's routes are kept (RFC 4724 helper).</summary>
    public string? MaxRestartTime { get; set; }

    /// <summary>TCP MD5 signature password (RFC 2385).</summary>
    public string? Password { get; set; }

    /// <summary>GTSM (RFC 5082): the peer is at most this many hops away; 0 off.</summary>
    public int? TtlSecurity { get; set; }

    public bool Passive { get; set; }

    public bool RouteReflectorClient { get; set; }

    public bool NextHopSelf { get; set; }

    /// <summary>Close the session (Cease / Maximum Number of Prefixes Reached) when more of the peer's routes than this
    /// are accepted by import policy; none by default for the file's peers.</summary>
    public int? MaxPrefixes { get; set; }

    /// <summary>Source address for the session: "UseNodeIP" (the default: the node's address of the peer's family),
    /// "None" (the kernel picks the address of the interface toward the peer; Calico's names), or an address.</summary>
    public string? SourceAddress { get; set; }

    /// <summary>BFD for this peer (RFC 5880/5882): true turns it on (with the timers of a BFDConfiguration in etcd that
    /// matches the interface toward the peer, else 100 ms / 10 ms / 1 min idle / multiplier 5), false turns it off
    /// whatever etcd says; absent: as etcd's BFDConfigurations say.</summary>
    public bool? Bfd { get; set; }
}

public sealed class ConfigException : Exception
{
    public ConfigException(string message)
        : base(message)
    {
    }

    public ConfigException()
    {
    }

    public ConfigException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, ReadCommentHandling = JsonCommentHandling.Skip,
    AllowTrailingCommas = true, UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow)]
[JsonSerializable(typeof(DaemonConfig))]
internal sealed partial class DaemonJson : JsonSerializerContext;
