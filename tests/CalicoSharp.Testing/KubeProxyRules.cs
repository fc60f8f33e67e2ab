using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;

namespace CalicoSharp.Testing;

/// <summary>One port of a lab Service (Kubernetes ServicePort): name, port, protocol, the pods' port, a NodePort.</summary>
public sealed record LabServicePort(string Name, int Port, string Protocol = "TCP", int TargetPort = 0, int NodePort = 0)
{
    public int EndpointPort => TargetPort == 0 ? Port : TargetPort;
}

/// <summary>An endpoint: the pod's address and the node it runs on (kube-proxy's "local" test for eTP Local).</summary>
public sealed record LabEndpoint(string Address, string Node);

/// <summary>A small Service description: what kube-proxy would read from a Service and its EndpointSlices.</summary>
public sealed record LabService(string Namespace, string Name, string ClusterIp, IReadOnlyList<LabServicePort> Ports, IReadOnlyList<LabEndpoint> Endpoints)
{
    public IReadOnlyList<string> ExternalIps { get; init; } = [];

    public IReadOnlyList<string> LoadBalancerIps { get; init; } = [];

    /// <summary>externalTrafficPolicy: Local (false: Cluster, the default).</summary>
    public bool ExternalTrafficPolicyLocal { get; init; }
}

/// <summary>
/// Stands in for kube-proxy, which cannot be installed in the lab: writes, for one node, the NAT rules kube-proxy's
/// iptables mode (pkg/proxy/iptables/proxier.go) or nftables mode (pkg/proxy/nftables/proxier.go) programs for these
/// Services — the same chains and chain-name hashes, rule order, probabilities, masquerade mark (0x4000), comments,
/// the cluster CIDR as the local-traffic detector and NodePorts on every local address. What it leaves out:
/// session affinity, loadBalancerSourceRanges, topology hints, health-check node ports and kubelet's own chains.
/// </summary>
public static class KubeProxyRules
{
    public const string MasqueradeMark = "0x4000";

    /// <summary>kube-proxy's iptables chain-name hash: the first 16 characters of base32(sha256(name + protocol)).</summary>
    public static string Hash(string text) => Base32(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];

    public static string ServiceChain(string servicePortName, string protocol) => "KUBE-SVC-" + Hash(servicePortName + protocol.ToLowerInvariant());

    private static string Base32(byte[] data)
    {
        const string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        var sb = new StringBuilder();
        int buffer = 0, bits = 0;
        foreach (byte b in data)
        {
            buffer = (buffer << 8) | b;
            bits += 8;
            while (bits >= 5)
            {
                sb.Append(alphabet[(buffer >> (bits - 5)) & 31]);
                bits -= 5;
            }
        }
        if (bits > 0)
        {
            sb.Append(alphabet[(buffer << (5 - bits)) & 31]);
        }
        return sb.ToString();
    }

    /// <summary>kube-proxy's --probability text for endpoint i of n: 1/(n-i), "%0.10f".</summary>
    public static string Probability(int remaining) => (1.0 / remaining).ToString("0.0000000000", CultureInfo.InvariantCulture);

    /// <summary>What iptables-save prints for it: xt_statistic keeps lround(p * 2^31) and prints it back with 11 decimals.</summary>
    public static string SavedProbability(int remaining) =>
        (Math.Round(0x80000000 * (1.0 / remaining), MidpointRounding.AwayFromZero) / 0x80000000).ToString("0.00000000000", CultureInfo.InvariantCulture);

    private static string Host(string a) => a.Contains(':', StringComparison.Ordinal) ? $"[{a}]" : a;

    private static string Endpoint(LabEndpoint e, LabServicePort p) => $"{Host(e.Address)}:{p.EndpointPort.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>One iptables rule as parts, so it can be written in kube-proxy's order or iptables-save's.</summary>
    private sealed class Rule(string chain)
    {
        private readonly List<(int Rank, string Text)> _parts = [];

        public Rule Part(int rank, string text)
        {
            _parts.Add((rank, text));
            return this;
        }

