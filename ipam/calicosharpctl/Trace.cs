using System.CommandLine;
using System.Globalization;
using System.Net;
using CalicoSharp.Ipam;
using CalicoSharp.Proto;
using Grpc.Core;

namespace CalicoSharp.Ctl;

/// <summary>How one hop of a trace turned out.</summary>
internal enum HopStatus
{
    /// <summary>The hop does what IPAM says it should.</summary>
    Ok,

    /// <summary>Worth knowing, but the packet still gets through (or a later hop is the cause).</summary>
    Warning,

    /// <summary>The path breaks here.</summary>
    Broken,

    /// <summary>Nobody could be asked (no control API for that node).</summary>
    Unchecked,
}

/// <summary>One step of the packet's path: what was found, and where it was read from.</summary>
internal sealed record TraceHop(string Name, string Source, HopStatus Status, string Summary, IReadOnlyList<(string Key, string Value)> Facts);

internal sealed record TraceResult(string Address, string From, string? DestinationNode, IReadOnlyList<TraceHop> Hops)
{
    /// <summary>The hop where the path breaks, or null when it reaches the pod.</summary>
    public string? BrokenAt => Hops.FirstOrDefault(h => h.Status == HopStatus.Broken)?.Name;
}

/// <summary>
/// Reaches each node's bgpd control API. The --bgpd-socket value may hold "{node}" (one socket per node, e.g. a
/// folder of sockets or a lab); without it only the local node's API is known, and its node name comes from it.
/// </summary>
internal sealed class NodeApis(string socketOption, CancellationToken ct)
{
    private string? _localNode;
    private bool _localAsked;

    public async Task<string?> SocketForAsync(string node)
    {
        if (socketOption.Contains("{node}", StringComparison.Ordinal))
        {
            string path = socketOption.Replace("{node}", node, StringComparison.Ordinal);
            return File.Exists(path) ? path : null;
        }
        return await LocalNodeAsync().ConfigureAwait(false) == node ? socketOption : null;
    }

    /// <summary>The node whose bgpd answers on the plain (un-templated) socket, or null.</summary>
    public async Task<string?> LocalNodeAsync()
    {
        if (!_localAsked && !socketOption.Contains("{node}", StringComparison.Ordinal) && File.Exists(socketOption))
        {
            _localAsked = true;
            try
            {
                _localNode = (await BgpCli.CallAsync(socketOption, (c, o) => c.GetStatusAsync(new StatusRequest(), o).ResponseAsync, ct).ConfigureAwait(false)).NodeName;
            }
            catch (IOException)
            {
            }
        }
        return _localNode;
    }

    private readonly Dictionary<string, string> _errors = [];

    /// <summary>Why a node's API gave no answer, for the hop that could not be checked.</summary>
    public string Describe(string node) => _errors.TryGetValue(node, out string? e) ? e
        : socketOption.Contains("{node}", StringComparison.Ordinal) ? $"no bgpd control API for {node} at {socketOption.Replace("{node}", node, StringComparison.Ordinal)}"
        : $"no bgpd control API for {node} (only this node's, {socketOption}: give --bgpd-socket with {{node}} to reach others)";

    /// <summary>The node's answer, or null (with the reason kept for <see cref="Describe"/>) when it has no reachable API.</summary>
    public async Task<T?> CallAsync<T>(string node, Func<Proto.Bgpd.BgpdClient, CallOptions, Task<T>> call, int seconds = 5)
        where T : class
    {
        string? socket = await SocketForAsync(node).ConfigureAwait(false);
        if (socket is null)
        {
            return null;
        }
        try
        {
            return await BgpCli.CallAsync(socket, call, ct, seconds).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            _errors[node] = e.Message;
            return null;
        }
    }
}

/// <summary>
/// calicosharpctl trace: walks the path a packet to a pod address takes, hop by hop, each from its source —
/// etcd for IPAM, each node's bgpd for its kernel route, BGP path, host route and pod interface.
/// </summary>
internal sealed class Tracer(IpamClient ipam, NodeApis apis, CancellationToken ct)
{
    private readonly List<TraceHop> _hops = [];

