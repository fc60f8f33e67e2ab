using System.Net;

namespace CalicoSharp.Bgp;

public enum BgpLogLevel
{
    Debug,
    Info,
    Warning,
    Error,
}

/// <summary>What the speaker is: its AS, router id, and defaults for its peers.</summary>
public sealed class SpeakerConfig
{
    /// <summary>Changed while running through <see cref="BgpSpeaker.ChangeIdentity"/> only.</summary>
    public uint LocalAs { get; set; } = 64512;

    /// <summary>BGP identifier as a host-order integer (an IPv4 address); changed through <see cref="BgpSpeaker.ChangeIdentity"/>.</summary>
    public uint RouterId { get; set; }

    /// <summary>RFC 4456 cluster id when this speaker reflects routes; defaults to the router id.</summary>
    public uint? ClusterId { get; set; }

    /// <summary>Speakers with equal paths install all of them (up to this many next hops).</summary>
    public int MaxPaths { get; init; } = 16;

    /// <summary>RFC 4724 restart time we announce (seconds, at most 4095).</summary>
    public ushort RestartTime { get; init; } = 120;

    /// <summary>We come back from a restart (R bit) and kept forwarding (F bit).</summary>
    public bool Restarting { get; init; }

    public Action<BgpLogLevel, string>? Log { get; init; }

    public uint EffectiveClusterId => ClusterId ?? RouterId;

    public static uint ParseRouterId(string text)
    {
        if (!IPAddress.TryParse(text, out IPAddress? a) || a.AddressFamily != System.Net.Sockets.AddressFamily.InterNetwork)
        {
            throw new FormatException($"router id '{text}' is not an IPv4 address");
        }
        Span<byte> b = stackalloc byte[4];
        a.TryWriteBytes(b, out _);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b);
    }
}

/// <summary>What an import or export policy decided for one route.</summary>
public enum PolicyResult
{
    Accept,
    Reject,
}

/// <summary>
/// A policy hook: sees the prefix and the attributes, may replace the attributes (return them through
/// <c>attributes</c>) and accepts or rejects.
/// </summary>
public delegate PolicyResult RoutePolicy(BgpPeer? peer, Prefix prefix, ref PathAttributes attributes);

/// <summary>One configured neighbour.</summary>
public sealed class PeerConfig
{
    public required IPAddress Address { get; init; }

    public int Port { get; init; } = 179;

    public required uint RemoteAs { get; init; }

    /// <summary>Our AS toward this peer (defaults to the speaker's).</summary>
    public uint? LocalAs { get; init; }

    /// <summary>Source address for outgoing connections, and the next hop we announce.</summary>
    public IPAddress? LocalAddress { get; init; }

    /// <summary>Next hop for IPv6 routes when the session runs over IPv4 (and vice versa).</summary>
    public IPAddress? LocalAddressOtherFamily { get; init; }

    public string? Name { get; init; }

    /// <summary>RFC 4271 §4.2: 0, or at least 3 seconds.</summary>
    public ushort HoldTime { get; init; } = 90;

    /// <summary>Keepalive interval; default one third of the negotiated hold time.</summary>
    public ushort? KeepaliveTime { get; init; }

    /// <summary>Only accept connections; never connect out.</summary>
    public bool Passive { get; init; }

    public TimeSpan ConnectRetry { get; init; } = TimeSpan.FromSeconds(5);

    public TimeSpan ConnectRetryMax { get; init; } = TimeSpan.FromSeconds(120);

    public IReadOnlyList<Afi> Families { get; init; } = [Afi.IPv4, Afi.IPv6];

    /// <summary>RFC 4456: this iBGP peer is our route reflector client.</summary>
    public bool RouteReflectorClient { get; init; }

    /// <summary>Announce ourselves as the next hop also on iBGP (always on eBGP).</summary>
    public bool NextHopSelf { get; init; }

    public bool GracefulRestart { get; init; } = true;

    /// <summary>The longest this speaker keeps the peer's routes after its session drops for a graceful restart,
    /// whatever restart time the peer announced (Calico's bgppeer <c>maxRestartTime</c>); null: the peer's time.</summary>
    public TimeSpan? MaxRestartTime { get; init; }

    /// <summary>Close the session when the peer sends more than this many prefixes (RFC 4486 Cease/1).</summary>
    public int? MaxPrefixes { get; init; }

    /// <summary>Close the session when queued output has not moved for this long (a peer that cannot keep up).</summary>
    public TimeSpan? SendStallLimit { get; init; }

    public long OutputHighWater { get; init; } = 1024 * 1024;

    /// <summary>TCP MD5 signature key (RFC 2385); null for none.</summary>
    public string? Password { get; init; }

    /// <summary>GTSM (RFC 5082): the peer is at most this many hops away (send TTL 255, accept at least 256 - hops); 0 off.</summary>
    public int TtlSecurityHops { get; init; }

    public RoutePolicy? Import { get; init; }

    public RoutePolicy? Export { get; init; }

    public string DisplayName => Name ?? Address.ToString();

    public void Validate()
    {
        if (HoldTime is 1 or 2)
        {
            throw new ArgumentException($"peer {DisplayName}: hold time {HoldTime} s (must be 0 or at least 3, RFC 4271 §4.2)");
        }
        if (RemoteAs == 0)
        {
            throw new ArgumentException($"peer {DisplayName}: AS 0 is reserved (RFC 7607)");
        }
        if (Password is { } password && System.Text.Encoding.UTF8.GetByteCount(password) > 80)
        {
            throw new ArgumentException($"peer {DisplayName}: TCP MD5 keys are at most 80 bytes (RFC 2385, Linux TCP_MD5SIG_MAXKEYLEN), this one is {System.Text.Encoding.UTF8.GetByteCount(password)} in UTF-8");
        }
        if (MaxRestartTime is { } max && max < TimeSpan.Zero)
        {
            throw new ArgumentException($"peer {DisplayName}: maxRestartTime {max} is negative");
        }
        if (Families.Count == 0)
        {
            throw new ArgumentException($"peer {DisplayName}: no address family");
        }
    }
}
