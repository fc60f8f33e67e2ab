using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using CalicoSharp.Ipam;
using CalicoSharp.Netlink;

namespace CalicoSharp.Cni;

/// <summary>Wires a pod to its node. Implementations: <see cref="LinuxDataplane"/> (netlink), and fakes in tests.</summary>
public interface IDataplane
{
    /// <summary>The first half of ADD, which needs no address: the pod's interfaces for the given families,
    /// configured and up. Calls <paramref name="afterStep"/> after each step (tests inject failures there).</summary>
    IPreparedPod Prepare(PluginContext ctx, PodFamilies families, Action<string> afterStep);

    /// <summary>Removes what ADD made; a missing namespace or link is not an error.</summary>
    void Teardown(PluginContext ctx);

    /// <summary>Removes what a failing ADD made, and only that: an interface that was there before it (the
    /// pod's name taken) is not this ADD's to remove.</summary>
    void UndoAdd(PluginContext ctx) => Teardown(ctx);

    /// <summary>Verifies the pod's wiring against a previous result; throws naming what differs.</summary>
    void Check(PluginContext ctx, CniResult prev);
}

/// <summary>A pod whose interfaces exist (<see cref="IDataplane.Prepare"/>) and wait for their addresses.</summary>
public interface IPreparedPod : IDisposable
{
    /// <summary>The second half of ADD: addresses, routes and neighbour entries; returns the result's interfaces.</summary>
    List<CniInterface> Complete(IReadOnlyList<CniIp> ips, Action<string> afterStep);
}

/// <summary>Which address families a pod is given.</summary>
public readonly record struct PodFamilies(bool V4, bool V6)
{
    public static PodFamilies Of(IReadOnlyList<CniIp> ips) => new(ips.Any(i => !i.IsIPv6), ips.Any(i => i.IsIPv6));
}

/// <summary>The dataplane conventions (Calico's): host veth "cali" + 11 hex of sha1(namespace.pod),
/// MAC ee:ee:ee:ee:ee:ee, proxy ARP, /32 host route; in the pod a /32 (or /128), a link route to
/// 169.254.1.1, default via it, and a permanent neighbour entry for it.</summary>
public sealed class LinuxDataplane(NetNs? hostNs = null) : IDataplane
{
    public static readonly PhysicalAddress HostMac = PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE");
    public static readonly IPAddress GatewayV4 = IPAddress.Parse("169.254.1.1");
    public static readonly IPAddress GatewayV6 = IPAddress.Parse("fe80::ecee:eeff:feee:eeee");
    public const string MacText = "ee:ee:ee:ee:ee:ee";

    public static string HostVethName(CniEnv env)
    {
        ArgumentNullException.ThrowIfNull(env);
        return HostInterface.Name(env.PodNamespace, env.PodName, env.ContainerId);
    }

    /// <summary>The host end's alias (ifalias), which records the container that owns it: the name comes from the
    /// pod (Calico's), so when kubelet recreates a pod's sandbox two containers ask for the same name, and only
    /// the alias tells a late DEL of the old one that the interface is no longer its own.</summary>
    public static string OwnerAlias(string containerId) => OwnerPrefix + containerId;

    private const string OwnerPrefix = "calicosharp:";

    /// <summary>The container recorded on a host end, or null when it carries no alias of ours (made before
    /// aliases were written, or by a failed ADD before its link-up).</summary>
    public static string? OwnerOf(Link link)
    {
        ArgumentNullException.ThrowIfNull(link);
        return link.Alias is { } a && a.StartsWith(OwnerPrefix, StringComparison.Ordinal) ? a[OwnerPrefix.Length..] : null;
    }

    /// <summary>The host end's IPv4 settings (net.ipv4.conf.&lt;cali…&gt;): proxy ARP answers the pod's ARP for
    /// 169.254.1.1 should its neighbour entry go; forwarding routes what the pod sends.</summary>
    private static readonly (ushort Id, uint Value)[] HostIPv4Conf = [(Netlink.Rt.IPV4_DEVCONF_PROXY_ARP, 1), (Netlink.Rt.IPV4_DEVCONF_FORWARDING, 1)];