    private void Hop(string name, string source, HopStatus status, string summary, params (string, string)[] facts) =>
        _hops.Add(new TraceHop(name, source, status, summary, facts));

    public async Task<TraceResult> RunAsync(IPAddress address, string? from)
    {
        string text = address.ToString();

        // Where the trace starts: a node, a pod (by name, namespace/name or address), or this node.
        string? sourceNode = null;
        string fromText = from ?? "";
        IpLookup? sourcePod = null;
        if (from is null)
        {
            sourceNode = await apis.LocalNodeAsync().ConfigureAwait(false)
                ?? throw new UsageException("no local bgpd answers on --bgpd-socket: say where the trace starts with --from <node>|<pod>");
            fromText = sourceNode;
        }
        else
        {
            (sourceNode, sourcePod) = await ResolveFromAsync(from).ConfigureAwait(false);
        }

        // 1. IPAM: pool, block, node, allocation.
        IReadOnlyList<IpPool> pools = await ipam.ListPoolsAsync(ct).ConfigureAwait(false);
        IpPool? pool = pools.FirstOrDefault(p => p.Cidr.Contains(address));
        if (pool is null && sourcePod is not null)
        {
            // From a pod to an address outside every pool: it leaves the cluster, masqueraded when its pool says natOutgoing.
            await FromPodAsync(sourcePod, sourceNode!).ConfigureAwait(false);
            if (_hops[^1].Status != HopStatus.Broken)
            {
                await NatOutgoingAsync(address, sourcePod, sourceNode!, pools).ConfigureAwait(false);
            }
            return Result(text, fromText, null);
        }
        if (pool is null)
        {
            Hop("ipam", "etcd", HopStatus.Broken, $"{text} is in no IP pool ({(pools.Count == 0 ? "there are none" : string.Join(", ", pools.Select(p => p.Cidr)))}): CalicoSharp neither allocates nor routes it");
            return Result(text, fromText, null);
        }
        IpLookup? ip = await ipam.LookupAsync(address, ct).ConfigureAwait(false);
        if (ip is null)
        {
            Hop("ipam", "etcd", HopStatus.Broken, $"{text} is not allocated: no node has claimed a block of pool {pool.Name} ({pool.Cidr}) that holds it", ("pool", pool.Name));
            return Result(text, fromText, null);
        }
        if (!ip.Allocated)
        {
            Hop("ipam", "etcd", HopStatus.Broken, $"{text} is not allocated: block {ip.Block} (node {ip.BlockNode ?? "none"}) has it free, so no pod has it",
                ("pool", pool.Name), ("block", ip.Block.ToString()), ("blockNode", ip.BlockNode ?? ""));
            return Result(text, fromText, null);
        }
        IReadOnlyDictionary<string, string> attrs = ip.Attributes ?? new Dictionary<string, string>();
        string? destNode = attrs.GetValueOrDefault("node") ?? ip.BlockNode;
        string pod = PodText(attrs);
        if (destNode is null)
        {
            Hop("ipam", "etcd", HopStatus.Broken, $"{text} is allocated (handle {ip.HandleId}) but neither its block {ip.Block} nor the allocation names a node",
                ("pool", pool.Name), ("block", ip.Block.ToString()), ("handle", ip.HandleId ?? ""));
            return Result(text, fromText, null);
        }
        bool borrowed = ip.BlockNode != destNode;
        Hop("ipam", "etcd", HopStatus.Ok,
            $"{text} is allocated in block {ip.Block} of pool {pool.Name} ({pool.Cidr}), "
            + (borrowed ? $"borrowed by {destNode} from {ip.BlockNode ?? "no node"}'s block" : $"affine to {destNode}") + $"; {pod}",
            ("pool", pool.Name), ("poolCidr", pool.Cidr.ToString()), ("block", ip.Block.ToString()), ("blockNode", ip.BlockNode ?? ""),
            ("node", destNode), ("handle", ip.HandleId ?? ""), ("namespace", attrs.GetValueOrDefault("namespace") ?? ""),
            ("pod", attrs.GetValueOrDefault("pod") ?? ""), ("containerID", attrs.GetValueOrDefault("containerID") ?? ""));

        if (sourcePod is not null)
        {
            await FromPodAsync(sourcePod, sourceNode!).ConfigureAwait(false);
            if (_hops[^1].Status == HopStatus.Broken)
            {
                return Result(text, fromText, destNode);
            }
        }

        // The advertised prefix: the block, or the /32 (/128) of a borrowed address.
        string announced = borrowed ? text + HostLength(address) : ip.Block.ToString();
        if (sourceNode != destNode)
        {
            // The destination's identity (router id, AS), to tell whether the source's path really comes from it.
            NodeStatus? destStatus = await apis.CallAsync(destNode, (c, o) => c.GetStatusAsync(new StatusRequest(), o).ResponseAsync).ConfigureAwait(false);
            await SourceRouteAsync(address, sourceNode!, destNode, ip, announced, destStatus).ConfigureAwait(false);
            if (_hops[^1].Status != HopStatus.Broken)
            {
                await FabricAsync(destNode, announced).ConfigureAwait(false);
            }
        }
        if (_hops[^1].Status != HopStatus.Broken)
        {
            await DestinationAsync(address, destNode, attrs, sourceNode == destNode).ConfigureAwait(false);
        }
        return Result(text, fromText, destNode);
    }

