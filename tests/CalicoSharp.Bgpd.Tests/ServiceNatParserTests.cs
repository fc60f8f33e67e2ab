using System.Net;
using System.Net.Sockets;
using CalicoSharp.ServiceNat;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The rule reader and evaluator on rule sets the lab's kube-proxy stand-in writes, in kube-proxy's own
/// argument order (its iptables-restore input) and in iptables-save's.</summary>
public sealed class ServiceNatParserTests
{
    private const string Cidr = "10.244.0.0/16";
    private static readonly IPAddress Node1 = IPAddress.Parse("172.30.1.2");
    private static readonly NatEvaluator.FixedContext OnNode1 = new(Node1);

    internal static LabService Web(int endpoints, bool etpLocal = false, string proto = "TCP") => new("default", "web", "10.96.0.10",
        [new LabServicePort("http", 80, proto, TargetPort: 8080, NodePort: 30080)],
        [.. Enumerable.Range(0, endpoints).Select(i => new LabEndpoint($"10.244.{1 + i % 3}.{10 + i}", $"node{2 + i % 2}"))])
    {
        ExternalIps = ["172.30.250.10"],
        ExternalTrafficPolicyLocal = etpLocal,
    };

    private static IReadOnlyList<NatOutcome> Eval(string rules, string src, string dst, int port, string proto = "tcp", bool fromNode = false) =>
        NatEvaluator.Evaluate(IptablesParser.Parse(rules, AddressFamily.InterNetwork), new NatPacket(IPAddress.Parse(src), IPAddress.Parse(dst), proto, port), fromNode, OnNode1);

