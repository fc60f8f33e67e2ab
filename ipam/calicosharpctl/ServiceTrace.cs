using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Ipam;
using CalicoSharp.Proto;

namespace CalicoSharp.Ctl;

/// <summary>A Service address as trace takes it: &lt;address&gt;:&lt;port&gt;[/tcp|/udp|/sctp], [v6]:port for IPv6.</summary>
internal sealed record ServiceTarget(IPAddress Address, int Port, string Protocol)
{
    public override string ToString() => $"{(Address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{Address}]" : Address.ToString())}:{Port}/{Protocol}";

    public static bool TryParse(string text, out ServiceTarget? target)
    {
        target = null;
        string proto = "tcp";
        int slash = text.LastIndexOf('/');
        string hostPort = text;
        if (slash >= 0)
        {
            proto = text[(slash + 1)..].ToLowerInvariant();
            hostPort = text[..slash];
        }
        if (!IPEndPoint.TryParse(hostPort, out IPEndPoint? ep) || ep.Port == 0
            || ep.AddressFamily == AddressFamily.InterNetworkV6 && !hostPort.StartsWith('['))
        {
            if (slash >= 0 || hostPort.Contains(':', StringComparison.Ordinal) && !IPAddress.TryParse(hostPort, out _))
            {
                throw new UsageException($"'{text}' is not <address>:<port>[/tcp|/udp|/sctp] (an IPv6 address in brackets: [fd00::1]:80)");
            }
            return false;
        }
        if (proto is not ("tcp" or "udp" or "sctp"))
        {
            throw new UsageException($"'{text}': the protocol is tcp, udp or sctp, not '{proto}'");
        }
        target = new ServiceTarget(ep.Address, ep.Port, proto);
        return true;
    }
}

/// <summary>One endpoint kube-proxy may pick, and the pod trace behind it.</summary>
internal sealed record EndpointTrace(string Address, int Port, double Probability, HopStatus Status, string Summary, TraceResult? Pod)
{
    public bool Reaches => Status == HopStatus.Ok && Pod is { BrokenAt: null };
}

internal sealed record ServiceTraceResult(ServiceTarget Target, string From, string? Node, TraceHop Service, ServiceLookupReply? Reply, IReadOnlyList<EndpointTrace> Endpoints)
{
    public bool Reaches => Endpoints.Any(e => e.Reaches);

    public string? BrokenAt => Reaches ? null : Service.Status == HopStatus.Broken ? "service" : Endpoints.Count > 0 && Endpoints.All(e => !e.Reaches && e.Status != HopStatus.Unchecked) ? "endpoints" : null;
}

/// <summary>
/// calicosharpctl trace &lt;address&gt;:&lt;port&gt;: the first half of the journey (kube-proxy's NAT on the node that
/// handles the packet, read and evaluated by that node's bgpd), then the pod trace of every endpoint it may pick.
/// </summary>
internal sealed class ServiceTracer(IpamClient ipam, NodeApis apis, CancellationToken ct)
{
    /// <summary>The address an outside client is evaluated with (TEST-NET-3 / the IPv6 documentation prefix: outside every pool).</summary>
    private static IPAddress OutsideClient(AddressFamily f) => IPAddress.Parse(f == AddressFamily.InterNetworkV6 ? "2001:db8::1" : "203.0.113.1");