    private TraceResult Result(string address, string from, string? dest) => new(address, from, dest, _hops);

    /// <summary>The source side of a packet from a pod to an address outside every pool: the pool's natOutgoing, and
    /// whether the source node's bgpd has its nftables table programmed.</summary>
    private async Task NatOutgoingAsync(IPAddress address, IpLookup pod, string node, IReadOnlyList<IpPool> pools)
    {
        string text = address.ToString();
        IpPool? own = pools.FirstOrDefault(p => p.Cidr.Contains(pod.Address));
        bool wanted = own?.Resource.Spec.NatOutgoing == true;
        string poolText = own is null ? "no pool" : $"pool {own.Name} ({own.Cidr})";
        NodeStatus? status = await apis.CallAsync(node, (c, o) => c.GetStatusAsync(new StatusRequest(), o).ResponseAsync).ConfigureAwait(false);
        string source = $"bgpd on {node}";
        var facts = new List<(string, string)> { ("pool", own?.Name ?? ""), ("natOutgoing", wanted ? "true" : "false"), ("destination", text) };
        if (status is null)
        {
            Hop("nat-outgoing", source, HopStatus.Unchecked, $"{text} is outside every pool; {poolText} {(wanted ? "has" : "has no")} natOutgoing, but {apis.Describe(node)}", [.. facts]);
            return;
        }
        if (status.NatOutgoing is not { } nat)
        {
            Hop("nat-outgoing", source, wanted ? HopStatus.Broken : HopStatus.Warning, $"{text} is outside every pool; bgpd on {node} does not program the dataplane (no natOutgoing table), so the packet leaves with {pod.Address}", [.. facts]);
            return;
        }
        facts.Add(("table", nat.Table));
        bool covered = own is not null && nat.Programmed && nat.MasqueradePools.Contains(own.Cidr.ToString());
        if (wanted && covered && nat.Error.Length == 0)
        {
            facts.Add(("masquerade", "true"));
            Hop("nat-outgoing", source, HopStatus.Ok,
                $"{text} is outside every pool and {poolText} has natOutgoing: {node} masquerades the packet (nftables table {nat.Table}), it leaves with {node}'s address, not {pod.Address}", [.. facts]);
        }
        else if (wanted)
        {
            Hop("nat-outgoing", source, HopStatus.Broken,
                $"{poolText} has natOutgoing but {node}'s nftables table {nat.Table} does not cover it{(nat.Error.Length > 0 ? $": {nat.Error}" : " (yet)")}; the packet leaves with {pod.Address}", [.. facts]);
        }
        else
        {
            facts.Add(("masquerade", "false"));
            Hop("nat-outgoing", source, HopStatus.Warning,
                $"{text} is outside every pool and {poolText} has no natOutgoing: the packet leaves with the pod's address {pod.Address}, so {text} needs a route back to {own?.Cidr.ToString() ?? "it"}", [.. facts]);
        }
    }

