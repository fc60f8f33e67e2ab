using System.Globalization;
using System.Net;
using System.Text.RegularExpressions;

namespace CalicoSharp.ServiceNat;

/// <summary>One way a connection to a Service address goes on this node, in words and facts.</summary>
public sealed record ServicePath(double Probability, NatFate Fate, IPAddress Destination, int Port, bool Dnat, bool Masquerade, string? MasqueradeReason, IReadOnlyList<NatStep> Steps, string Summary);

/// <summary>What kube-proxy's rules on one node do with a connection: the service port matched, each path with its chance.</summary>
public sealed record ServiceAnswer(string? ServicePort, string? Kind, IReadOnlyList<ServicePath> Paths, string Summary, string? Problem);

/// <summary>Reads the evaluator's outcomes the way kube-proxy's rules are meant: service port names from comments and
/// chain names, masquerade reasons from the rule that marked the packet, REJECT and DROP said plainly.</summary>
public static partial class ServiceView
{
    [GeneratedRegex(@"(?<n>[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*:[-a-z0-9]*)")]
    private static partial Regex PortNameInComment();

    [GeneratedRegex(@"^(?:service|external|local|endpoint)-[A-Z2-7]{8}-(?<ns>[^/]+)/(?<name>[^/]+)/(?<proto>[a-z]+)/(?<port>[^_]*)")]
    private static partial Regex NftChain();

    public static string Percent(double p) => (p * 100).ToString(p * 100 == Math.Round(p * 100) ? "0" : "0.##", CultureInfo.InvariantCulture) + "%";

    public static ServiceAnswer Interpret(IReadOnlyList<NatOutcome> outcomes, NatPacket packet, string node)
    {
        ArgumentNullException.ThrowIfNull(outcomes);
        ArgumentNullException.ThrowIfNull(packet);
        string target = $"{Host(packet.Destination)}:{packet.DestinationPort}/{packet.Protocol}";
        string? servicePort = null, kind = null;
        foreach (NatStep s in outcomes.SelectMany(o => o.Path.Concat(o.DecidedBy is { } d ? [d] : [])))
        {
            servicePort ??= PortName(s);
            kind ??= Kind(s);
        }
        var paths = new List<ServicePath>();
        foreach (NatOutcome o in outcomes)
        {
            string? why = o.MasqueradedBy is null ? null : MasqueradeReason(o.MarkedBy);
            string chance = outcomes.Count > 1 ? $"{Percent(o.Probability)}: " : "";
            string to = $"{Host(o.Packet.Destination)}:{o.Packet.DestinationPort}";
            string summary = o.Fate switch
            {
                NatFate.Forwarded when o.Packet.Dnat => $"{chance}DNAT to {to}" + (why is null ? ", source kept" : $", masqueraded ({why})"),
                NatFate.DeliveredLocally when o.Packet.Dnat => $"{chance}DNAT to {to}, an address of {node} itself (a host-network endpoint)" + (why is null ? "" : $", masqueraded ({why})"),
                NatFate.Forwarded or NatFate.DeliveredLocally => $"{chance}no kube-proxy rule on {node} matches {target}: no Service has that address and port, so the packet goes on to {Host(o.Packet.Destination)} unchanged"
                    + (o.Fate == NatFate.DeliveredLocally ? $" and {node} receives it itself" : ""),
                NatFate.Rejected => $"{chance}REJECT by {Where(o.DecidedBy)}: {Because(o.DecidedBy, servicePort)}; the client is refused at once (ICMP port unreachable)",
                NatFate.Dropped => $"{chance}DROP by {Where(o.DecidedBy)}: {Because(o.DecidedBy, servicePort)}; packets are silently dropped and the client times out",
                _ => $"{chance}not evaluated: {o.Unchecked}",
            };
            paths.Add(new ServicePath(o.Probability, o.Fate, o.Packet.Destination, o.Packet.DestinationPort, o.Packet.Dnat, o.MasqueradedBy is not null, why, o.Path, summary));
        }
        int reaching = paths.Count(p => p.Dnat && p.Fate is NatFate.Forwarded or NatFate.DeliveredLocally);
        string name = servicePort is null ? "" : $"{servicePort}{(kind is null ? "" : $" ({kind})")}";
        string? problem = null;
        string summaryText;
        if (reaching > 0)
        {
            summaryText = $"{target} is Service port {name}: kube-proxy on {node} picks one of {reaching} endpoint path(s)";
        }
        else if (paths.Any(p => p.Fate == NatFate.Unchecked))
        {
            summaryText = $"{target}: the rules on {node} could not be evaluated to the end";
        }
        else if (servicePort is null && paths.All(p => p.Fate is NatFate.Forwarded or NatFate.DeliveredLocally))
        {
            problem = paths[0].Summary;
            summaryText = problem;
        }
        else
        {
            problem = $"{(servicePort is null ? target : "Service port " + name)}: " + string.Join("; ", paths.Select(p => p.Summary));
            summaryText = problem;
        }
        return new ServiceAnswer(servicePort, kind, paths, summaryText, problem);
    }