    public IPreparedPod Prepare(PluginContext ctx, PodFamilies families, Action<string> afterStep)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(afterStep);
        var env = ctx.Env;
        var hostName = HostVethName(env);
        bool v4 = families.V4, v6 = families.V6;
        var ns = OpenNetns(env.Netns);
        RtNetlink? host = null, pod = null;
        try
        {
            host = OpenHost();
            pod = RtNetlink.Open(ns);
            var podMac = RandomMac();
            var hostLink = CreateVeth(ctx, host, ns, hostName, podMac);
            var podIndex = hostLink.ParentIndex > 0 ? hostLink.ParentIndex
                : throw new CniException(CniCode.DataplaneFailure, $"{hostName} does not name its peer's index (IFLA_LINK)");
            afterStep("veth");

            // With IPv6, DAD must be off on both ends before they go up.
            if (v6)
            {
                HostSysctl($"net/ipv6/conf/{hostName}/accept_dad", "0");
                HostSysctl($"net/ipv6/conf/{hostName}/proxy_ndp", "1");
                HostSysctl($"net/ipv6/conf/{hostName}/forwarding", "1");
                WriteIfDifferent("net/ipv6/conf/all/forwarding", "1");
                afterStep("host-sysctls");
            }

            // The host end's IPv4 settings travel with its link-up message (a netlink attribute, not two files
            // under /proc/sys).
            if (v4)
            {
                WriteIfDifferent("net/ipv4/ip_forward", "1");
            }

            host.SetLinkUp(hostLink.Index, true, v4 ? HostIPv4Conf : null, OwnerAlias(env.ContainerId));
            afterStep("host-up");
            if (v6)
            {
                ns.WriteSysctl($"net/ipv6/conf/{env.IfName}/accept_dad", "0");
                afterStep("pod-sysctls");
            }

            return new PreparedPod(ctx, families, ns, host, pod, hostName, hostLink.Index, podIndex, podMac);
        }
        catch
        {
            pod?.Dispose();
            host?.Dispose();
            ns.Dispose();
            throw;
        }
    }

    /// <summary>Creates the pod's veth pair, the pod end with a random MAC of its own (the result names it).
    /// When a name is taken: the host end of this pod is replaced and creation tried once more — left by a
    /// crashed ADD of this container, or held by an earlier sandbox of the same pod (kubelet runs one sandbox per
    /// pod, so the newest ADD wins, as with Calico; the earlier container's late DEL then finds the alias of this
    /// one and leaves it alone); an interface of the pod's name already in its namespace is an error.</summary>
    private static Link CreateVeth(PluginContext ctx, RtNetlink host, NetNs ns, string hostName, PhysicalAddress podMac)
    {
        var env = ctx.Env;
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return host.CreateVeth(hostName, env.IfName, ns, ctx.Conf.Mtu, HostMac, podMac);
            }
            catch (NetlinkException e) when (e.Exists)
            {
                if (attempt > 0 || host.GetLink(hostName) is not { } stale)
                {
                    throw new CniException(CniCode.DataplaneFailure, $"interface {env.IfName} already exists in {env.Netns}");
                }

                ctx.Log.Warning(OwnerOf(stale) is { } owner && owner != env.ContainerId
                    ? $"replacing {hostName} (#{stale.Index}) of container {owner}, an earlier sandbox of this pod"
                    : $"removing stale {hostName} (#{stale.Index}) before ADD");
                host.DeleteLink(stale.Index);
            }
        }
    }

    /// <summary>A random unicast, locally administered MAC (what the kernel would pick).</summary>
    private static PhysicalAddress RandomMac()
    {
        var bytes = new byte[6];
        Random.Shared.NextBytes(bytes);
        bytes[0] = (byte)((bytes[0] & 0xfe) | 0x02);
        return new PhysicalAddress(bytes);
    }

    private sealed class PreparedPod(PluginContext ctx, PodFamilies families, NetNs ns, RtNetlink host, RtNetlink pod,
        string hostName, int hostIndex, int podIndex, PhysicalAddress podMac) : IPreparedPod
    {
        public List<CniInterface> Complete(IReadOnlyList<CniIp> ips, Action<string> afterStep)
        {
            ArgumentNullException.ThrowIfNull(ips);
            ArgumentNullException.ThrowIfNull(afterStep);
            if (PodFamilies.Of(ips) != families)
            {
                throw new CniException(CniCode.IpamFailure, $"IPAM gave {string.Join(", ", ips.Select(i => i.Address))}, not the address families the network asks for");
            }

            // Everything in the pod goes in one batch, in order: the link up (a route through a link that is down
            // is refused), addresses, the link route to the gateway before the default route through it, the
            // neighbour entry.
            bool v4 = families.V4, v6 = families.V6;
            var batch = pod.NewBatch().SetLinkUp(podIndex);
            foreach (var ip in ips)
            {
                batch.AddAddress(podIndex, ip.Address, ip.IsIPv6 ? 128 : 32, noDad: ip.IsIPv6);
            }

            if (v4)
            {
                batch.AddRoute(new Route { Destination = GatewayV4, PrefixLength = 32, OutIndex = podIndex, Scope = Netlink.Rt.RT_SCOPE_LINK });
                batch.AddRoute(new Route { Destination = IPAddress.Any, PrefixLength = 0, Gateway = GatewayV4, OutIndex = podIndex });
                batch.AddNeighbour(podIndex, GatewayV4, HostMac);
            }

            if (v6)
            {
                batch.AddRoute(new Route { Destination = IPAddress.IPv6Any, PrefixLength = 0, Gateway = GatewayV6, OutIndex = podIndex });
                batch.AddNeighbour(podIndex, GatewayV6, HostMac);
            }

            batch.Commit();
            afterStep("pod-network");
            foreach (var ip in ips)
            {
                host.AddRoute(HostRoute(ip, hostIndex), replace: true);
            }

            afterStep("host-routes");
            return
            [
                new CniInterface(hostName, MacText, null, ctx.Conf.Mtu),
                new CniInterface(ctx.Env.IfName, FormatMac(podMac), ctx.Env.Netns, ctx.Conf.Mtu),
            ];
        }

        public void Dispose()
        {
            pod.Dispose();
            host.Dispose();
            ns.Dispose();
        }
    }

    public void Teardown(PluginContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);

        // Deleting either end of a veth deletes both, and the kernel drops the routes through it.
        if (DeleteHostEnd(ctx))
        {
            return;
        }

        if (string.IsNullOrEmpty(ctx.Env.Netns))
        {
            return;
        }

        try
        {
            using var ns = NetNs.Open(ctx.Env.Netns);
            using var pod = RtNetlink.Open(ns);
            if (pod.GetLink(ctx.Env.IfName) is { Kind: "veth" })
            {
                pod.DeleteLink(ctx.Env.IfName);
            }
        }
        catch (NetlinkException e) when (e.NotFound)
        {
            // The namespace is gone: so is everything in it.
        }
    }

    /// <summary>The host end named for this pod is the only trace of a failed ADD: removing it removes the pod
    /// end, its addresses, and every route through either.</summary>
    public void UndoAdd(PluginContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        DeleteHostEnd(ctx);
    }

    /// <summary>Deletes the host end of this pod's name when it belongs to this container (or records no owner);
    /// one held by another container — a newer sandbox of the same pod — is left as it is. Deleted by the index
    /// that was inspected, so a link made under the same name meanwhile is never the one removed.</summary>
    private bool DeleteHostEnd(PluginContext ctx)
    {
        var hostName = HostVethName(ctx.Env);
        using var host = OpenHost();
        if (host.GetLink(hostName) is not { } link)
        {
            return false;
        }

        if (OwnerOf(link) is { } owner && owner != ctx.Env.ContainerId)
        {
            ctx.Log.Info($"{hostName} belongs to container {owner}, not to {ctx.Env.ContainerId}: left in place");
            return false;
        }

        if (!host.DeleteLink(link.Index))
        {
            return false;
        }

        ctx.Log.Info($"deleted {hostName}");
        return true;
    }

    public void Check(PluginContext ctx, CniResult prev)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(prev);
        var env = ctx.Env;
        var hostName = HostVethName(env);
        using var ns = OpenNetns(env.Netns);
        using var host = OpenHost();
        using var pod = RtNetlink.Open(ns);
        var hostLink = host.GetLink(hostName) ?? throw Mismatch($"host interface {hostName} does not exist");
        Expect(OwnerOf(hostLink) is not { } owner || owner == env.ContainerId, $"host interface {hostName} belongs to container {OwnerOf(hostLink)}, not to {env.ContainerId}");
        Expect(hostLink.IsUp, $"host interface {hostName} is down");
        Expect(hostLink.Mac?.Equals(HostMac) == true, $"host interface {hostName} has MAC {hostLink.Mac}, expected {MacText}");
        Expect(hostLink.Mtu == ctx.Conf.Mtu, $"host interface {hostName} has MTU {hostLink.Mtu}, expected {ctx.Conf.Mtu}");
        var podLink = pod.GetLink(env.IfName) ?? throw Mismatch($"interface {env.IfName} does not exist in {env.Netns}");
        Expect(podLink.IsUp, $"interface {env.IfName} is down");
        Expect(podLink.Mtu == ctx.Conf.Mtu, $"interface {env.IfName} has MTU {podLink.Mtu}, expected {ctx.Conf.Mtu}");
        if (prev.Interfaces.FirstOrDefault(i => i.Name == env.IfName && i.Sandbox is not null) is { Mac: { } mac })
        {
            Expect(podLink.Mac is { } m && string.Equals(FormatMac(m), mac, StringComparison.OrdinalIgnoreCase), $"interface {env.IfName} has MAC {podLink.Mac}, the result says {mac}");
        }

        var addrs = pod.ListAddresses(podLink.Index);
        var hostRoutes = host.ListRoutes(AddressFamily.Unspecified, 0);
        foreach (var ip in prev.Ips)
        {
            int len = ip.IsIPv6 ? 128 : 32;
            Expect(addrs.Any(a => a.Address.Equals(ip.Address) && a.PrefixLength == len), $"address {ip.Address}/{len} is missing from {env.IfName}");
            Expect(hostRoutes.Any(r => r.Destination.Equals(ip.Address) && r.PrefixLength == len && r.OutIndex == hostLink.Index),
                $"host route {ip.Address}/{len} dev {hostName} is missing");
        }

        var podRoutes = pod.ListRoutes(AddressFamily.Unspecified, 0);
        var neigh = pod.ListNeighbours(podLink.Index);
        if (prev.Ips.Any(i => !i.IsIPv6))
        {
            Expect(podRoutes.Any(r => r.Destination.Equals(GatewayV4) && r.PrefixLength == 32 && r.OutIndex == podLink.Index),
                $"route 169.254.1.1 dev {env.IfName} is missing in the pod");
            Expect(podRoutes.Any(r => r.PrefixLength == 0 && !r.IsIPv6 && GatewayV4.Equals(r.Gateway)),
                "default route via 169.254.1.1 is missing in the pod");
            Expect(neigh.Any(n => n.Address.Equals(GatewayV4) && HostMac.Equals(n.Mac) && (n.State & Netlink.Rt.NUD_PERMANENT) != 0),
                $"permanent neighbour 169.254.1.1 lladdr {MacText} is missing in the pod");
        }

        if (prev.Ips.Any(i => i.IsIPv6))
        {
            Expect(podRoutes.Any(r => r.PrefixLength == 0 && r.IsIPv6 && GatewayV6.Equals(r.Gateway)),
                $"default route via {GatewayV6} is missing in the pod");
        }
    }

    public static Route HostRoute(CniIp ip, int hostIndex)
    {
        ArgumentNullException.ThrowIfNull(ip);
        return new Route
        {
            Destination = ip.Address,
            PrefixLength = ip.IsIPv6 ? 128 : 32,
            OutIndex = hostIndex,
            Scope = Netlink.Rt.RT_SCOPE_LINK,
        };
    }

    private static NetNs OpenNetns(string path)
    {
        try
        {
            return NetNs.Open(path);
        }
        catch (NetlinkException e) when (e.NotFound)
        {
            throw new CniException(CniCode.UnknownContainer, $"network namespace {path} does not exist", e.Message);
        }
    }

    /// <summary>rtnetlink in the node's namespace: the given one, else the calling thread's.</summary>
    private RtNetlink OpenHost() => hostNs is null ? RtNetlink.Open() : RtNetlink.Open(hostNs);

    private void HostSysctl(string name, string value)
    {
        if (hostNs is null)
        {
            Sysctl.Write(name, value);
        }
        else
        {
            hostNs.WriteSysctl(name, value);
        }
    }

    private void WriteIfDifferent(string name, string value)
    {
        var current = hostNs is null ? Sysctl.Read(name) : hostNs.Run(() => Sysctl.Read(name));
        if (current != value)
        {
            HostSysctl(name, value);
        }
    }

    private static void Expect(bool ok, string what)
    {
        if (!ok)
        {
            throw Mismatch(what);
        }
    }

    private static CniException Mismatch(string what) => new(CniCode.CheckFailed, "CHECK failed: " + what);

    public static string FormatMac(PhysicalAddress mac)
    {
        ArgumentNullException.ThrowIfNull(mac);
        return string.Join(':', mac.GetAddressBytes().Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
    }
}