    /// <summary>"/32" or "/128": a single address's prefix length.</summary>
    private static string HostLength(IPAddress a) => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "/128" : "/32";

    private static string PodText(IReadOnlyDictionary<string, string> attrs) =>
        attrs.TryGetValue("pod", out string? name)
            ? $"pod {(attrs.TryGetValue("namespace", out string? ns) ? ns + "/" : "")}{name}" + (attrs.TryGetValue("containerID", out string? c) ? $" (container {Short(c)})" : "")
            : attrs.TryGetValue("containerID", out string? cid) ? $"container {Short(cid)}" : "no pod attributes";

    /// <summary>A runtime's 64-hex container id shortened as docker and crictl show it; other ids whole.</summary>
    private static string Short(string id) => id.Length == 64 && id.All(char.IsAsciiHexDigit) ? id[..12] : id;

    internal async Task<(string Node, IpLookup? Pod)> ResolveFromAsync(string from)
    {
        IpLookup? pod = null;
        if (IPAddress.TryParse(from, out IPAddress? a))
        {
            pod = await ipam.LookupAsync(a, ct).ConfigureAwait(false) is { Allocated: true } l ? l
                : throw new UsageException($"--from {from}: no pod has that address");
        }
        else
        {
            // A node is known by its bgpd socket or its block affinities; a pod by its allocation attributes.
            if (await apis.SocketForAsync(from).ConfigureAwait(false) is not null || await ipam.NodeHasBlocksAsync(from, ct).ConfigureAwait(false))
            {
                return (from, null);
            }
            int slash = from.IndexOf('/', StringComparison.Ordinal);
            var want = new Dictionary<string, string> { ["pod"] = slash < 0 ? from : from[(slash + 1)..] };
            if (slash >= 0)
            {
                want["namespace"] = from[..slash];
            }
            IReadOnlyList<IpLookup> found = await ipam.FindAllocationsAsync(want, ct).ConfigureAwait(false);
            if (found.Count == 0)
            {
                throw new UsageException($"--from {from}: no node with blocks and no pod of that name");
            }
            IEnumerable<string> namespaces = found.Select(f => f.Attributes?.GetValueOrDefault("namespace") ?? "").Distinct();
            if (namespaces.Count() > 1)
            {
                throw new UsageException($"--from {from}: pods of that name in namespaces {string.Join(", ", namespaces)}: say namespace/pod");
            }
            pod = found.FirstOrDefault(f => f.Address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) ?? found[0];
        }
        string node = pod.Attributes?.GetValueOrDefault("node") ?? pod.BlockNode ?? throw new UsageException($"--from {from}: its allocation names no node");
        return (node, pod);
    }

    /// <summary>The source pod's host-side interface, read on its node as the pod hop reads the destination's.</summary>
    private async Task FromPodAsync(IpLookup pod, string node)
    {
        IReadOnlyDictionary<string, string> a = pod.Attributes ?? new Dictionary<string, string>();
        string podText = PodText(a);
        var facts = new (string, string)[] { ("address", pod.Address.ToString()), ("node", node) };
        var req = new LookupRequest
        {
            Address = pod.Address.ToString(),
            PodNamespace = a.GetValueOrDefault("namespace") ?? "",
            PodName = a.GetValueOrDefault("pod") ?? "",
            ContainerId = a.GetValueOrDefault("containerID") ?? "",
        };
        LookupReply? r = req.PodNamespace.Length > 0 || req.ContainerId.Length > 0
            ? await apis.CallAsync(node, (c, o) => c.LookupAsync(req, o).ResponseAsync).ConfigureAwait(false) : null;
        PodInterface? ifc = r?.PodInterface;
        if (ifc is null)
        {
            Hop("from-pod", "etcd", HopStatus.Unchecked,
                $"{podText} ({pod.Address}) sends it to its default gateway 169.254.1.1 on {node}; its interface was not checked: {(r is null ? apis.Describe(node) : "its allocation names no pod")}", facts);
        }
        else if (!ifc.Exists)
        {
            Hop("from-pod", $"{node} bgpd", HopStatus.Broken,
                $"{podText} ({pod.Address}): its host interface {ifc.Name} does not exist on {node}: the pod's network namespace is gone while IPAM still holds {pod.Address}, so nothing sends from it", [.. facts, ("interface", ifc.Name)]);
        }
        else if (!ifc.Up || !ifc.LowerUp)
        {
            Hop("from-pod", $"{node} bgpd", HopStatus.Broken, $"{podText} ({pod.Address}): interface {ifc.Name} on {node} is {(ifc.Up ? "up but has no carrier (the pod end is down)" : "down")}", [.. facts, ("interface", ifc.Name)]);
        }
        else
        {
            Hop("from-pod", $"{node} bgpd", HopStatus.Ok,
                $"{podText} ({pod.Address}) sends it to its default gateway 169.254.1.1, answered by its host-side interface {ifc.Name} on {node} (up, proxy ARP)", [.. facts, ("interface", ifc.Name)]);
        }
    }

