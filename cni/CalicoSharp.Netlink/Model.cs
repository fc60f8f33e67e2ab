using System.Net;
using System.Net.NetworkInformation;

namespace CalicoSharp.Netlink;

/// <summary>A network interface as the kernel reports it.</summary>
public sealed record Link(int Index, string Name, uint Flags, int Mtu, PhysicalAddress? Mac, string? Kind, int ParentIndex, string? Alias = null)
{
    public bool IsUp => (Flags & Rt.IFF_UP) != 0;
}

/// <summary>An address on an interface.</summary>
public sealed record InterfaceAddress(int Index, IPAddress Address, int PrefixLength, byte Scope, uint Flags);

/// <summary>One next hop of a multipath route.</summary>
public sealed record NextHop(IPAddress? Gateway, int OutIndex, byte Weight = 1, uint Flags = 0);

/// <summary>A route: destination, where it goes, and the attributes that identify it.</summary>
public sealed record Route
{
    public required IPAddress Destination { get; init; }

    public required int PrefixLength { get; init; }

    public IPAddress? Gateway { get; init; }

    /// <summary>Output interface index; 0 for none (a blackhole, or a multipath route).</summary>
    public int OutIndex { get; init; }

    public byte Protocol { get; init; } = Rt.RTPROT_BOOT;

    public byte Scope { get; init; } = Rt.RT_SCOPE_UNIVERSE;

    public uint Table { get; init; } = Rt.RT_TABLE_MAIN;

    public byte Type { get; init; } = Rt.RTN_UNICAST;

    public uint Priority { get; init; }

    public uint Flags { get; init; }

    public IPAddress? PreferredSource { get; init; }

    public IReadOnlyList<NextHop> MultiPath { get; init; } = [];

    public bool IsIPv6 => Destination.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6;

    public override string ToString()
    {
        var s = $"{(Type == Rt.RTN_BLACKHOLE ? "blackhole " : string.Empty)}{Destination}/{PrefixLength}";
        if (Gateway is not null)
        {
            s += $" via {Gateway}";
        }

        if (OutIndex != 0)
        {
            s += $" dev #{OutIndex}";
        }

        foreach (var h in MultiPath)
        {
            s += $" nexthop via {h.Gateway} dev #{h.OutIndex} weight {h.Weight}";
        }

        return s + $" proto {Protocol} scope {Scope} table {Table}";
    }
}

/// <summary>How one route of a batch is written (<see cref="RtNetlink.ApplyRoutes(IReadOnlyList{ValueTuple{Route, RouteChange}})"/>).</summary>
public enum RouteChange
{
    /// <summary>Create the route, or replace the route that holds its place (table, destination, metric), whichever
    /// program installed that one (NLM_F_CREATE | NLM_F_REPLACE).</summary>
    Replace,

    /// <summary>Create the route only where no route is: the kernel refuses with EEXIST otherwise (NLM_F_CREATE |
    /// NLM_F_EXCL), so a route another program installed is never overwritten.</summary>
    Create,

    /// <summary>Delete the route; the request carries the route's protocol, which the kernel matches.</summary>
    Delete,
}

/// <summary>A neighbour (ARP/NDP) entry.</summary>
public sealed record Neighbour(int Index, IPAddress Address, PhysicalAddress? Mac, ushort State);