    public async Task<ServiceTraceResult> RunAsync(ServiceTarget target, string? from)
    {
        string source;
        bool fromNode;
        string? node;
        string fromText;
        string? fromPod = null;
        if (from is null || !string.Equals(from, "external", StringComparison.OrdinalIgnoreCase))
        {
            if (from is null)
            {
                node = await apis.LocalNodeAsync().ConfigureAwait(false)
                    ?? throw new UsageException("no local bgpd answers on --bgpd-socket: say where the trace starts with --from <node>|<pod>|external");
                fromText = node;
                fromNode = true;
                source = "";
            }
            else
            {
                (string n, IpLookup? pod) = await new Tracer(ipam, apis, ct).ResolveFromAsync(from).ConfigureAwait(false);
                node = n;
                fromText = from;
                fromNode = pod is null;
                source = pod?.Address.ToString() ?? "";
                fromPod = pod is null ? null : from;
            }
        }
        else
        {
            fromText = "external";
            fromNode = false;
            source = OutsideClient(target.Address.AddressFamily).ToString();
            (node, string? why) = await HandlingNodeAsync(target.Address).ConfigureAwait(false);
            if (node is null)
            {
                var hop = new TraceHop("service", "bgpd", HopStatus.Broken, why!, [("address", target.Address.ToString())]);
                return new ServiceTraceResult(target, fromText, null, hop, null, []);
            }
        }

        var req = new ServiceLookupRequest { Address = target.Address.ToString(), Port = (uint)target.Port, Protocol = target.Protocol, Source = source, FromNode = fromNode };
        // Dumping a node's rule set takes seconds when it holds thousands of Services (iptables-save, nft -j).
        ServiceLookupReply? r = await apis.CallAsync(node, (c, o) => c.LookupServiceAsync(req, o).ResponseAsync, 60).ConfigureAwait(false);
        if (r is null)
        {
            var hop = new TraceHop("service", $"{node} bgpd", HopStatus.Unchecked, $"kube-proxy's rules on {node} not read: {apis.Describe(node)}", [("node", node)]);
            return new ServiceTraceResult(target, fromText, node, hop, null, []);
        }
        var facts = new List<(string, string)>
        {
            ("node", node), ("servicePort", r.ServicePort), ("kind", r.Kind), ("rules", string.Join("; ", r.RuleSources)),
            ("source", fromNode ? $"{node} itself" : source), ("readMs", r.ReadMs.ToString("0.0", CultureInfo.InvariantCulture)),
            ("evaluateMs", r.EvaluateMs.ToString("0.0", CultureInfo.InvariantCulture)),
        };
        if (r.Notes.Count > 0)
        {
            facts.Add(("notes", string.Join("; ", r.Notes)));
        }
        bool anyDnat = r.Paths.Any(p => p.Dnat && p.Fate is "forwarded" or "local");
        bool anyUnchecked = r.Paths.Any(p => p.Fate == "unchecked");
        HopStatus status = anyDnat ? (anyUnchecked ? HopStatus.Warning : HopStatus.Ok) : anyUnchecked ? HopStatus.Unchecked : HopStatus.Broken;
        string rules = r.RuleSources.Count == 0 ? $"{node} has no kube-proxy rules (no iptables nat/filter rules, no nftables table kube-proxy)" : "";
        var service = new TraceHop("service", $"{node} bgpd", status, (rules.Length > 0 ? rules + ": " : "") + (r.Problem.Length > 0 ? r.Problem : r.Summary), facts);

        var endpoints = new List<EndpointTrace>();
        IReadOnlyList<IpPool> pools = await ipam.ListPoolsAsync(ct).ConfigureAwait(false);
        foreach (ServicePathReply p in r.Paths.Where(p => p.Dnat))
        {
            if (!IPAddress.TryParse(p.Destination, out IPAddress? ep))
            {
                continue;
            }
            if (p.Fate == "local")
            {
                endpoints.Add(new EndpointTrace(p.Destination, (int)p.DestinationPort, p.Probability, HopStatus.Warning,
                    $"{p.Destination} is an address of {node} itself: a host-network endpoint, not a pod of this cluster's pools; {node} receives the connection", null));
                continue;
            }
            if (!pools.Any(pool => pool.Cidr.Contains(ep)))
            {
                endpoints.Add(new EndpointTrace(p.Destination, (int)p.DestinationPort, p.Probability, HopStatus.Warning,
                    $"{p.Destination} is in no IP pool of this cluster ({string.Join(", ", pools.Select(x => x.Cidr))}): a host-network endpoint or an address outside the cluster, which CalicoSharp neither allocates nor routes", null));
                continue;
            }
            TraceResult pod = await new Tracer(ipam, apis, ct).RunAsync(ep, fromPod ?? node).ConfigureAwait(false);
            endpoints.Add(new EndpointTrace(p.Destination, (int)p.DestinationPort, p.Probability, HopStatus.Ok, p.Summary, pod));
        }
        return new ServiceTraceResult(target, fromText, node, service, r, endpoints);
    }

    /// <summary>For an outside client: the node that owns the address (a NodePort's node address, a VIP on the node) or
    /// announces a route to it — where the fabric delivers the packet.</summary>
    private async Task<(string? Node, string? Why)> HandlingNodeAsync(IPAddress address)
    {
        var nodes = new SortedSet<string>(StringComparer.Ordinal);
        foreach (PoolUsage u in await ipam.GetUsageAsync(ct).ConfigureAwait(false))
        {
            foreach (BlockUsage b in u.Blocks)
            {
                if (Keys.NodeOfAffinity(b.Affinity) is { } n)
                {
                    nodes.Add(n);
                }
            }
        }
        if (await apis.LocalNodeAsync().ConfigureAwait(false) is { } local)
        {
            nodes.Add(local);
        }
        var announcing = new List<string>();
        var unreachable = new List<string>();
        foreach (string n in nodes)
        {
            LookupReply? l = await apis.CallAsync(n, (c, o) => c.LookupAsync(new LookupRequest { Address = address.ToString() }, o).ResponseAsync).ConfigureAwait(false);
            if (l is null)
            {
                unreachable.Add(n);
                continue;
            }
            if (l.KernelType == "local")
            {
                return (n, null);
            }
            if (l.HasBgpRoute && l.BgpRoute.Paths.Any(p => p.Peer == "local" && p.Best))
            {
                announcing.Add(n);
            }
        }
        if (announcing.Count > 0)
        {
            return (announcing[0], null);
        }
        return (null, $"no node owns {address} or announces a route to it{(unreachable.Count > 0 ? $" (not asked: {string.Join(", ", unreachable)})" : "")}: the fabric delivers it to no node of this cluster; give --from <node> to read that node's rules");
    }