    /// <summary>The source node's kernel route to the address and the BGP path behind it.</summary>
    private async Task SourceRouteAsync(IPAddress address, string node, string destNode, IpLookup ip, string announced, NodeStatus? dest)
    {
        string source = $"{node} bgpd";
        LookupReply? r = await apis.CallAsync(node, (c, o) => c.LookupAsync(new LookupRequest { Address = address.ToString() }, o).ResponseAsync).ConfigureAwait(false);
        if (r is null)
        {
            Hop("source-route", source, HopStatus.Unchecked, $"{node}'s route not checked: {apis.Describe(node)}");
            return;
        }
        var facts = new List<(string, string)> { ("node", node) };
        if (r.HasKernelRoute)
        {
            facts.AddRange([("kernelRoute", r.KernelDestination), ("type", r.KernelType), ("gateway", r.KernelGateway), ("device", r.KernelDevice), ("protocol", r.KernelProtocolName)]);
        }
        Proto.Path? best = r.HasBgpRoute ? r.BgpRoute.Paths.FirstOrDefault(p => p.Best) : null;
        if (best is not null)
        {
            facts.AddRange([("bgpPrefix", r.BgpRoute.Prefix), ("peer", best.Peer), ("peerAddress", best.PeerAddress), ("asPath", best.AsPath), ("nextHop", best.NextHop),
                ("why", r.BgpRoute.Reason)]);
        }
        string bgpText = best is null ? "" : $"; BGP: {r.BgpRoute.Prefix} from {best.Peer} ({best.PeerAddress}), AS path {(best.AsPath.Length == 0 ? "(empty: iBGP)" : best.AsPath)}, next hop {best.NextHop}, best because: {r.BgpRoute.Reason}";
        bool drops = r.KernelType is "blackhole" or "unreachable" or "prohibit";
        if (r.HasKernelRoute && !drops && r.KernelType != "unicast")
        {
            Hop("source-route", source, HopStatus.Broken, $"{node} treats {address} as its own ({r.KernelType} route {r.KernelDestination}): this disagrees with IPAM, which gives it to {destNode}", [.. facts]);
            return;
        }
        if (!r.HasKernelRoute)
        {
            string why = best is not null ? $" although bgpd has a BGP route for {r.BgpRoute.Prefix} (kernel programming failed? see 'calicosharpctl node status')"
                : $": it has not learned {announced} from any peer (withdrawn, or {destNode} does not announce it)";
            Hop("source-route", source, HopStatus.Broken, $"{node} has no route to {address}{why}", [.. facts]);
            return;
        }
        string kernel = $"{r.KernelDestination} {(drops ? r.KernelType : $"via {r.KernelGateway} dev {r.KernelDevice}")} ({r.KernelProtocolName})";
        if (drops)
        {
            bool ownsIt = r.KernelDestination == ip.Block.ToString();
            Hop("source-route", source, HopStatus.Broken,
                $"{node} drops packets to {address}: its route is {kernel}"
                + (ownsIt ? $"; this disagrees with IPAM, which gives block {ip.Block} to {ip.BlockNode} and the address to {destNode}"
                    : best is not null ? $", more specific than its BGP route for {r.BgpRoute.Prefix}, which it overrides" : $"; it has not learned {announced}"),
                [.. facts]);
            return;
        }
        if (best is not null && r.KernelProtocol != 81)
        {
            Hop("source-route", source, HopStatus.Warning,
                $"{node} sends packets to {address} by {kernel}, which overrides its BGP route for {r.BgpRoute.Prefix}{bgpText}", [.. facts]);
            return;
        }
        if (best is null)
        {
            Hop("source-route", source, r.KernelProtocol == 81 ? HopStatus.Broken : HopStatus.Warning,
                r.KernelProtocol == 81
                    ? $"{node} routes {address} by {kernel}, but bgpd has no BGP route behind it (a stale kernel route)"
                    : $"{node} reaches {address} by {kernel}, not by a BGP route for {announced}: it has not learned that prefix",
                [.. facts]);
            return;
        }
        if (best.Peer == "local")
        {
            Hop("source-route", source, HopStatus.Broken, $"{node} announces {r.BgpRoute.Prefix} itself, but IPAM gives {address} to {destNode}: this disagrees with IPAM", [.. facts]);
            return;
        }
        if (Disagreement(best, dest, destNode) is { } mismatch)
        {
            Hop("source-route", source, HopStatus.Broken, $"{node}'s route to {address} ({kernel}{bgpText}) {mismatch}", [.. facts]);
            return;
        }
        Hop("source-route", source, HopStatus.Ok, $"{node}: {kernel}{bgpText}", [.. facts]);
    }

