using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd;

/// <summary>Per-peer socket security: TCP MD5 signatures (RFC 2385) and GTSM (RFC 5082).</summary>
public static class SocketOptions
{
    private const int IpProtoTcp = 6;
    private const int TcpMd5Sig = 14;
    internal const int IpProtoIp = 0;
    internal const int IpTtl = 2;
    internal const int IpMinTtl = 21;
    internal const int IpProtoIpv6 = 41;
    internal const int Ipv6UnicastHops = 16;
    internal const int Ipv6MinHopCount = 73;

    /// <summary>What the socket options depend on, to tell when a peer's sockets must be set up again: the MD5 key
    /// itself, not only that there is one (a changed password must reach the listener and new connections).
    /// Compared in memory only, never logged.</summary>
    public static string Describe(PeerConfig p) => $"{(p.Password is null ? "" : "md5:" + p.Password)}|{p.TtlSecurityHops}";

    /// <summary>On a connecting or accepted socket: the MD5 key for the peer and the GTSM TTLs.</summary>
    public static void Apply(Socket socket, PeerConfig? peer)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (peer is null)
        {
            return;
        }
        if (peer.Password is { } key)
        {
            SetMd5(socket, peer.Address, key);
        }
        if (peer.TtlSecurityHops > 0)
        {
            bool v6 = socket.AddressFamily == AddressFamily.InterNetworkV6 && !peer.Address.IsIPv4MappedToIPv6 && peer.Address.AddressFamily == AddressFamily.InterNetworkV6;
            int min = 256 - peer.TtlSecurityHops;
            if (v6)
            {
                socket.SetRawSocketOption(IpProtoIpv6, Ipv6UnicastHops, Int(255));
                socket.SetRawSocketOption(IpProtoIpv6, Ipv6MinHopCount, Int(min));
            }
            else
            {
                socket.SetRawSocketOption(IpProtoIp, IpTtl, Int(255));
                socket.SetRawSocketOption(IpProtoIp, IpMinTtl, Int(min));
            }
        }
    }

    /// <summary>On a listening socket: the peer's MD5 key must be known before its SYN arrives, and a GTSM peer's
    /// SYN-ACK must leave with TTL 255.</summary>
    public static void ApplyListener(Socket listener, PeerConfig peer, bool add)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(peer);
        if (peer.Password is { } key)
        {
            SetMd5(listener, peer.Address, add ? key : "");
        }
        if (add && peer.TtlSecurityHops > 0)
        {
            SetListenerTtl(listener, peer.Address);
        }
    }

    /// <summary>
    /// RFC 5082 §3 (i)(a): with GTSM, "set the outbound TTL for the protocol connection to 255". The passive side's
    /// first packet of the connection is the SYN-ACK, and Linux sends it with the listening socket's unicast TTL (the
    /// accepted socket, where <see cref="Apply"/> sets 255, does not exist yet). A peer that sets its minimum TTL
    /// before connecting, as bgpd does, drops a SYN-ACK that left with the default 64: the session never comes up.
    /// Only the outgoing TTL goes on the listener; a minimum there would hold every peer's SYN to this peer's rule,
    /// so each peer's minimum stays on its own accepted socket.
    /// The TTL is not put back when the last GTSM peer goes: 255 is harmless to peers without GTSM (they check no
    /// TTL), and this call sees one peer at a time, so putting it back would need a count of GTSM peers kept in step
    /// with every add and remove, for no difference a peer could notice.
    /// </summary>
    private static void SetListenerTtl(Socket listener, IPAddress peer)
    {
        if (peer.AddressFamily == AddressFamily.InterNetwork || peer.IsIPv4MappedToIPv6)
        {
            // An IPv4 peer reaches an IPv4 listener, or the dual-stack IPv6 one as a v4-mapped address: either way
            // its SYN-ACK is an IPv4 packet, built with the IPv4 TTL (Linux takes IP_TTL on IPv6 sockets too).
            listener.SetRawSocketOption(IpProtoIp, IpTtl, Int(255));
        }
        else if (listener.AddressFamily == AddressFamily.InterNetworkV6)
        {
            // An IPv6 peer can only reach an IPv6 listener (an IPv4 one has no IPv6 options to set).
            listener.SetRawSocketOption(IpProtoIpv6, Ipv6UnicastHops, Int(255));
        }
    }

    private static byte[] Int(int v)
    {
        byte[] b = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(b, v);
        return b;
    }

    /// <summary>struct tcp_md5sig: sockaddr_storage (128), flags, prefixlen, keylen (u16), ifindex (u32), key[80].</summary>
    internal static byte[] Md5Struct(AddressFamily socketFamily, IPAddress peer, string key)
    {
        byte[] k = Encoding.UTF8.GetBytes(key);
        if (k.Length > 80)
        {
            throw new ArgumentException("TCP MD5 keys are at most 80 bytes", nameof(key));
        }
        byte[] s = new byte[216];
        IPAddress a = socketFamily == AddressFamily.InterNetworkV6 && peer.AddressFamily == AddressFamily.InterNetwork ? peer.MapToIPv6() : peer;
        if (a.AddressFamily == AddressFamily.InterNetwork)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(s, 2);
            a.TryWriteBytes(s.AsSpan(4, 4), out _);
        }
        else
        {
            BinaryPrimitives.WriteUInt16LittleEndian(s, 10);
            a.TryWriteBytes(s.AsSpan(8, 16), out _);
        }
        BinaryPrimitives.WriteUInt16LittleEndian(s.AsSpan(130), (ushort)k.Length);
        k.CopyTo(s, 136);
        return s;
    }

    private static void SetMd5(Socket socket, IPAddress peer, string key) =>
        socket.SetRawSocketOption(IpProtoTcp, TcpMd5Sig, Md5Struct(socket.AddressFamily, peer, key));
}