        public string Write(bool saveOrder, bool v6)
        {
            IEnumerable<(int Rank, string Text)> parts = saveOrder ? _parts.OrderBy(p => p.Rank) : _parts;
            string s = $"-A {chain} " + string.Join(' ', parts.Select(p => p.Text));
            if (!saveOrder)
            {
                return s;
            }
            // iptables-save writes host addresses with their length, and each statistic probability as the kernel holds it.
            return System.Text.RegularExpressions.Regex.Replace(s, @"(-[sd]) ([0-9a-f.:]+)( |$)", m => $"{m.Groups[1].Value} {m.Groups[2].Value}/{(v6 ? 128 : 32)}{m.Groups[3].Value}");
        }
    }

    // Ranks of iptables-save's order: -s, -d, -i, -p, then the matches as given, then the target.
    private static Rule Comment(this Rule r, string c) => r.Part(10, $"-m comment --comment \"{c.Replace("\"", "\\\"", StringComparison.Ordinal)}\"");

    private static Rule Proto(this Rule r, string p, int? dport, bool saveOrder)
    {
        // kube-proxy writes "-m tcp -p tcp"; iptables-save "-p tcp ... -m tcp --dport 80".
        r.Part(10, dport is { } d && saveOrder ? $"-m {p} --dport {d}" : $"-m {p}");
        return r.Part(3, $"-p {p}");
    }

    /// <summary>The iptables-restore input kube-proxy's iptables mode feeds for these Services on <paramref name="node"/>
    /// (with the jump rules from the built-in chains it ensures separately), or — <paramref name="saveOrder"/> — the same
    /// rules as iptables-save prints them back.</summary>
    public static string Iptables(IEnumerable<LabService> services, string node, string clusterCidr, bool ipv6 = false, bool saveOrder = false)
    {
        ArgumentNullException.ThrowIfNull(services);
        var filterChains = new List<string> { "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL" };
        var natChains = new List<string> { "KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ" };
        var filter = new List<Rule>();
        var nat = new List<Rule>();
        string mark = $"{MasqueradeMark}/{MasqueradeMark}";
        Rule R(List<Rule> list, string chain)
        {
            var r = new Rule(chain);
            list.Add(r);
            return r;
        }
        // The jumps kube-proxy ensures from the built-in chains (iptablesJumpChains).
        R(filter, "INPUT").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes load balancer firewall").Part(99, "-j KUBE-PROXY-FIREWALL");
        R(filter, "INPUT").Comment("kubernetes health check service ports").Part(99, "-j KUBE-NODEPORTS");
        R(filter, "INPUT").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes externally-visible service portals").Part(99, "-j KUBE-EXTERNAL-SERVICES");
        R(filter, "FORWARD").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes load balancer firewall").Part(99, "-j KUBE-PROXY-FIREWALL");
        R(filter, "FORWARD").Comment("kubernetes forwarding rules").Part(99, "-j KUBE-FORWARD");
        R(filter, "FORWARD").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes service portals").Part(99, "-j KUBE-SERVICES");
        R(filter, "FORWARD").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes externally-visible service portals").Part(99, "-j KUBE-EXTERNAL-SERVICES");
        R(filter, "OUTPUT").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes load balancer firewall").Part(99, "-j KUBE-PROXY-FIREWALL");
        R(filter, "OUTPUT").Part(10, "-m conntrack --ctstate NEW").Comment("kubernetes service portals").Part(99, "-j KUBE-SERVICES");
        R(nat, "PREROUTING").Comment("kubernetes service portals").Part(99, "-j KUBE-SERVICES");
        R(nat, "OUTPUT").Comment("kubernetes service portals").Part(99, "-j KUBE-SERVICES");
        R(nat, "POSTROUTING").Comment("kubernetes postrouting rules").Part(99, "-j KUBE-POSTROUTING");
        R(nat, "KUBE-POSTROUTING").Part(10, $"-m mark ! --mark {mark}").Part(99, "-j RETURN");
        R(nat, "KUBE-POSTROUTING").Part(99, saveOrder ? $"-j MARK --set-xmark {MasqueradeMark}/0x0" : $"-j MARK --xor-mark {MasqueradeMark}");
        R(nat, "KUBE-POSTROUTING").Comment("kubernetes service traffic requiring SNAT").Part(99, "-j MASQUERADE --random-fully");
        R(nat, "KUBE-MARK-MASQ").Part(99, saveOrder ? $"-j MARK --set-xmark {mark}" : $"-j MARK --or-mark {MasqueradeMark}");

        foreach (LabService s in services)
        {
            foreach (LabServicePort port in s.Ports)
            {
                string proto = port.Protocol.ToLowerInvariant();
                string name = $"{s.Namespace}/{s.Name}:{port.Name}";
                string hash = Hash(name + proto);
                string svc = "KUBE-SVC-" + hash, svl = "KUBE-SVL-" + hash, ext = "KUBE-EXT-" + hash;
                List<LabEndpoint> local = [.. s.Endpoints.Where(e => e.Node == node)];
                bool hasEndpoints = s.Endpoints.Count > 0;
                bool externallyAccessible = s.ExternalIps.Count > 0 || s.LoadBalancerIps.Count > 0 || port.NodePort != 0;
                bool usesLocal = s.ExternalTrafficPolicyLocal && externallyAccessible && local.Count > 0;
                bool hasExternalEndpoints = hasEndpoints && (!s.ExternalTrafficPolicyLocal || local.Count > 0);
                string externalPolicyChain = s.ExternalTrafficPolicyLocal ? svl : svc;
                string filterTarget = !hasEndpoints ? "REJECT" : "DROP";
                string filterComment = !hasEndpoints ? $"{name} has no endpoints" : $"{name} has no local endpoints";
                Rule Capture(List<Rule> list, string chain, string comment, string? dst, int dport)
                {
                    Rule r = R(list, chain).Comment(comment).Proto(proto, saveOrder ? dport : null, saveOrder);
                    if (dst is not null)
                    {
                        r.Part(2, $"-d {dst}");
                    }
                    if (!saveOrder)
                    {
                        r.Part(13, $"--dport {dport}");
                    }
                    return r;
                }
                string Reject(string t) => t == "REJECT" && saveOrder ? $"-j REJECT --reject-with {(ipv6 ? "icmp6-port-unreachable" : "icmp-port-unreachable")}" : "-j " + t;

                // Capture the cluster IP.
                if (hasEndpoints)
                {
                    Capture(nat, "KUBE-SERVICES", $"{name} cluster IP", s.ClusterIp, port.Port).Part(99, "-j " + svc);
                }
                else
                {
                    Capture(filter, "KUBE-SERVICES", filterComment, s.ClusterIp, port.Port).Part(99, Reject(filterTarget));
                }
                foreach (string ip in s.ExternalIps)
                {
                    if (hasEndpoints)
                    {
                        Capture(nat, "KUBE-SERVICES", $"{name} external IP", ip, port.Port).Part(99, "-j " + ext);
                    }
                    if (!hasExternalEndpoints)
                    {
                        Capture(filter, "KUBE-EXTERNAL-SERVICES", filterComment, ip, port.Port).Part(99, Reject(filterTarget));
                    }
                }
                foreach (string ip in s.LoadBalancerIps)
                {
                    if (hasEndpoints)
                    {
                        Capture(nat, "KUBE-SERVICES", $"{name} loadbalancer IP", ip, port.Port).Part(99, "-j " + ext);
                    }
                    if (!hasExternalEndpoints)
                    {
                        Capture(filter, "KUBE-EXTERNAL-SERVICES", filterComment, ip, port.Port).Part(99, Reject(filterTarget));
                    }
                }
                if (port.NodePort != 0)
                {
                    if (hasEndpoints)
                    {
                        Capture(nat, "KUBE-NODEPORTS", name, null, port.NodePort).Part(99, "-j " + ext);
                    }
                    if (!hasExternalEndpoints)
                    {
                        Capture(filter, "KUBE-EXTERNAL-SERVICES", filterComment, null, port.NodePort).Part(10, "-m addrtype --dst-type LOCAL").Part(99, Reject(filterTarget));
                    }
                }
                if (!hasEndpoints)
                {
                    continue;
                }
                natChains.Add(svc);
                // Masquerade off-cluster traffic to the cluster IP (the local-traffic detector: the cluster CIDR).
                Capture(nat, svc, $"{name} cluster IP", s.ClusterIp, port.Port).Part(1, $"! -s {clusterCidr}").Part(99, "-j KUBE-MARK-MASQ");
                if (externallyAccessible)
                {
                    natChains.Add(ext);
                    if (!s.ExternalTrafficPolicyLocal)
                    {
                        R(nat, ext).Comment($"masquerade traffic for {name} external destinations").Part(99, "-j KUBE-MARK-MASQ");
                    }
                    else
                    {
                        R(nat, ext).Comment($"pod traffic for {name} external destinations").Part(1, $"-s {clusterCidr}").Part(99, "-j " + svc);
                        R(nat, ext).Comment($"masquerade LOCAL traffic for {name} external destinations").Part(10, "-m addrtype --src-type LOCAL").Part(99, "-j KUBE-MARK-MASQ");
                        R(nat, ext).Comment($"route LOCAL traffic for {name} external destinations").Part(10, "-m addrtype --src-type LOCAL").Part(99, "-j " + svc);
                    }
                    if (hasExternalEndpoints)
                    {
                        R(nat, ext).Part(99, "-j " + externalPolicyChain);
                    }
                }
                void Balance(string chain, List<LabEndpoint> eps)
                {
                    for (int i = 0; i < eps.Count; i++)
                    {
                        Rule r = R(nat, chain).Comment($"{name} -> {Endpoint(eps[i], port)}");
                        if (i < eps.Count - 1)
                        {
                            r.Part(10, $"-m statistic --mode random --probability {(saveOrder ? SavedProbability(eps.Count - i) : Probability(eps.Count - i))}");
                        }
                        r.Part(99, "-j KUBE-SEP-" + Hash(name + proto + Endpoint(eps[i], port)));
                    }
                }
                Balance(svc, [.. s.Endpoints]);
                if (usesLocal)
                {
                    natChains.Add(svl);
                    Balance(svl, local);
                }
                foreach (LabEndpoint e in s.ExternalTrafficPolicyLocal || !externallyAccessible ? s.Endpoints : s.Endpoints)
                {
                    string sep = "KUBE-SEP-" + Hash(name + proto + Endpoint(e, port));
                    natChains.Add(sep);
                    R(nat, sep).Comment(name).Part(1, $"-s {e.Address}").Part(99, "-j KUBE-MARK-MASQ");
                    R(nat, sep).Comment(name).Proto(proto, null, saveOrder).Part(99, $"-j DNAT --to-destination {Endpoint(e, port)}");
                }
            }
        }
        R(nat, "KUBE-SERVICES").Comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain").Part(10, "-m addrtype --dst-type LOCAL")
            .Part(2, ipv6 ? "! -d ::1/128" : "").Part(99, "-j KUBE-NODEPORTS");
        R(filter, "KUBE-FORWARD").Part(10, "-m conntrack --ctstate INVALID").Part(99, "-j DROP");
        R(filter, "KUBE-FORWARD").Comment("kubernetes forwarding rules").Part(10, $"-m mark --mark {mark}").Part(99, "-j ACCEPT");
        R(filter, "KUBE-FORWARD").Comment("kubernetes forwarding conntrack rule").Part(10, "-m conntrack --ctstate RELATED,ESTABLISHED").Part(99, "-j ACCEPT");

        var sb = new StringBuilder();
        sb.Append("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        foreach (string c in filterChains)
        {
            sb.Append(CultureInfo.InvariantCulture, $":{c} - [0:0]\n");
        }
        foreach (Rule r in filter)
        {
            sb.Append(Clean(r.Write(saveOrder, ipv6))).Append('\n');
        }
        sb.Append("COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        foreach (string c in natChains.Distinct())
        {
            sb.Append(CultureInfo.InvariantCulture, $":{c} - [0:0]\n");
        }
        foreach (Rule r in nat)
        {
            sb.Append(Clean(r.Write(saveOrder, ipv6))).Append('\n');
        }
        sb.Append("COMMIT\n");
        return sb.ToString();
    }

    private static string Clean(string line) => string.Join(' ', line.Split(' ', StringSplitOptions.RemoveEmptyEntries));

    /// <summary>An nftables chain-name base: the first 8 characters of base32(sha256(ns/name/proto/port)), a dash, the name.</summary>
    private static string NftBase(string text) => Base32(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..8] + "-" + text;

    /// <summary>The nft script (for <c>nft -f</c>) kube-proxy's nftables mode would leave in table <c>ip kube-proxy</c>
    /// (<c>ip6 kube-proxy</c> with <paramref name="ipv6"/>) for these Services on <paramref name="node"/>.</summary>
    public static string Nftables(IEnumerable<LabService> services, string node, string clusterCidr, bool ipv6 = false)
    {
        ArgumentNullException.ThrowIfNull(services);
        string fam = ipv6 ? "ip6" : "ip", ipX = ipv6 ? "ip6" : "ip", addrType = ipv6 ? "ipv6_addr" : "ipv4_addr";
        string t = $"{fam} kube-proxy";
        var sb = new StringBuilder();
        void L(string line) => sb.Append(line).Append('\n');
        L($"add table {t} {{ comment \"rules for kube-proxy\" ; }}");
        L($"delete table {t}");
        L($"add table {t} {{ comment \"rules for kube-proxy\" ; }}");
        foreach ((string name, string type, string hook, string prio) in new[]
        {
            ("filter-input", "filter", "input", "-101"), ("filter-forward", "filter", "forward", "-101"), ("filter-output", "filter", "output", "-101"),
            ("nat-prerouting", "nat", "prerouting", "-100"), ("nat-output", "nat", "output", "-100"), ("nat-postrouting", "nat", "postrouting", "100"),
        })
        {
            L($"add chain {t} {name} {{ type {type} hook {hook} priority {prio} ; }}");
        }
        foreach (string c in new[] { "endpoints-check", "forward", "firewall-check", "firewall-allow-check", "services", "masquerading", "mark-for-masquerade", "reject-chain" })
        {
            L($"add chain {t} {c}");
        }
        foreach ((string dst, string src, string extra) in new[]
        {
            ("endpoints-check", "filter-input", "ct state new "), ("endpoints-check", "filter-forward", "ct state new "), ("endpoints-check", "filter-output", "ct state new "),
            ("forward", "filter-forward", ""), ("firewall-check", "filter-input", "ct state new "), ("firewall-check", "filter-output", "ct state new "),
            ("firewall-check", "filter-forward", "ct state new "), ("services", "nat-output", ""), ("services", "nat-prerouting", ""), ("masquerading", "nat-postrouting", ""),
        })
        {
            L($"add rule {t} {src} {extra}jump {dst}");
        }
        L($"add rule {t} mark-for-masquerade mark set mark or {MasqueradeMark}");
        L($"add rule {t} masquerading mark and {MasqueradeMark} == 0 return");
        L($"add rule {t} masquerading mark set mark xor {MasqueradeMark}");
        L($"add rule {t} masquerading masquerade fully-random");
        L($"add rule {t} forward ct state invalid drop");
        L($"add map {t} no-endpoint-services {{ type {addrType} . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}");
        L($"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}");
        L($"add rule {t} reject-chain reject");
        L($"add rule {t} endpoints-check {ipX} daddr . meta l4proto . th dport vmap @no-endpoint-services");
        L($"add rule {t} endpoints-check fib daddr type local {(ipv6 ? "ip6 daddr != ::1" : "ip daddr != 127.0.0.0/8")} meta l4proto . th dport vmap @no-endpoint-nodeports");
        L($"add set {t} firewall {{ type {addrType} . inet_proto . inet_service ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}");
        L($"add set {t} firewall-allow {{ type {addrType} . inet_proto . inet_service . {addrType} ; flags interval ; comment \"destinations+sources that are allowed by LoadBalancerSourceRanges\" ; }}");
        L($"add rule {t} firewall-check {ipX} daddr . meta l4proto . th dport @firewall jump firewall-allow-check");
        L($"add rule {t} firewall-allow-check {ipX} daddr . meta l4proto . th dport . {ipX} saddr @firewall-allow return");
        L($"add rule {t} firewall-allow-check drop");
        L($"add map {t} service-ips {{ type {addrType} . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}");
        L($"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}");
        L($"add rule {t} services {ipX} daddr . meta l4proto . th dport vmap @service-ips");
        L($"add rule {t} services fib daddr type local {(ipv6 ? "ip6 daddr != ::1" : "ip daddr != 127.0.0.0/8")} meta l4proto . th dport vmap @service-nodeports");

        foreach (LabService s in services)
        {
            foreach (LabServicePort port in s.Ports)
            {
                string proto = port.Protocol.ToLowerInvariant();
                string name = $"{s.Namespace}/{s.Name}:{port.Name}";
                string chainBase = NftBase($"{s.Namespace}/{s.Name}/{proto}/{port.Name}");
                string svc = "service-" + chainBase, svl = "local-" + chainBase, ext = "external-" + chainBase;
                List<LabEndpoint> local = [.. s.Endpoints.Where(e => e.Node == node)];
                bool hasEndpoints = s.Endpoints.Count > 0;
                bool externallyAccessible = s.ExternalIps.Count > 0 || s.LoadBalancerIps.Count > 0 || port.NodePort != 0;
                bool hasExternalEndpoints = hasEndpoints && (!s.ExternalTrafficPolicyLocal || local.Count > 0);
                string filterVerdict = !hasEndpoints ? "goto reject-chain" : "drop";
                string Ep(LabEndpoint e) => "endpoint-" + NftBase($"{s.Namespace}/{s.Name}/{proto}/{port.Name}__{e.Address.Replace(':', '.')}/{port.EndpointPort.ToString(CultureInfo.InvariantCulture)}");
                if (hasEndpoints)
                {
                    foreach (string c in s.Endpoints.Select(Ep).Prepend(svc).Concat(externallyAccessible ? [ext] : []).Concat(s.ExternalTrafficPolicyLocal && local.Count > 0 ? [svl] : []))
                    {
                        L($"add chain {t} {c}");
                    }
                    L($"add element {t} service-ips {{ {s.ClusterIp} . {proto} . {port.Port} : goto {svc} }}");
                }
                else
                {
                    L($"add element {t} no-endpoint-services {{ {s.ClusterIp} . {proto} . {port.Port} comment \"{name}\" : {filterVerdict} }}");
                }
                foreach (string ip in s.ExternalIps.Concat(s.LoadBalancerIps))
                {
                    if (hasEndpoints)
                    {
                        L($"add element {t} service-ips {{ {ip} . {proto} . {port.Port} : goto {ext} }}");
                    }
                    if (!hasExternalEndpoints)
                    {
                        L($"add element {t} no-endpoint-services {{ {ip} . {proto} . {port.Port} comment \"{name}\" : {filterVerdict} }}");
                    }
                }
                if (port.NodePort != 0)
                {
                    if (hasEndpoints)
                    {
                        L($"add element {t} service-nodeports {{ {proto} . {port.NodePort} : goto {ext} }}");
                    }
                    if (!hasExternalEndpoints)
                    {
                        L($"add element {t} no-endpoint-nodeports {{ {proto} . {port.NodePort} comment \"{name}\" : {filterVerdict} }}");
                    }
                }
                if (!hasEndpoints)
                {
                    continue;
                }
                L($"add rule {t} {svc} {ipX} daddr {s.ClusterIp} {proto} dport {port.Port} {ipX} saddr != {clusterCidr} jump mark-for-masquerade");
                if (externallyAccessible)
                {
                    if (!s.ExternalTrafficPolicyLocal)
                    {
                        L($"add rule {t} {ext} jump mark-for-masquerade");
                    }
                    else
                    {
                        L($"add rule {t} {ext} {ipX} saddr {clusterCidr} goto {svc} comment \"short-circuit pod traffic\"");
                        L($"add rule {t} {ext} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"");
                        L($"add rule {t} {ext} fib saddr type local goto {svc} comment \"short-circuit local traffic\"");
                    }
                    if (hasExternalEndpoints)
                    {
                        L($"add rule {t} {ext} goto {(s.ExternalTrafficPolicyLocal ? svl : svc)}");
                    }
                }
                void Balance(string chain, List<LabEndpoint> eps) =>
                    L($"add rule {t} {chain} numgen random mod {eps.Count} vmap {{ {string.Join(", ", eps.Select((e, i) => $"{i} : goto {Ep(e)}"))} }}");
                Balance(svc, [.. s.Endpoints]);
                if (s.ExternalTrafficPolicyLocal && local.Count > 0)
                {
                    Balance(svl, local);
                }
                foreach (LabEndpoint e in s.Endpoints)
                {
                    L($"add rule {t} {Ep(e)} {ipX} saddr {e.Address} jump mark-for-masquerade");
                    L($"add rule {t} {Ep(e)} meta l4proto {proto} dnat to {Endpoint(e, port)}");
                }
            }
        }
        return sb.ToString();
    }

    /// <summary>Programs the node (its network namespace) as kube-proxy's iptables mode would: replaces the nat and
    /// filter tables with these Services' rules (iptables-restore; ip6tables-restore with <paramref name="ipv6"/>).</summary>
    public static async Task ApplyIptablesAsync(string netns, IEnumerable<LabService> services, string node, string clusterCidr, bool ipv6 = false)
    {
        ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", netns, ipv6 ? "ip6tables-restore" : "iptables-restore"], TimeSpan.FromSeconds(60), null,
            Iptables(services, node, clusterCidr, ipv6)).ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new InvalidOperationException($"iptables-restore in {netns} failed: {r.Stderr}");
        }
    }

    /// <summary>Removes kube-proxy's iptables rules from the node (empty nat and filter tables).</summary>
    public static async Task ClearIptablesAsync(string netns, bool ipv6 = false)
    {
        ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", netns, ipv6 ? "ip6tables-restore" : "iptables-restore"], TimeSpan.FromSeconds(60), null,
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n").ConfigureAwait(false);
        if (r.ExitCode != 0)
        {
            throw new InvalidOperationException($"iptables-restore in {netns} failed: {r.Stderr}");
        }
    }

    /// <summary>Programs the node as kube-proxy's nftables mode would (table ip kube-proxy, replaced whole).</summary>
    public static async Task ApplyNftablesAsync(string netns, IEnumerable<LabService> services, string node, string clusterCidr, bool ipv6 = false)
    {
        string file = Path.Combine(Path.GetTempPath(), $"calicosharp-kube-proxy-{Guid.NewGuid():N}.nft");
        await File.WriteAllTextAsync(file, Nftables(services, node, clusterCidr, ipv6)).ConfigureAwait(false);
        try
        {
            ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", netns, "nft", "-f", file], TimeSpan.FromSeconds(60)).ConfigureAwait(false);
            if (r.ExitCode != 0)
            {
                throw new InvalidOperationException($"nft -f in {netns} failed: {r.Stderr}");
            }
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>Removes the kube-proxy nftables table from the node, if there is one.</summary>
    public static Task ClearNftablesAsync(string netns, bool ipv6 = false) =>
        ProcessRunner.RunAsync("ip", ["netns", "exec", netns, "nft", "delete", "table", ipv6 ? "ip6" : "ip", "kube-proxy"], TimeSpan.FromSeconds(30));

    /// <summary>The endpoint's address as an IPAddress (for checks).</summary>
    public static IPAddress Address(this LabEndpoint e) => IPAddress.Parse(e.Address);
}