    /// <summary>Whether the path's origin is some other router than the destination node (by originator id or origin AS).</summary>
    private static string? Disagreement(Proto.Path best, NodeStatus? dest, string destNode)
    {
        if (dest is null)
        {
            return null;
        }
        if (best.OriginatorId.Length > 0 && best.OriginatorId != dest.RouterId)
        {
            return $"was originated by router {best.OriginatorId}, but IPAM gives the address to {destNode} (router id {dest.RouterId}): this disagrees with IPAM";
        }
        string[] asns = best.AsPath.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (best.OriginatorId.Length == 0 && asns.Length > 0 && uint.TryParse(asns[^1].Trim('{', '}', '(', ')'), CultureInfo.InvariantCulture, out uint origin) && origin != dest.AsNumber)
        {
            return $"comes from AS {origin}, but IPAM gives the address to {destNode} (AS {dest.AsNumber}): this disagrees with IPAM";
        }
        return null;
    }

    /// <summary>Between the nodes: does the destination announce the prefix, and to how many peers.</summary>
    private async Task FabricAsync(string destNode, string announced)
    {
        string source = $"{destNode} bgpd";
        RoutesReply? routes = await apis.CallAsync(destNode, (c, o) => c.ListRoutesAsync(new RoutesRequest { Prefix = announced }, o).ResponseAsync).ConfigureAwait(false);
        PeersReply? peers = await apis.CallAsync(destNode, (c, o) => c.ListPeersAsync(new PeersRequest(), o).ResponseAsync).ConfigureAwait(false);
        if (routes is null || peers is null)
        {
            Hop("fabric", source, HopStatus.Unchecked, $"whether {destNode} announces {announced} was not checked: {apis.Describe(destNode)}");
            return;
        }
        bool local = routes.Routes.Any(r => r.Prefix == announced && r.Paths.Any(p => p.Peer == "local"));
        List<Peer> up = [.. peers.Peers.Where(p => p.State == "Established")];
        string peersText = string.Join(", ", up.Select(p => $"{p.Name} ({p.Address}, AS {p.AsNumber})"));
        if (!local)
        {
            Hop("fabric", source, HopStatus.Broken, $"{destNode} does not announce {announced}: its bgpd has no local route for it (does it see the block's affinity in etcd?)", ("node", destNode), ("prefix", announced));
        }
        else if (up.Count == 0)
        {
            Hop("fabric", source, HopStatus.Broken, $"{destNode} announces {announced} but has no established BGP session to carry it", ("node", destNode), ("prefix", announced));
        }
        else
        {
            Hop("fabric", source, HopStatus.Ok, $"{destNode} announces {announced} to {up.Count} established peer(s): {peersText}; the fabric delivers the packet to {destNode}",
                ("node", destNode), ("prefix", announced), ("peers", peersText));
        }
    }