    private static string Host(IPAddress a) => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{a}]" : a.ToString();

    private static string Where(NatStep? s) => s is null ? "policy" : $"{s.Table} chain {s.Chain} rule {s.Rule}";

    private static string Because(NatStep? s, string? port)
    {
        string c = s?.Comment ?? "";
        string name = PortName(s) ?? port ?? "the service";
        if (c.Contains("has no local endpoints", StringComparison.Ordinal) || s?.Chain == "endpoints-check" && s.Text.EndsWith(": drop", StringComparison.Ordinal))
        {
            return $"{name} has no local endpoints (externalTrafficPolicy: Local, and no endpoint runs on this node)";
        }
        if (c.Contains("has no endpoints", StringComparison.Ordinal) || s?.Chain is "endpoints-check" or "reject-chain")
        {
            return $"{name} has no endpoints";
        }
        return $"rule '{s?.Text}'";
    }

    /// <summary>"namespace/name:port" from an iptables comment or an nftables chain name.</summary>
    public static string? PortName(NatStep? s)
    {
        if (s is null)
        {
            return null;
        }
        foreach (string? candidate in new[] { s.Target, s.Chain })
        {
            if (candidate is not null && NftChain().Match(candidate) is { Success: true } m)
            {
                return $"{m.Groups["ns"].Value}/{m.Groups["name"].Value}:{m.Groups["port"].Value}";
            }
        }
        return s.Comment is { } c && PortNameInComment().Match(c) is { Success: true } n ? n.Groups["n"].Value : null;
    }

    private static string? Kind(NatStep s)
    {
        if (s.Comment is { } c)
        {
            foreach (string k in new[] { "cluster IP", "external IP", "loadbalancer IP" })
            {
                if (c.EndsWith(" " + k, StringComparison.Ordinal) && s.Chain == "KUBE-SERVICES")
                {
                    return k;
                }
            }
        }
        if (s.Chain == "KUBE-NODEPORTS" || s.Chain == "services" && s.Text.Contains("@service-nodeports", StringComparison.Ordinal))
        {
            return "NodePort";
        }
        if (s.Chain == "services" && s.Target is { } t)
        {
            return t.StartsWith("service-", StringComparison.Ordinal) ? "cluster IP" : t.StartsWith("external-", StringComparison.Ordinal) ? "external or load balancer IP" : null;
        }
        return null;
    }

    /// <summary>Why kube-proxy masquerades: read from the rule that sent the packet to KUBE-MARK-MASQ / mark-for-masquerade.</summary>
    public static string MasqueradeReason(NatStep? marked)
    {
        if (marked is null)
        {
            return "the packet carried the masquerade mark";
        }
        string chain = marked.Chain, comment = marked.Comment ?? "";
        if (chain.StartsWith("KUBE-EXT-", StringComparison.Ordinal) || chain.StartsWith("external-", StringComparison.Ordinal))
        {
            return comment.Contains("LOCAL", StringComparison.OrdinalIgnoreCase) || marked.Text.Contains("fib saddr", StringComparison.Ordinal) || marked.Text.Contains("--src-type LOCAL", StringComparison.Ordinal)
                ? "the client is this node itself, whose address would come back to it"
                : "external traffic and externalTrafficPolicy: Cluster — the endpoint may be on another node, so the reply must come back through this node";
        }
        if (chain.StartsWith("KUBE-SVC-", StringComparison.Ordinal) || chain.StartsWith("service-", StringComparison.Ordinal))
        {
            return "the client is outside the cluster's pod CIDR and connects to the cluster IP";
        }
        if (chain.StartsWith("KUBE-SEP-", StringComparison.Ordinal) || chain.StartsWith("endpoint-", StringComparison.Ordinal))
        {
            return "a hairpin: the endpoint connects to its own Service and was picked itself";
        }
        return $"{marked.Table} chain {chain} rule {marked.Rule} ({marked.Text})";
    }
}