    [Theory]
    [InlineData("kube-system/kube-dns:dns", "udp", "KUBE-SVC-TCOU7JCQXEZGVUNU")]
    [InlineData("default/kubernetes:https", "tcp", "KUBE-SVC-NPX46M4PTMTKRN6Y")]
    public void Chain_names_are_kube_proxys_hashes(string name, string proto, string chain) => Assert.Equal(chain, KubeProxyRules.ServiceChain(name, proto));

    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(10, false)]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    [InlineData(10, true)]
    public void Each_endpoint_gets_an_equal_share(int n, bool saveOrder)
    {
        LabService web = Web(n);
        string rules = KubeProxyRules.Iptables([web], "node1", Cidr, saveOrder: saveOrder);
        IReadOnlyList<NatOutcome> o = Eval(rules, "10.244.9.9", "10.96.0.10", 80);
        Assert.Equal(n, o.Count);
        Assert.All(o, x => Assert.Equal(NatFate.Forwarded, x.Fate));
        Assert.All(o, x => Assert.Equal(1.0 / n, x.Probability, 6));
        Assert.Equal(web.Endpoints.Select(e => e.Address), o.Select(x => x.Packet.Destination.ToString()));
        Assert.All(o, x => Assert.Equal(8080, x.Packet.DestinationPort));
        Assert.All(o, x => Assert.Null(x.MasqueradedBy));
        ServiceAnswer a = ServiceView.Interpret(o, new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80), "node1");
        Assert.Equal("default/web:http", a.ServicePort);
        Assert.Equal("cluster IP", a.Kind);
        Assert.Null(a.Problem);
    }

    [Fact]
    public void Saved_probabilities_are_the_kernels()
    {
        string saved = KubeProxyRules.Iptables([Web(3)], "node1", Cidr, saveOrder: true);
        Assert.Contains("--probability 0.33333333349", saved, StringComparison.Ordinal);
        Assert.Contains("--probability 0.50000000000", saved, StringComparison.Ordinal);
        string restore = KubeProxyRules.Iptables([Web(3)], "node1", Cidr);
        Assert.Contains("--probability 0.3333333333 ", restore, StringComparison.Ordinal);
        Assert.Contains("-m tcp -p tcp -d 10.96.0.10 --dport 80", restore, StringComparison.Ordinal);
        Assert.Contains("-d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80", saved, StringComparison.Ordinal);
    }

    [Fact]
    public void External_ip_from_outside_is_masqueraded_under_cluster_policy()
    {
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([Web(2)], "node1", Cidr, saveOrder: true), "172.30.200.2", "172.30.250.10", 80);
        Assert.Equal(2, o.Count);
        Assert.All(o, x => Assert.NotNull(x.MasqueradedBy));
        ServiceAnswer a = ServiceView.Interpret(o, new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80), "node1");
        Assert.Equal("external IP", a.Kind);
        Assert.All(a.Paths, p => Assert.Contains("externalTrafficPolicy: Cluster", p.MasqueradeReason, StringComparison.Ordinal));
        Assert.Contains("KUBE-EXT-", string.Join(' ', o[0].Path.Select(s => s.Chain)), StringComparison.Ordinal);
    }

    [Fact]
    public void A_node_port_on_a_local_address_goes_through_kube_nodeports()
    {
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([Web(2)], "node1", Cidr), "172.30.200.2", Node1.ToString(), 30080);
        Assert.Equal(2, o.Count);
        Assert.All(o, x => Assert.Contains(x.Path, s => s.Chain == "KUBE-NODEPORTS"));
        Assert.Equal("NodePort", ServiceView.Interpret(o, new NatPacket(IPAddress.Any, Node1, "tcp", 30080), "node1").Kind);
        // Not a local address of this node: no NodePort.
        IReadOnlyList<NatOutcome> other = Eval(KubeProxyRules.Iptables([Web(2)], "node1", Cidr), "172.30.200.2", "172.30.2.2", 30080);
        Assert.False(Assert.Single(other).Packet.Dnat);
    }

    [Fact]
    public void A_cluster_ip_from_outside_the_pod_cidr_is_masqueraded()
    {
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([Web(2)], "node1", Cidr), "172.30.200.2", "10.96.0.10", 80);
        Assert.All(o, x => Assert.Equal("the client is outside the cluster's pod CIDR and connects to the cluster IP", ServiceView.MasqueradeReason(x.MarkedBy)));
    }

    [Fact]
    public void A_hairpin_is_masqueraded()
    {
        LabService web = Web(2);
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([web], "node1", Cidr), web.Endpoints[0].Address, "10.96.0.10", 80);
        NatOutcome self = o.Single(x => x.Packet.Destination.ToString() == web.Endpoints[0].Address);
        Assert.Contains("hairpin", ServiceView.MasqueradeReason(self.MarkedBy), StringComparison.Ordinal);
        Assert.Null(o.Single(x => x != self).MasqueradedBy);
    }

    [Fact]
    public void No_such_service_port_is_said_plainly()
    {
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([Web(2)], "node1", Cidr), "10.244.9.9", "10.96.0.10", 81);
        ServiceAnswer a = ServiceView.Interpret(o, new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 81), "node1");
        Assert.NotNull(a.Problem);
        Assert.Contains("no Service has that address and port", a.Problem, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void No_endpoints_is_a_reject(bool saveOrder)
    {
        IReadOnlyList<NatOutcome> o = Eval(KubeProxyRules.Iptables([Web(0)], "node1", Cidr, saveOrder: saveOrder), "10.244.9.9", "10.96.0.10", 80);
        NatOutcome r = Assert.Single(o);
        Assert.Equal(NatFate.Rejected, r.Fate);
        ServiceAnswer a = ServiceView.Interpret(o, new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80), "node1");
        Assert.Contains("REJECT", a.Problem, StringComparison.Ordinal);
        Assert.Contains("default/web:http has no endpoints", a.Problem, StringComparison.Ordinal);
    }

    [Fact]
    public void Local_policy_without_a_local_endpoint_drops_external_traffic_but_not_pods()
    {
        string rules = KubeProxyRules.Iptables([Web(2, etpLocal: true)], "node1", Cidr, saveOrder: true);
        NatOutcome d = Assert.Single(Eval(rules, "172.30.200.2", "172.30.250.10", 80));
        Assert.Equal(NatFate.Dropped, d.Fate);
        ServiceAnswer a = ServiceView.Interpret([d], new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80), "node1");
        Assert.Contains("DROP", a.Problem, StringComparison.Ordinal);
        Assert.Contains("has no local endpoints", a.Problem, StringComparison.Ordinal);
        // A pod of the cluster is short-circuited to every endpoint.
        Assert.Equal(2, Eval(rules, "10.244.9.9", "172.30.250.10", 80).Count(x => x.Packet.Dnat));
        // node2 has a local endpoint: external traffic keeps its source and goes to it only.
        NatOutcome local = Assert.Single(NatEvaluator.Evaluate(IptablesParser.Parse(KubeProxyRules.Iptables([Web(2, etpLocal: true)], "node2", Cidr), AddressFamily.InterNetwork),
            new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80), false, OnNode1));
        Assert.Equal("10.244.1.10", local.Packet.Destination.ToString());
        Assert.Null(local.MasqueradedBy);
    }

    [Fact]
    public void Ipv6_and_sctp()
    {
        var svc = new LabService("default", "sig", "fd00:96::10", [new LabServicePort("sctp", 3868, "SCTP")],
            [new LabEndpoint("fd10:244::5", "node2"), new LabEndpoint("fd10:244::45", "node3")]);
        foreach (bool save in new[] { false, true })
        {
            IReadOnlyList<NatTable> t = IptablesParser.Parse(KubeProxyRules.Iptables([svc], "node1", "fd10:244::/64", ipv6: true, saveOrder: save), AddressFamily.InterNetworkV6);
            IReadOnlyList<NatOutcome> o = NatEvaluator.Evaluate(t, new NatPacket(IPAddress.Parse("fd10:244::99"), IPAddress.Parse("fd00:96::10"), "sctp", 3868), false, OnNode1);
            Assert.Equal(["fd10:244::5", "fd10:244::45"], o.Select(x => x.Packet.Destination.ToString()));
            Assert.All(o, x => Assert.Equal(0.5, x.Probability, 6));
            Assert.DoesNotContain(NatEvaluator.Evaluate(t, new NatPacket(IPAddress.Parse("fd10:244::99"), IPAddress.Parse("fd00:96::10"), "tcp", 3868), false, OnNode1), x => x.Packet.Dnat);
        }
    }

    [Theory]
    [InlineData("-m recent --name KUBE-SEP-X --rcheck --seconds 10800 --reap", "-m recent")]
    [InlineData("-m statistic --mode nth --every 2 --packet 0", "-m statistic --mode nth")]
    [InlineData("-m set --match-set foo dst", "-m set")]
    [InlineData("-i eth0", "-i eth0")]
    public void A_rule_it_cannot_evaluate_is_named_and_stops_the_path(string condition, string named)
    {
        string rules = KubeProxyRules.Iptables([Web(2)], "node1", Cidr, saveOrder: true);
        string svc = KubeProxyRules.ServiceChain("default/web:http", "tcp");
        // Session affinity (and the like) puts such a rule before the balancing rules.
        int at = rules.IndexOf($"-A {svc} -m comment --comment \"default/web:http -> ", StringComparison.Ordinal);
        rules = rules.Insert(at, $"-A {svc} {condition} -j KUBE-SEP-X\n").Replace(":KUBE-MARK-MASQ - [0:0]", ":KUBE-MARK-MASQ - [0:0]\n:KUBE-SEP-X - [0:0]", StringComparison.Ordinal);
        NatOutcome u = Assert.Single(Eval(rules, "10.244.9.9", "10.96.0.10", 80));
        Assert.Equal(NatFate.Unchecked, u.Fate);
        Assert.Contains(named, u.Unchecked, StringComparison.Ordinal);
        Assert.Contains(svc, u.Unchecked, StringComparison.Ordinal);
        // A rule whose known conditions already fail is passed over, whatever else it has.
        Assert.All(Eval(rules, "10.244.9.9", "172.30.250.10", 81), x => Assert.NotEqual(NatFate.Unchecked, x.Fate));
    }

    [Fact]
    public void An_unknown_target_is_not_guessed()
    {
        string rules = KubeProxyRules.Iptables([Web(2)], "node1", Cidr).Replace("-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\"",
            "-A KUBE-SERVICES -d 10.96.0.10 -j LOG --log-prefix svc\n-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\"", StringComparison.Ordinal);
        NatOutcome u = Assert.Single(Eval(rules, "10.244.9.9", "10.96.0.10", 80));
        Assert.Equal(NatFate.Unchecked, u.Fate);
        Assert.Contains("-j LOG", u.Unchecked, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d\nCOMMIT\n", "line 3: -d needs a value")]
    [InlineData("-A KUBE-SERVICES -j ACCEPT\n", "line 1: a rule or chain before any *table line")]
    [InlineData("*nat\n-A KUBE-NOPE -j ACCEPT\nCOMMIT\n", "line 2: rule for chain KUBE-NOPE, which is not declared")]
    [InlineData("*nat\n:KUBE-SEP-A - [0:0]\n-A KUBE-SEP-A -p tcp -j DNAT --to-destination 10.1.1.1-10.1.1.3\nCOMMIT\n", "is not one address")]
    [InlineData("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A -m statistic --mode random --probability 1.5 -j ACCEPT\nCOMMIT\n", "is not a number from 0 to 1")]
    [InlineData("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A -m comment --comment \"open -j ACCEPT\nCOMMIT\n", "unterminated quote")]
    [InlineData("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A --dport 80 -j ACCEPT\nCOMMIT\n", "a port match without -p")]
    public void Malformed_input_is_refused_with_its_line(string text, string error)
    {
        NatParseException e = Assert.Throws<NatParseException>(() => IptablesParser.Parse(text, AddressFamily.InterNetwork));
        Assert.Contains(error, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Random_lines_never_crash_the_reader()
    {
        string good = KubeProxyRules.Iptables([Web(3)], "node1", Cidr, saveOrder: true);
        var rng = new Random(17);
        string[] lines = good.Split('\n');
        for (int i = 0; i < 2000; i++)
        {
            char[] c = lines[rng.Next(lines.Length)].ToCharArray();
            for (int k = 0; k < 3 && c.Length > 0; k++)
            {
                c[rng.Next(c.Length)] = " -!\"/:x0"[rng.Next(8)];
            }
            string text = "*nat\n:KUBE-SERVICES - [0:0]\n" + new string(c) + "\nCOMMIT\n";
            try
            {
                IReadOnlyList<NatTable> t = IptablesParser.Parse(text, AddressFamily.InterNetwork);
                NatEvaluator.Evaluate(t, new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80), false, OnNode1);
            }
            catch (NatParseException)
            {
            }
        }
    }
}