    /// <summary>The destination node's host route to the pod and the pod's host-side interface.</summary>
    private async Task DestinationAsync(IPAddress address, string node, IReadOnlyDictionary<string, string> attrs, bool sameNode)
    {
        string source = $"{node} bgpd";
        var req = new LookupRequest
        {
            Address = address.ToString(),
            PodNamespace = attrs.GetValueOrDefault("namespace") ?? "",
            PodName = attrs.GetValueOrDefault("pod") ?? "",
            ContainerId = attrs.GetValueOrDefault("containerID") ?? "",
        };
        LookupReply? r = await apis.CallAsync(node, (c, o) => c.LookupAsync(req, o).ResponseAsync).ConfigureAwait(false);
        if (r is null)
        {
            Hop("destination-route", source, HopStatus.Unchecked, $"{node}'s host route not checked: {apis.Describe(node)}");
            return;
        }
        PodInterface? ifc = r.PodInterface;
        string hostLen = HostLength(address);
        bool hostRoute = r.HasKernelRoute && r.KernelDestination == address + hostLen && r.KernelType == "unicast";
        var facts = new List<(string, string)> { ("node", node), ("kernelRoute", r.KernelDestination), ("type", r.KernelType), ("device", r.KernelDevice) };
        string kernel = !r.HasKernelRoute ? "no route" : r.KernelType == "unicast" ? $"{r.KernelDestination} dev {r.KernelDevice}" : $"{r.KernelType} {r.KernelDestination}";
        string prefix = sameNode ? $"{node} (same node as the source): " : $"{node}: ";
        if (ifc is null)
        {
            Hop("destination-route", source, hostRoute ? HopStatus.Ok : HopStatus.Broken, prefix + (hostRoute ? kernel : $"no {hostLen} host route for {address} (the packet meets {kernel})"), [.. facts]);
            return;
        }
        if (hostRoute && r.KernelDevice != ifc.Name)
        {
            Hop("destination-route", source, HopStatus.Broken, prefix + $"{address}{hostLen} goes to {r.KernelDevice}, but the pod's interface is {ifc.Name}: this disagrees with IPAM", [.. facts]);
        }
        else if (hostRoute)
        {
            Hop("destination-route", source, HopStatus.Ok, prefix + $"{kernel} (the CNI plugin's host route)", [.. facts]);
        }
        else if (!ifc.Exists)
        {
            Hop("destination-route", source, HopStatus.Warning, prefix + $"no {hostLen} host route for {address}, because its interface {ifc.Name} is gone (see the pod hop)", [.. facts]);
        }
        else
        {
            Hop("destination-route", source, HopStatus.Broken,
                prefix + $"no {hostLen} host route for {address}: the packet meets {kernel}{(r.KernelType is "blackhole" or "unreachable" or "prohibit" ? " and is dropped" : "")}, although interface {ifc.Name} exists", [.. facts]);
            return;
        }

        string pod = PodText(attrs);
        var podFacts = new (string, string)[] { ("interface", ifc.Name), ("namespace", req.PodNamespace), ("pod", req.PodName), ("containerID", req.ContainerId) };
        if (!ifc.Exists)
        {
            Hop("pod", source, HopStatus.Broken,
                $"{pod}: its host interface {ifc.Name} does not exist on {node}: the pod's network namespace is gone while IPAM still holds {address} (CNI DEL never ran; CNI GC or 'calicosharpctl ipam release' frees it)",
                podFacts);
        }
        else if (!ifc.Up || !ifc.LowerUp)
        {
            Hop("pod", source, HopStatus.Broken, $"{pod}: interface {ifc.Name} on {node} is {(ifc.Up ? "up but has no carrier (the pod end is down)" : "down")}", podFacts);
        }
        else
        {
            Hop("pod", source, HopStatus.Ok, $"{pod}: interface {ifc.Name} on {node} is up (index {ifc.Index}, MTU {ifc.Mtu}); the veth delivers the packet into the pod", podFacts);
        }
    }

