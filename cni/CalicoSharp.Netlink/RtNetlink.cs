using System.Buffers.Binary;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using Tmds.Linux;

namespace CalicoSharp.Netlink;

/// <summary>rtnetlink operations on links, addresses, routes and neighbours, in the namespace the
/// socket was opened in.</summary>
public sealed class RtNetlink : IDisposable
{
    /// <summary>RT_TABLE_COMPAT: rtm_table's value when the table id does not fit its byte.</summary>
    private const byte RtTableCompat = 252;

    private readonly NetlinkSocket socket;

    public RtNetlink(NetlinkSocket socket) => this.socket = socket ?? throw new ArgumentNullException(nameof(socket));

    /// <summary>Opens rtnetlink in the calling thread's namespace.</summary>
    public static RtNetlink Open() => new(NetlinkSocket.Open());

    /// <summary>Opens rtnetlink inside a namespace.</summary>
    public static RtNetlink Open(NetNs ns) => new(NetlinkSocket.Open(ns));

    public void Dispose() => socket.Dispose();

    private void Request((MessageBuilder Message, string Operation) request) => socket.Request(request.Message, request.Operation);

    /// <summary>Starts a batch: requests sent to the kernel in one system call and applied in order.</summary>
    public Batch NewBatch() => new(socket);

    /// <summary>Changes sent together (<see cref="Commit"/>): one system call and one wait instead of one per
    /// request. The kernel applies them in order, so a later one may depend on an earlier one (a route via a
    /// gateway after the route to that gateway).</summary>
    public sealed class Batch
    {
        private readonly NetlinkSocket socket;
        private readonly List<MessageBuilder> messages = [];
        private readonly List<string> operations = [];

        internal Batch(NetlinkSocket socket) => this.socket = socket;

        public Batch SetLinkUp(int index) => Add(LinkUp(index, true, null, null));

        public Batch AddAddress(int index, IPAddress address, int prefixLength, bool noDad = false, bool replace = false) =>
            Add(NewAddress(index, address, prefixLength, noDad, replace));

        public Batch AddRoute(Route route, bool replace = false) => Add(NewRoute(route, replace));

        public Batch AddNeighbour(int index, IPAddress address, PhysicalAddress mac, ushort state = Rt.NUD_PERMANENT) =>
            Add(NewNeighbour(index, address, mac, state));

        /// <summary>Sends the batch; throws the first refusal (the kernel still tries every request).</summary>
        public void Commit()
        {
            foreach (var error in socket.RequestMany(messages, i => operations[i]))
            {
                if (error is not null)
                {
                    throw error;
                }
            }
        }

        private Batch Add((MessageBuilder Message, string Operation) request)
        {
            messages.Add(request.Message);
            operations.Add(request.Operation);
            return this;
        }
    }

    // ---- links ----------------------------------------------------------------------------------

    /// <summary>Creates a veth pair and returns this end as made; its <see cref="Link.ParentIndex"/> is the peer's
    /// index (in the peer's namespace). The peer is placed straight into <paramref name="peerNs"/> (no window in
    /// which it is visible here) when given. Both ends are created down (the peer cannot be created up: it is
    /// opened before it is paired, and veth refuses that with ENOTCONN). Fails with EEXIST when either name is
    /// taken in its namespace.</summary>
    public Link CreateVeth(string name, string peerName, NetNs? peerNs, int mtu = 0, PhysicalAddress? mac = null, PhysicalAddress? peerMac = null)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(peerName);
        var m = new MessageBuilder(Rt.RTM_NEWLINK, Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | Nl.NLM_F_EXCL);
        m.IfInfo(Rt.AF_UNSPEC, 0);
        m.AttrString(Rt.IFLA_IFNAME, name);
        if (mtu > 0)
        {
            m.AttrU32(Rt.IFLA_MTU, (uint)mtu);
        }

        if (mac is not null)
        {
            m.Attr(Rt.IFLA_ADDRESS, mac.GetAddressBytes());
        }