    public static void Write(TextWriter o, ServiceTraceResult r, bool json)
    {
        if (json)
        {
            Output.Json(o, w =>
            {
                w.WriteStartObject();
                w.WriteString("target", r.Target.ToString());
                w.WriteString("address", r.Target.Address.ToString());
                w.WriteNumber("port", r.Target.Port);
                w.WriteString("protocol", r.Target.Protocol);
                w.WriteString("from", r.From);
                w.WriteString("node", r.Node);
                w.WriteBoolean("reachable", r.Reaches);
                w.WriteString("brokenAt", r.BrokenAt);
                w.WritePropertyName("service");
                w.WriteStartObject();
                w.WriteString("status", r.Service.Status.ToString().ToLowerInvariant());
                w.WriteString("summary", r.Service.Summary);
                w.WriteString("servicePort", r.Reply?.ServicePort);
                w.WriteString("kind", r.Reply?.Kind);
                w.WriteStartObject("facts");
                foreach ((string k, string v) in r.Service.Facts)
                {
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
                w.WriteStartArray("paths");
                foreach (ServicePathReply p in r.Reply?.Paths ?? [])
                {
                    w.WriteStartObject();
                    w.WriteNumber("probability", p.Probability);
                    w.WriteString("fate", p.Fate);
                    w.WriteString("destination", p.Destination);
                    w.WriteNumber("destinationPort", p.DestinationPort);
                    w.WriteBoolean("dnat", p.Dnat);
                    w.WriteBoolean("masquerade", p.Masquerade);
                    w.WriteString("masqueradeReason", p.MasqueradeReason);
                    w.WriteString("summary", p.Summary);
                    w.WriteStartArray("rules");
                    foreach (NatRuleStep s in p.Steps)
                    {
                        w.WriteStringValue($"{s.Table} {s.Chain} #{s.Rule}: {s.Text}");
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
                w.WriteStartArray("endpoints");
                foreach (EndpointTrace e in r.Endpoints)
                {
                    w.WriteStartObject();
                    w.WriteString("address", e.Address);
                    w.WriteNumber("port", e.Port);
                    w.WriteNumber("probability", e.Probability);
                    w.WriteString("status", e.Status.ToString().ToLowerInvariant());
                    w.WriteString("summary", e.Summary);
                    w.WriteBoolean("reachable", e.Reaches);
                    w.WriteString("brokenAt", e.Pod?.BrokenAt);
                    w.WriteString("destinationNode", e.Pod?.DestinationNode);
                    Tracer.WriteHops(w, e.Pod?.Hops ?? []);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            });
            return;
        }
        o.WriteLine($"trace {r.Target} from {r.From}{(r.Node is null ? "" : $", handled by {r.Node}")}");
        TraceHop h = r.Service;
        o.WriteLine($" 0. {h.Name,-18} {Tracer.Mark(h.Status),-7} [{h.Source}] {h.Summary}");
        if (r.Reply is { } reply)
        {
            o.WriteLine($"      rules read: {(reply.RuleSources.Count == 0 ? "none" : string.Join("; ", reply.RuleSources))}");
            foreach (string n in reply.Notes)
            {
                o.WriteLine($"      note: {n}");
            }
            foreach (ServicePathReply p in reply.Paths)
            {
                o.WriteLine($"      {p.Summary}");
                o.WriteLine($"        chains: {string.Join(" → ", p.Steps.Select(s => s.Chain).Distinct())}");
            }
        }
        foreach (EndpointTrace e in r.Endpoints)
        {
            o.WriteLine($"endpoint {e.Address}:{e.Port} ({ServiceNatPercent(e.Probability)}){(e.Pod is null ? ": " + e.Summary : "")}");
            if (e.Pod is { } pod)
            {
                Tracer.WriteHops(o, pod, "   ");
            }
        }
        int n2 = r.Endpoints.Count(e => e.Reaches);
        o.WriteLine(r.Reaches ? $"{n2} of {r.Reply?.Paths.Count ?? 0} path(s) reach a pod" : r.BrokenAt is { } b ? $"no path reaches a pod (breaks at: {b})" : "no path reaches a pod that could be checked");
    }

    private static string ServiceNatPercent(double p) => (p * 100).ToString(Math.Abs(p * 100 - Math.Round(p * 100)) < 1e-6 ? "0" : "0.##", CultureInfo.InvariantCulture) + "%";
}
