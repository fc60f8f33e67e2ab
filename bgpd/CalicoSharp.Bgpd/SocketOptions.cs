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
    private const int IpProtoIp = 0;
    private const int IpTtl = 2;
    private const int IpMinTtl = 21;
    private const int IpProtoIpv6 = 41;
    private const int Ipv6UnicastHops = 16;
    private const int Ipv6MinHopCount = 73;

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

    /// <summary>On a listening socket: the peer's MD5 key must be known before its SYN arrives.</summary>
    public static void ApplyListener(Socket listener, PeerConfig peer, bool add)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(peer);
        if (peer.Password is { } key)
        {
            SetMd5(listener, peer.Address, add ? key : "");
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