        using (m.Nested(Rt.IFLA_LINKINFO))
        {
            m.AttrString(Rt.IFLA_INFO_KIND, "veth");
            using (m.Nested(Rt.IFLA_INFO_DATA))
            {
                using (m.Nested(Rt.VETH_INFO_PEER))
                {
                    m.IfInfo(Rt.AF_UNSPEC, 0);
                    m.AttrString(Rt.IFLA_IFNAME, peerName);
                    if (mtu > 0)
                    {
                        m.AttrU32(Rt.IFLA_MTU, (uint)mtu);
                    }

                    if (peerMac is not null)
                    {
                        m.Attr(Rt.IFLA_ADDRESS, peerMac.GetAddressBytes());
                    }

                    if (peerNs is not null)
                    {
                        m.AttrU32(Rt.IFLA_NET_NS_FD, (uint)peerNs.Fd);
                    }
                }
            }
        }

        string operation = $"creating veth {name} (peer {peerName}{(peerNs is null ? string.Empty : $" in {peerNs.Path}")})";
        socket.Request(m, operation);
        return GetLink(name) ?? throw new NetlinkException($"{operation}: {name} vanished after creation");
    }

    /// <summary>The link with this name, or null.</summary>
    public Link? GetLink(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var m = new MessageBuilder(Rt.RTM_GETLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, 0);
        m.AttrString(Rt.IFLA_IFNAME, name);
        return QueryOne(m, $"getting link {name}", ParseLink, e => e.NotFound);
    }

    public Link? GetLink(int index)
    {
        var m = new MessageBuilder(Rt.RTM_GETLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, index);
        return QueryOne(m, $"getting link #{index}", ParseLink, e => e.NotFound);
    }

    public List<Link> ListLinks()
    {
        var m = new MessageBuilder(Rt.RTM_GETLINK, Nl.NLM_F_REQUEST | Nl.NLM_F_DUMP);
        m.IfInfo(Rt.AF_UNSPEC, 0);
        return [.. socket.Query(m, "listing links").Where(x => x.Type == Rt.RTM_NEWLINK).Select(x => ParseLink(x.Payload))];
    }

    /// <summary>Sets a link up or down and, in the same message, the interface's IPv4 settings given as
    /// IPV4_DEVCONF_* ids and values (what net.ipv4.conf.&lt;interface&gt;.* holds) and its alias (ifalias: the
    /// kernel ignores an alias in the message that creates a link, so it travels here).</summary>
    public void SetLinkUp(int index, bool up = true, IReadOnlyList<(ushort Id, uint Value)>? ipv4Conf = null, string? alias = null) =>
        Request(LinkUp(index, up, ipv4Conf, alias));

    private static (MessageBuilder Message, string Operation) LinkUp(int index, bool up, IReadOnlyList<(ushort Id, uint Value)>? ipv4Conf, string? alias)
    {
        var m = new MessageBuilder(Rt.RTM_NEWLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, index, up ? Rt.IFF_UP : 0, Rt.IFF_UP);
        if (alias is not null)
        {
            m.AttrString(Rt.IFLA_IFALIAS, alias);
        }

        if (ipv4Conf is { Count: > 0 })
        {
            using (m.Nested(Rt.IFLA_AF_SPEC))
            using (m.Nested(Rt.AF_INET))
            using (m.Nested(Rt.IFLA_INET_CONF))
            {
                foreach (var (id, value) in ipv4Conf)
                {
                    m.AttrU32(id, value);
                }
            }
        }

        return (m, $"setting link #{index} {(up ? "up" : "down")}{(ipv4Conf is { Count: > 0 } ? " and its IPv4 settings" : string.Empty)}{(alias is null ? string.Empty : $" (alias '{alias}')")}");
    }

    public void SetMtu(int index, int mtu)
    {
        var m = new MessageBuilder(Rt.RTM_NEWLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, index);
        m.AttrU32(Rt.IFLA_MTU, (uint)mtu);
        socket.Request(m, $"setting MTU {mtu} on link #{index}");
    }

    public void SetMac(int index, PhysicalAddress mac)
    {
        ArgumentNullException.ThrowIfNull(mac);
        var m = new MessageBuilder(Rt.RTM_NEWLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, index);
        m.Attr(Rt.IFLA_ADDRESS, mac.GetAddressBytes());
        socket.Request(m, $"setting MAC {mac} on link #{index}");
    }

    /// <summary>Deletes a link; false when it does not exist.</summary>
    public bool DeleteLink(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var m = new MessageBuilder(Rt.RTM_DELLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, 0);
        m.AttrString(Rt.IFLA_IFNAME, name);
        return RequestIfPresent(m, $"deleting link {name}", e => e.NotFound);
    }

    /// <summary>Deletes the link with this index; false when it does not exist. Unlike a name, an index is not
    /// given to another link soon after, so a link that was inspected is the one deleted.</summary>
    public bool DeleteLink(int index)
    {
        var m = new MessageBuilder(Rt.RTM_DELLINK, Nl.NLM_F_REQUEST);
        m.IfInfo(Rt.AF_UNSPEC, index);
        return RequestIfPresent(m, $"deleting link #{index}", e => e.NotFound);
    }

    // ---- addresses --------------------------------------------------------------------------------

    public void AddAddress(int index, IPAddress address, int prefixLength, bool noDad = false, bool replace = false) =>
        Request(NewAddress(index, address, prefixLength, noDad, replace));

    private static (MessageBuilder Message, string Operation) NewAddress(int index, IPAddress address, int prefixLength, bool noDad, bool replace)
    {
        ArgumentNullException.ThrowIfNull(address);
        var m = AddressMessage(Rt.RTM_NEWADDR, (ushort)(Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | (replace ? Nl.NLM_F_REPLACE : Nl.NLM_F_EXCL)), index, address, prefixLength);
        if (noDad)
        {
            m.AttrU32(Rt.IFA_FLAGS, Rt.IFA_F_NODAD);
        }

        return (m, $"adding address {address}/{prefixLength} to link #{index}");
    }

    public bool DeleteAddress(int index, IPAddress address, int prefixLength)
    {
        ArgumentNullException.ThrowIfNull(address);
        return RequestIfPresent(AddressMessage(Rt.RTM_DELADDR, Nl.NLM_F_REQUEST, index, address, prefixLength),
            $"deleting address {address}/{prefixLength} from link #{index}", e => e.NotFound || e.Errno == LibC.EADDRNOTAVAIL);
    }

    public List<InterfaceAddress> ListAddresses(int index = 0, AddressFamily family = AddressFamily.Unspecified)
    {
        var m = new MessageBuilder(Rt.RTM_GETADDR, Nl.NLM_F_REQUEST | Nl.NLM_F_DUMP);
        m.IfAddr(Family(family), 0, 0, 0, index);
        var list = new List<InterfaceAddress>();
        foreach (var msg in socket.Query(m, "listing addresses"))
        {
            if (msg.Type != Rt.RTM_NEWADDR)
            {
                continue;
            }

            var p = msg.Payload;
            int idx = BinaryPrimitives.ReadInt32LittleEndian(p.AsSpan(4));
            if (index != 0 && idx != index)
            {
                continue;
            }

            IPAddress? addr = null, local = null;
            uint flags = p[2];
            var a = new AttributeReader(p.AsSpan(Rt.IfAddrMsgSize));
            while (a.Next())
            {
                switch (a.Type)
                {
                    case Rt.IFA_ADDRESS: addr = a.Address; break;
                    case Rt.IFA_LOCAL: local = a.Address; break;
                    case Rt.IFA_FLAGS: flags = a.U32; break;
                }
            }

            if ((local ?? addr) is { } ip)
            {
                list.Add(new InterfaceAddress(idx, ip, p[1], p[3], flags));
            }
        }

        return list;
    }

    private static MessageBuilder AddressMessage(ushort type, ushort flags, int index, IPAddress address, int prefixLength)
    {
        var m = new MessageBuilder(type, flags);
        bool v6 = address.AddressFamily == AddressFamily.InterNetworkV6;
        m.IfAddr(v6 ? Rt.AF_INET6 : Rt.AF_INET, (byte)prefixLength, 0, Rt.RT_SCOPE_UNIVERSE, index);
        m.AttrAddress(Rt.IFA_LOCAL, address);
        m.AttrAddress(Rt.IFA_ADDRESS, address);
        return m;
    }

    // ---- routes -----------------------------------------------------------------------------------

    /// <summary>Adds a route; with <paramref name="replace"/>, adds or replaces (ip route replace).</summary>
    public void AddRoute(Route route, bool replace = false) => Request(NewRoute(route, replace));

    private static (MessageBuilder Message, string Operation) NewRoute(Route route, bool replace)
    {
        ArgumentNullException.ThrowIfNull(route);
        var flags = (ushort)(Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | (replace ? Nl.NLM_F_REPLACE : Nl.NLM_F_EXCL));
        return (RouteMessage(Rt.RTM_NEWROUTE, flags, route), $"{(replace ? "replacing" : "adding")} route {route}");
    }

    /// <summary>Deletes a route; false when it does not exist.</summary>
    public bool DeleteRoute(Route route)
    {
        ArgumentNullException.ThrowIfNull(route);
        return RequestIfPresent(RouteMessage(Rt.RTM_DELROUTE, Nl.NLM_F_REQUEST, route), $"deleting route {route}", e => e.NotFound);
    }

    /// <summary>Replaces or deletes many routes, <see cref="NetlinkSocket.BatchSize"/> per system call; returns per
    /// change null or its error (deleting a route that is not there is not one).</summary>
    public NetlinkException?[] ApplyRoutes(IReadOnlyList<(Route Route, bool Delete)> changes)
    {
        ArgumentNullException.ThrowIfNull(changes);
        return ApplyRoutes([.. changes.Select(c => (c.Route, c.Delete ? RouteChange.Delete : RouteChange.Replace))]);
    }

    /// <summary>Writes many routes, each as its <see cref="RouteChange"/> says, <see cref="NetlinkSocket.BatchSize"/>
    /// per system call; returns per change null or its error (deleting a route that is not there is not one; creating
    /// one where a route already is fails with EEXIST, <see cref="NetlinkException.Exists"/>).</summary>
    public NetlinkException?[] ApplyRoutes(IReadOnlyList<(Route Route, RouteChange Change)> changes)
    {
        ArgumentNullException.ThrowIfNull(changes);
        var messages = new MessageBuilder[changes.Count];
        for (int i = 0; i < changes.Count; i++)
        {
            (Route r, RouteChange change) = changes[i];
            messages[i] = change switch
            {
                RouteChange.Delete => RouteMessage(Rt.RTM_DELROUTE, Nl.NLM_F_REQUEST, r),
                RouteChange.Create => RouteMessage(Rt.RTM_NEWROUTE, (ushort)(Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | Nl.NLM_F_EXCL), r),
                _ => RouteMessage(Rt.RTM_NEWROUTE, (ushort)(Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | Nl.NLM_F_REPLACE), r),
            };
        }
        NetlinkException?[] errors = socket.RequestMany(messages, i => $"{changes[i].Change switch
        {
            RouteChange.Delete => "deleting",
            RouteChange.Create => "adding",
            _ => "replacing",
        }} route {changes[i].Route}");
        for (int i = 0; i < errors.Length; i++)
        {
            if (changes[i].Change == RouteChange.Delete && errors[i] is { NotFound: true })
            {
                errors[i] = null;
            }
        }
        return errors;
    }

    /// <summary>Routes of one family, optionally of one table (0: all tables).</summary>
    public List<Route> ListRoutes(AddressFamily family, uint table = Rt.RT_TABLE_MAIN)
    {
        var m = new MessageBuilder(Rt.RTM_GETROUTE, Nl.NLM_F_REQUEST | Nl.NLM_F_DUMP);
        m.RtMsg(Family(family), 0, 0, 0, 0, 0);
        var list = new List<Route>();
        foreach (var msg in socket.Query(m, "listing routes"))
        {
            if (msg.Type == Rt.RTM_NEWROUTE && ParseRoute(msg.Payload) is { } r && (table == 0 || r.Table == table))
            {
                list.Add(r);
            }
        }

        return list;
    }

    /// <summary>What the kernel would do with a packet to <paramref name="destination"/> (ip route get); with
    /// <paramref name="fibMatch"/>, the matching table entry itself (ip route get fibmatch: its prefix, protocol, type).</summary>
    public Route? GetRoute(IPAddress destination, bool fibMatch = false)
    {
        ArgumentNullException.ThrowIfNull(destination);
        bool v6 = destination.AddressFamily == AddressFamily.InterNetworkV6;
        var m = new MessageBuilder(Rt.RTM_GETROUTE, Nl.NLM_F_REQUEST);
        m.RtMsg(v6 ? Rt.AF_INET6 : Rt.AF_INET, (byte)(v6 ? 128 : 32), 0, 0, 0, 0, fibMatch ? Rt.RTM_F_FIB_MATCH : 0u);
        m.AttrAddress(Rt.RTA_DST, destination);
        return QueryOne(m, $"getting the route to {destination}", ParseRoute, e => e.Errno == LibC.ENETUNREACH || e.Errno == LibC.EHOSTUNREACH || e.Errno == LibC.EINVAL);
    }

    /// <summary>The route that decides where a packet to <paramref name="destination"/> goes, like
    /// <c>ip route get fibmatch</c>; for a destination the kernel refuses to resolve (it answers EINVAL when a
    /// blackhole, unreachable or prohibit route matches) the longest match of the main table's dump instead.</summary>
    public Route? MatchRoute(IPAddress destination)
    {
        if (GetRoute(destination, fibMatch: true) is { } r)
        {
            return r;
        }
        byte[] want = destination.GetAddressBytes();
        Route? best = null;
        foreach (Route c in ListRoutes(destination.AddressFamily))
        {
            if (c.Type is Rt.RTN_BLACKHOLE or Rt.RTN_UNREACHABLE or Rt.RTN_PROHIBIT
                && (best is null || c.PrefixLength > best.PrefixLength) && PrefixContains(c.Destination.GetAddressBytes(), c.PrefixLength, want))
            {
                best = c;
            }
        }
        return best;
    }

    private static bool PrefixContains(byte[] prefix, int length, byte[] address)
    {
        if (prefix.Length != address.Length)
        {
            return false;
        }
        int full = length / 8, rest = length % 8;
        return prefix.AsSpan(0, full).SequenceEqual(address.AsSpan(0, full))
            && (rest == 0 || ((prefix[full] ^ address[full]) & (0xFF << (8 - rest)) & 0xFF) == 0);
    }

    private static MessageBuilder RouteMessage(ushort type, ushort flags, Route r)
    {
        var m = new MessageBuilder(type, flags);
        bool v6 = r.IsIPv6;
        byte table = r.Table < 256 ? (byte)r.Table : RtTableCompat; // the real one in RTA_TABLE
        m.RtMsg(v6 ? Rt.AF_INET6 : Rt.AF_INET, (byte)r.PrefixLength, table, r.Protocol, r.Scope, r.Type, r.Flags);
        m.AttrAddress(Rt.RTA_DST, r.Destination);
        m.AttrU32(Rt.RTA_TABLE, r.Table);
        if (r.Gateway is not null)
        {
            m.AttrAddress(Rt.RTA_GATEWAY, r.Gateway);
        }

        if (r.OutIndex != 0)
        {
            m.AttrU32(Rt.RTA_OIF, (uint)r.OutIndex);
        }

        if (r.Priority != 0)
        {
            m.AttrU32(Rt.RTA_PRIORITY, r.Priority);
        }

        if (r.PreferredSource is not null)
        {
            m.AttrAddress(Rt.RTA_PREFSRC, r.PreferredSource);
        }

        if (r.MultiPath.Count > 0)
        {
            using (m.Nested(Rt.RTA_MULTIPATH))
            {
                foreach (var hop in r.MultiPath)
                {
                    using var nh = m.Sized(Rt.RtNextHopSize);
                    var header = m.At(nh.Start, Rt.RtNextHopSize);
                    header[2] = (byte)hop.Flags;
                    header[3] = (byte)Math.Max(0, hop.Weight - 1);
                    BinaryPrimitives.WriteInt32LittleEndian(header[4..], hop.OutIndex);
                    if (hop.Gateway is not null)
                    {
                        m.AttrAddress(Rt.RTA_GATEWAY, hop.Gateway);
                    }
                }
            }
        }

        return m;
    }

    private static Route? ParseRoute(byte[] p)
    {
        if (p.Length < Rt.RtMsgSize)
        {
            return null;
        }

        byte family = p[0], dstLen = p[1], protocol = p[5], scope = p[6], type = p[7];
        uint table = p[4];
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(8));
        IPAddress? dst = null, gw = null, src = null;
        int oif = 0;
        uint prio = 0;
        var hops = new List<NextHop>();
        var a = new AttributeReader(p.AsSpan(Rt.RtMsgSize));
        while (a.Next())
        {
            switch (a.Type)
            {
                case Rt.RTA_DST: dst = a.Address; break;
                case Rt.RTA_GATEWAY: gw = a.Address; break;
                case Rt.RTA_OIF: oif = (int)a.U32; break;
                case Rt.RTA_TABLE: table = a.U32; break;
                case Rt.RTA_PRIORITY: prio = a.U32; break;
                case Rt.RTA_PREFSRC: src = a.Address; break;
                case Rt.RTA_MULTIPATH: hops = ParseNextHops(a.Value); break;
            }
        }

        dst ??= family == Rt.AF_INET6 ? IPAddress.IPv6Any : IPAddress.Any;
        return new Route
        {
            Destination = dst,
            PrefixLength = dstLen,
            Gateway = gw,
            OutIndex = oif,
            Protocol = protocol,
            Scope = scope,
            Table = table,
            Type = type,
            Priority = prio,
            Flags = flags,
            PreferredSource = src,
            MultiPath = hops,
        };
    }

    private static List<NextHop> ParseNextHops(ReadOnlySpan<byte> data)
    {
        var hops = new List<NextHop>();
        while (data.Length >= Rt.RtNextHopSize)
        {
            int len = BinaryPrimitives.ReadUInt16LittleEndian(data);
            if (len < Rt.RtNextHopSize || len > data.Length)
            {
                break;
            }

            byte flags = data[2], hops1 = data[3];
            int ifindex = BinaryPrimitives.ReadInt32LittleEndian(data[4..]);
            IPAddress? gw = null;
            var a = new AttributeReader(data[Rt.RtNextHopSize..len]);
            while (a.Next())
            {
                if (a.Type == Rt.RTA_GATEWAY)
                {
                    gw = a.Address;
                }
            }

            hops.Add(new NextHop(gw, ifindex, (byte)(hops1 + 1), flags));
            data = data[Math.Min(data.Length, MessageBuilder.Align(len))..];
        }

        return hops;
    }

    // ---- neighbours -------------------------------------------------------------------------------

    /// <summary>Adds (or replaces) a neighbour entry; permanent by default.</summary>
    public void AddNeighbour(int index, IPAddress address, PhysicalAddress mac, ushort state = Rt.NUD_PERMANENT) =>
        Request(NewNeighbour(index, address, mac, state));

    private static (MessageBuilder Message, string Operation) NewNeighbour(int index, IPAddress address, PhysicalAddress mac, ushort state)
    {
        ArgumentNullException.ThrowIfNull(address);
        ArgumentNullException.ThrowIfNull(mac);
        var m = new MessageBuilder(Rt.RTM_NEWNEIGH, Nl.NLM_F_REQUEST | Nl.NLM_F_CREATE | Nl.NLM_F_REPLACE);
        m.NdMsg(address.AddressFamily == AddressFamily.InterNetworkV6 ? Rt.AF_INET6 : Rt.AF_INET, index, state);
        m.AttrAddress(Rt.NDA_DST, address);
        m.Attr(Rt.NDA_LLADDR, mac.GetAddressBytes());
        return (m, $"adding neighbour {address} lladdr {mac} on link #{index}");
    }

    public bool DeleteNeighbour(int index, IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        var m = new MessageBuilder(Rt.RTM_DELNEIGH, Nl.NLM_F_REQUEST);
        m.NdMsg(address.AddressFamily == AddressFamily.InterNetworkV6 ? Rt.AF_INET6 : Rt.AF_INET, index, 0);
        m.AttrAddress(Rt.NDA_DST, address);
        return RequestIfPresent(m, $"deleting neighbour {address} on link #{index}", e => e.NotFound);
    }

    public List<Neighbour> ListNeighbours(int index = 0, AddressFamily family = AddressFamily.Unspecified)
    {
        // Strict dump checking wants a zero index in the header; the filter is applied here.
        var m = new MessageBuilder(Rt.RTM_GETNEIGH, Nl.NLM_F_REQUEST | Nl.NLM_F_DUMP);
        m.NdMsg(Family(family), 0, 0);
        var list = new List<Neighbour>();
        foreach (var msg in socket.Query(m, "listing neighbours"))
        {
            if (msg.Type != Rt.RTM_NEWNEIGH || msg.Payload.Length < Rt.NdMsgSize)
            {
                continue;
            }

            var p = msg.Payload;
            int idx = BinaryPrimitives.ReadInt32LittleEndian(p.AsSpan(4));
            ushort state = BinaryPrimitives.ReadUInt16LittleEndian(p.AsSpan(8));
            IPAddress? dst = null;
            PhysicalAddress? mac = null;
            var a = new AttributeReader(p.AsSpan(Rt.NdMsgSize));
            while (a.Next())
            {
                switch (a.Type)
                {
                    case Rt.NDA_DST: dst = a.Address; break;
                    case Rt.NDA_LLADDR: mac = new PhysicalAddress(a.Value.ToArray()); break;
                }
            }

            if (dst is not null && (index == 0 || idx == index))
            {
                list.Add(new Neighbour(idx, dst, mac, state));
            }
        }

        return list;
    }

    /// <summary>A get answered by one message; null when <paramref name="absent"/> says the kernel found none.</summary>
    private T? QueryOne<T>(MessageBuilder m, string operation, Func<byte[], T?> parse, Func<NetlinkException, bool> absent)
        where T : class
    {
        try
        {
            var reply = socket.Query(m, operation);
            return reply.Count == 0 ? null : parse(reply[0].Payload);
        }
        catch (NetlinkException e) when (absent(e))
        {
            return null;
        }
    }

    /// <summary>A request on an object that may be gone already: false when <paramref name="absent"/> says so.</summary>
    private bool RequestIfPresent(MessageBuilder m, string operation, Func<NetlinkException, bool> absent)
    {
        try
        {
            socket.Request(m, operation);
            return true;
        }
        catch (NetlinkException e) when (absent(e))
        {
            return false;
        }
    }

    private static byte Family(AddressFamily f) => f switch
    {
        AddressFamily.InterNetwork => Rt.AF_INET,
        AddressFamily.InterNetworkV6 => Rt.AF_INET6,
        _ => Rt.AF_UNSPEC,
    };

    private static Link ParseLink(byte[] p)
    {
        int index = BinaryPrimitives.ReadInt32LittleEndian(p.AsSpan(4));
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(p.AsSpan(8));
        string name = string.Empty;
        int mtu = 0, parent = 0;
        PhysicalAddress? mac = null;
        string? kind = null, alias = null;
        var a = new AttributeReader(p.AsSpan(Rt.IfInfoMsgSize));
        while (a.Next())
        {
            switch (a.Type)
            {
                case Rt.IFLA_IFNAME: name = a.Text; break;
                case Rt.IFLA_MTU: mtu = (int)a.U32; break;
                case Rt.IFLA_ADDRESS: mac = new PhysicalAddress(a.Value.ToArray()); break;
                case Rt.IFLA_LINK: parent = (int)a.U32; break;
                case Rt.IFLA_IFALIAS: alias = a.Text; break;
                case Rt.IFLA_LINKINFO:
                    var info = new AttributeReader(a.Value);
                    while (info.Next())
                    {
                        if (info.Type == Rt.IFLA_INFO_KIND)
                        {
                            kind = info.Text;
                        }
                    }

                    break;
            }
        }

        return new Link(index, name, flags, mtu, mac, kind, parent, alias);
    }
}
