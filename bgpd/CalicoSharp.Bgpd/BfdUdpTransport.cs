using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using CalicoSharp.Bgp;
using CalicoSharp.Bgp.Bfd;

namespace CalicoSharp.Bgpd;

/// <summary>
/// BFD over UDP for single-hop sessions (RFC 5881): packets to port 3784 with TTL 255, each session from a source
/// port of its own in 49152–65535 (§4); received on one socket per address family bound to 3784, with the TTL (hop
/// limit) each packet arrived with (IP_RECVTTL, IPV6_RECVHOPLIMIT), which the endpoint checks (§5). It has no thread:
/// <see cref="BfdLoop"/> polls the receiving sockets and calls <see cref="ReceiveAll"/>; sends are non-blocking and
/// happen on that loop.
/// </summary>
public sealed unsafe partial class BfdUdpTransport : IBfdTransport, IDisposable
{
    public const int ControlPort = 3784;
    private const int FirstSourcePort = 49152;
    private const int LastSourcePort = 65535;
    private const string LibC = "libc.so.6";
    private const int IpRecvTtl = 12;
    private const int IpTtlCmsg = 2;
    private const int Ipv6RecvHopLimit = 51;
    private const int Ipv6HopLimitCmsg = 52;
    private const int MsgDontWait = 0x40;

    private readonly Dictionary<BfdSession, (Socket Socket, SocketAddress To)> _tx = [];
    private readonly List<Socket> _rx = [];
    private readonly Action<BgpLogLevel, string> _log;
    private readonly HashSet<string> _reported = [];
    private int _nextPort;

    public BfdUdpTransport(Action<BgpLogLevel, string> log, int port = ControlPort)
    {
        _log = log;
        Port = port;
        _nextPort = FirstSourcePort + Random.Shared.Next(LastSourcePort - FirstSourcePort + 1);
    }

    /// <summary>The destination and listening port (3784; tests may use another).</summary>
    public int Port { get; }

    /// <summary>Datagrams that could not be sent (no route, the interface down), counted, never thrown.</summary>
    public long SendErrors { get; private set; }

    /// <summary>The receiving sockets' descriptors (none before <see cref="Listen"/>, or when neither family could bind).</summary>
    public IReadOnlyList<int> ReceiveDescriptors { get; private set; } = [];

    /// <summary>Opens the receiving sockets, one per address family, bound to <see cref="Port"/>; once.</summary>
    public void Listen()
    {
        if (_rx.Count > 0)
        {
            return;
        }
        foreach (AddressFamily family in new[] { AddressFamily.InterNetwork, AddressFamily.InterNetworkV6 })
        {
            var s = new Socket(family, SocketType.Dgram, ProtocolType.Udp);
            try
            {
                s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
                if (family == AddressFamily.InterNetworkV6)
                {
                    s.DualMode = false;
                    s.SetRawSocketOption(SocketOptions.IpProtoIpv6, Ipv6RecvHopLimit, Int(1));
                    s.Bind(new IPEndPoint(IPAddress.IPv6Any, Port));
                }
                else
                {
                    s.SetRawSocketOption(SocketOptions.IpProtoIp, IpRecvTtl, Int(1));
                    s.Bind(new IPEndPoint(IPAddress.Any, Port));
                }
                _rx.Add(s);
            }
            catch (SocketException e)
            {
                s.Dispose();
                _log(family == AddressFamily.InterNetwork ? BgpLogLevel.Error : BgpLogLevel.Warning,
                    $"BFD: cannot receive {(family == AddressFamily.InterNetwork ? "IPv4" : "IPv6")} on UDP port {Port}: {e.Message}");
            }
        }
        ReceiveDescriptors = [.. _rx.Select(s => (int)s.SafeHandle.DangerousGetHandle())];
    }

    private static byte[] Int(int v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(b, v);
        return b;
    }

    /// <summary>Hands every datagram waiting on the receiving socket <paramref name="fd"/> to the endpoint, with its
    /// source and TTL; returns how many.</summary>
    public int ReceiveAll(int fd, BfdEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        byte* buffer = stackalloc byte[512];
        byte* name = stackalloc byte[128];
        byte* control = stackalloc byte[128];
        int count = 0;
        while (true)
        {
            var iov = new IoVec { Base = buffer, Length = 512 };
            var msg = new MsgHdr { Name = name, NameLength = 128, Iov = &iov, IovLength = 1, Control = control, ControlLength = 128 };
            nint got = recvmsg(fd, &msg, MsgDontWait);
            if (got < 0)
            {
                return count;
            }
            count++;
            if (Source(name, msg.NameLength) is { } source)
            {
                endpoint.Receive(new ReadOnlySpan<byte>(buffer, (int)got), source, Ttl(&msg));
            }
        }
    }

