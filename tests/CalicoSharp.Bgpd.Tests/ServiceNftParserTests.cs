using System.Net;
using CalicoSharp.ServiceNat;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The nftables reader on what nft itself prints (<c>nft -j list table</c>) after loading the stand-in's
/// script into a namespace of its own.</summary>
[Trait("Category", "Privileged")]
public sealed class ServiceNftParserTests : IDisposable
{
    private readonly TestNetns _ns = TestNetns.Create(TestNetns.NewLabPrefix() + "-nft");
    private static readonly NatEvaluator.FixedContext OnNode1 = new(IPAddress.Parse("172.30.1.2"));

    public void Dispose() => _ns.Dispose();

    private async Task<NatTable> LoadAsync(LabService svc, string node, bool ipv6 = false)
    {
        await KubeProxyRules.ApplyNftablesAsync(_ns.Name, [svc], node, ipv6 ? "fd10:244::/64" : "10.244.0.0/16", ipv6);
        ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", _ns.Name, "nft", "-j", "list", "table", ipv6 ? "ip6" : "ip", "kube-proxy"], TimeSpan.FromSeconds(30));
        Assert.Equal(0, r.ExitCode);
        return NftParser.Parse(r.Stdout);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(10)]
    public async Task Each_endpoint_gets_an_equal_share(int n)
    {
        LabService web = ServiceNatParserTests.Web(n);
        NatTable t = await LoadAsync(web, "node1");
        var packet = new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80);
        IReadOnlyList<NatOutcome> o = NatEvaluator.Evaluate([t], packet, false, OnNode1);
        Assert.Equal(web.Endpoints.Select(e => e.Address), o.Select(x => x.Packet.Destination.ToString()));
        Assert.All(o, x => Assert.Equal(1.0 / n, x.Probability, 9));
        Assert.All(o, x => Assert.Null(x.MasqueradedBy));
        Assert.Equal("default/web:http", ServiceView.Interpret(o, packet, "node1").ServicePort);
        // From outside to the external IP: masqueraded (externalTrafficPolicy: Cluster).
        IReadOnlyList<NatOutcome> ext = NatEvaluator.Evaluate([t], new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80), false, OnNode1);
        Assert.All(ext, x => Assert.Contains("externalTrafficPolicy: Cluster", ServiceView.MasqueradeReason(x.MarkedBy), StringComparison.Ordinal));
        // The NodePort on the node's own address.
        Assert.Equal(n, NatEvaluator.Evaluate([t], new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.1.2"), "tcp", 30080), false, OnNode1).Count(x => x.Packet.Dnat));
    }

    [Fact]
    public async Task No_endpoints_rejects_and_local_policy_drops()
    {
        NatTable t = await LoadAsync(ServiceNatParserTests.Web(0), "node1");
        var packet = new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80);
        NatOutcome r = Assert.Single(NatEvaluator.Evaluate([t], packet, false, OnNode1));
        Assert.Equal(NatFate.Rejected, r.Fate);
        Assert.Contains("default/web:http has no endpoints", ServiceView.Interpret([r], packet, "node1").Problem, StringComparison.Ordinal);

        t = await LoadAsync(ServiceNatParserTests.Web(2, etpLocal: true), "node1");
        var outside = new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80);
        NatOutcome d = Assert.Single(NatEvaluator.Evaluate([t], outside, false, OnNode1));
        Assert.Equal(NatFate.Dropped, d.Fate);
        Assert.Contains("has no local endpoints", ServiceView.Interpret([d], outside, "node1").Problem, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Ipv6_and_sctp()
    {
        var svc = new LabService("default", "sig", "fd00:96::10", [new LabServicePort("sctp", 3868, "SCTP")],
            [new LabEndpoint("fd10:244::5", "node2"), new LabEndpoint("fd10:244::45", "node3")]);
        NatTable t = await LoadAsync(svc, "node1", ipv6: true);
        IReadOnlyList<NatOutcome> o = NatEvaluator.Evaluate([t], new NatPacket(IPAddress.Parse("fd10:244::99"), IPAddress.Parse("fd00:96::10"), "sctp", 3868), false, OnNode1);
        Assert.Equal(["fd10:244::5", "fd10:244::45"], o.Select(x => x.Packet.Destination.ToString()));
    }

    [Fact]
    public async Task Session_affinity_is_not_guessed()
    {
        NatTable t = await LoadAsync(ServiceNatParserTests.Web(2), "node1");
        string svc = t.Chains.Keys.Single(k => k.StartsWith("service-", StringComparison.Ordinal));
        // kube-proxy's ClientIP affinity: "ip saddr @affinity-... goto endpoint-..." before the numgen rule.
        NatChain c = t.Chains[svc];
        c.Rules.Insert(0, new NatRule(svc, 0, "ip saddr @affinity-X goto endpoint-X", null, [new SetMatch([KeyPart.SourceAddress], "affinity-X", false) { Table = t }], new JumpAction("endpoint-X", true)));
        NatOutcome u = Assert.Single(NatEvaluator.Evaluate([t], new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80), false, OnNode1));
        Assert.Equal(NatFate.Unchecked, u.Fate);
        Assert.Contains("affinity-X", u.Unchecked, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{}", "no \"nftables\" array")]
    [InlineData("[1]", "no \"nftables\" array")]
    [InlineData("{\"nftables\":[{\"rule\":{\"chain\":\"x\",\"expr\":[]}}]}", "no table")]
    [InlineData("not json", "not nft JSON")]
    public void Malformed_json_is_refused(string json, string error) =>
        Assert.Contains(error, Assert.Throws<NatParseException>(() => NftParser.Parse(json)).Message, StringComparison.Ordinal);
}