    public static Command Command(TextWriter o, Func<ParseResult, bool> json, Func<ParseResult, IpamClient> connect)
    {
        var address = new Argument<string>("address") { Description = "a pod address, or a Service address and port: <address>:<port>[/tcp|/udp|/sctp] ([v6 address]:port)" };
        var from = new Option<string?>("--from") { Description = "where the packet starts: a node, a pod (name, namespace/name or address), or 'external' (a client outside the cluster; Service addresses only); default this node" };
        var cmd = new Command("trace", "walk the path a packet to a pod address takes, hop by hop, and name the hop where it breaks") { address, from };
        cmd.SetAction(async (p, ct) =>
        {
            string a = p.GetValue(address)!;
            if (ServiceTarget.TryParse(a, out ServiceTarget? target))
            {
                using IpamClient sc = connect(p);
                ServiceTraceResult sr = await new ServiceTracer(sc, new NodeApis(p.GetValue(BgpCli.Socket)!, ct), ct).RunAsync(target!, p.GetValue(from)).ConfigureAwait(false);
                ServiceTracer.Write(o, sr, json(p));
                return sr.Reaches ? Cli.ExitOk : Cli.ExitFailed;
            }
            if (!IPAddress.TryParse(a, out IPAddress? ip))
            {
                throw new UsageException($"'{a}' is not an IP address, nor <address>:<port>[/tcp|/udp|/sctp]");
            }
            using IpamClient c = connect(p);
            TraceResult r = await new Tracer(c, new NodeApis(p.GetValue(BgpCli.Socket)!, ct), ct).RunAsync(ip, p.GetValue(from)).ConfigureAwait(false);
            Write(o, r, json(p));
            return r.BrokenAt is null ? Cli.ExitOk : Cli.ExitFailed;
        });
        return cmd;
    }

    private static void Write(TextWriter o, TraceResult r, bool json)
    {
        if (json)
        {
            Output.Json(o, w =>
            {
                w.WriteStartObject();
                w.WriteString("address", r.Address);
                w.WriteString("from", r.From);
                w.WriteString("destinationNode", r.DestinationNode);
                w.WriteBoolean("reachable", r.BrokenAt is null && r.Hops.All(h => h.Status != HopStatus.Unchecked));
                w.WriteString("brokenAt", r.BrokenAt);
                WriteHops(w, r.Hops);
                w.WriteEndObject();
            });
            return;
        }
        o.WriteLine($"trace {r.Address} from {r.From}{(r.DestinationNode is null ? "" : $" to {r.DestinationNode}")}");
        WriteHops(o, r, "");
    }

    internal static void WriteHops(TextWriter o, TraceResult r, string indent)
    {
        int i = 1;
        foreach (TraceHop h in r.Hops)
        {
            o.WriteLine($"{indent}{i++,2}. {h.Name,-18} {Mark(h.Status),-7} [{h.Source}] {h.Summary}");
        }
        o.WriteLine(indent + (r.BrokenAt is { } b ? $"the path breaks at: {b}" : r.Hops.Any(h => h.Status == HopStatus.Unchecked) ? "no break found in the hops that could be checked" : r.Hops.Count > 0 && r.Hops[^1].Name == "nat-outgoing" ? "the packet leaves the cluster" : "the packet reaches the pod"));
    }

    internal static string Mark(HopStatus s) => s switch { HopStatus.Ok => "ok", HopStatus.Warning => "warn", HopStatus.Broken => "BROKEN", _ => "?" };

    internal static void WriteHops(System.Text.Json.Utf8JsonWriter w, IReadOnlyList<TraceHop> hops)
    {
        w.WriteStartArray("hops");
        foreach (TraceHop h in hops)
        {
            WriteHop(w, h);
        }
        w.WriteEndArray();
    }

    internal static void WriteHop(System.Text.Json.Utf8JsonWriter w, TraceHop h)
    {
        w.WriteStartObject();
        w.WriteString("hop", h.Name);
        w.WriteString("source", h.Source);
        w.WriteString("status", h.Status.ToString().ToLowerInvariant());
        w.WriteString("summary", h.Summary);
        w.WriteStartObject("facts");
        foreach ((string k, string v) in h.Facts)
        {
            w.WriteString(k, v);
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }
}