    private static IPAddress? Source(byte* name, uint length)
    {
        ushort family = *(ushort*)name;
        if (family == 2 && length >= 8)
        {
            return new IPAddress(new ReadOnlySpan<byte>(name + 4, 4));
        }
        if (family == 10 && length >= 24)
        {
            var a = new IPAddress(new ReadOnlySpan<byte>(name + 8, 16));
            return a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a;
        }
        return null;
    }

    /// <summary>The TTL or hop limit from the control messages; -1 when the kernel gave none (then the packet fails
    /// the TTL rule).</summary>
    private static int Ttl(MsgHdr* msg)
    {
        nuint align = (nuint)sizeof(nuint);
        nuint header = (nuint)sizeof(CmsgHdr);
        nuint at = 0;
        byte* start = (byte*)msg->Control;
        while (at + header <= msg->ControlLength)
        {
            var c = (CmsgHdr*)(start + at);
            if (c->Length < header || at + c->Length > msg->ControlLength)
            {
                break;
            }
            if ((c->Level == SocketOptions.IpProtoIp && c->Type == IpTtlCmsg) || (c->Level == SocketOptions.IpProtoIpv6 && c->Type == Ipv6HopLimitCmsg))
            {
                return *(int*)(start + at + header);
            }
            at += (c->Length + align - 1) & ~(align - 1);
        }
        return -1;
    }

    public void Open(BfdSession session)
    {
        ArgumentNullException.ThrowIfNull(session);
        TryOpen(session);
    }

    private bool TryOpen(BfdSession session)
    {
        AddressFamily family = session.Peer.AddressFamily;
        var s = new Socket(family, SocketType.Dgram, ProtocolType.Udp) { Blocking = false };
        try
        {
            // RFC 5881 §5: every packet leaves with TTL (hop limit) 255.
            if (family == AddressFamily.InterNetworkV6)
            {
                s.SetRawSocketOption(SocketOptions.IpProtoIpv6, SocketOptions.Ipv6UnicastHops, Int(255));
            }
            else
            {
                s.SetRawSocketOption(SocketOptions.IpProtoIp, SocketOptions.IpTtl, Int(255));
            }
            IPAddress local = session.Local is { } l && l.AddressFamily == family ? l : family == AddressFamily.InterNetwork ? IPAddress.Any : IPAddress.IPv6Any;
            BindSourcePort(s, local);
            _tx[session] = (s, new IPEndPoint(session.Peer, Port).Serialize());
            _reported.Remove(session.Name);
            return true;
        }
        catch (SocketException e)
        {
            s.Dispose();
            Report(session, $"cannot open its socket: {e.Message}");
            return false;
        }
    }

    /// <summary>RFC 5881 §4: a source port in 49152–65535, the same for the whole session, unique among sessions.</summary>
    private void BindSourcePort(Socket s, IPAddress local)
    {
        const int range = LastSourcePort - FirstSourcePort + 1;
        for (int tries = 0; ; tries++)
        {
            int port = _nextPort;
            _nextPort = port == LastSourcePort ? FirstSourcePort : port + 1;
            try
            {
                s.Bind(new IPEndPoint(local, port));
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressAlreadyInUse && tries < range)
            {
            }
        }
    }

    public void Send(BfdSession session, ReadOnlySpan<byte> packet)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (!_tx.TryGetValue(session, out (Socket Socket, SocketAddress To) tx))
        {
            if (!TryOpen(session))
            {
                SendErrors++;
                return;
            }
            tx = _tx[session];
        }
        try
        {
            tx.Socket.SendTo(packet, SocketFlags.None, tx.To);
        }
        catch (SocketException e)
        {
            // No route (the link is down), a full buffer, an ICMP error of an earlier packet: this packet is lost,
            // as on a lossy link; the session's timers decide what it means.
            SendErrors++;
            Report(session, $"send failed: {e.Message}");
        }
    }

    private void Report(BfdSession session, string problem)
    {
        if (_reported.Add(session.Name))
        {
            _log(BgpLogLevel.Warning, $"BFD {session.Name}: {problem} (logged once until it works again)");
        }
    }

    public void Close(BfdSession session)
    {
        ArgumentNullException.ThrowIfNull(session);
        if (_tx.Remove(session, out (Socket Socket, SocketAddress To) tx))
        {
            tx.Socket.Dispose();
        }
    }

    public void Dispose()
    {
        ReceiveDescriptors = [];
        foreach (Socket s in _rx)
        {
            s.Dispose();
        }
        _rx.Clear();
        foreach ((Socket s, _) in _tx.Values)
        {
            s.Dispose();
        }
        _tx.Clear();
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct CmsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    [LibraryImport(LibC, SetLastError = true)]
    private static partial nint recvmsg(int fd, MsgHdr* msg, int flags);
}
