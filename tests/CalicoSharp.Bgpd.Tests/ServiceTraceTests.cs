using System.Text.Json;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>Three nodes, a Service with replicas on node2 and node3 (cluster IP, an external IP pinned to node1, a
/// NodePort), a client outside the cluster, kube-proxy's rules from the lab's stand-in; shared by the tests below.</summary>
public sealed class ServiceTraceLab : IAsyncLifetime
{
    public const string ClusterIp = "10.96.0.10", ExternalIp = "172.30.250.10";
    public const int Port = 80, TargetPort = 8080, NodePort = 30080;

    public BgpLab Lab { get; private set; } = null!;

    public ServiceLab Services { get; private set; } = null!;

    public LabPod WebA { get; private set; } = null!;

    public LabPod WebB { get; private set; } = null!;

    public LabPod Client { get; private set; } = null!;

    public LabPod Doomed { get; private set; } = null!;

    public IReadOnlyList<LabService> All { get; private set; } = [];

    public async Task InitializeAsync()
    {
        Lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 3, l => l.FabricRoute = true);
        Services = ServiceLab.Start(Lab);
        WebA = await Lab.AddPodAsync(Lab.Nodes[1], "web-a");
        WebB = await Lab.AddPodAsync(Lab.Nodes[2], "web-b");
        Client = await Lab.AddPodAsync(Lab.Nodes[0], "client");
        Doomed = await Lab.AddPodAsync(Lab.Nodes[0], "doomed");
        Services.Serve(WebA, TargetPort);
        Services.Serve(WebB, TargetPort);
        Services.Pin(Lab.Nodes[0], ExternalIp);
        All =
        [
            new LabService("lab", "web", ClusterIp, [new LabServicePort("http", Port, TargetPort: TargetPort, NodePort: NodePort)],
                [new LabEndpoint(WebA.Address, "node2"), new LabEndpoint(WebB.Address, "node3")]) { ExternalIps = [ExternalIp] },
            new LabService("lab", "empty", "10.96.0.20", [new LabServicePort("http", Port)], []),
            new LabService("lab", "local-only", "10.96.0.30", [new LabServicePort("http", Port, TargetPort: TargetPort, NodePort: 30081)],
                [new LabEndpoint(WebA.Address, "node2")]) { ExternalTrafficPolicyLocal = true },
        ];
        await Services.ProgramAsync(All);
        await BgpLab.WaitAsync(() => Lab.Nodes.All(n => Lab.Nodes.Where(m => m != n).All(m => BgpLab.KernelRoutes(n).Contains(m.Name == "node1" ? Client.Block : m.Name == "node2" ? WebA.Block : WebB.Block, StringComparison.Ordinal))),
            "every node's block everywhere", 60, Lab.Diagnostics);
    }

    public async Task<(int Exit, JsonElement Result, string Text)> TraceAsync(string target, string from)
    {
        ProcessResult r = await BgpLab.CtlAsync("--etcd-endpoints", Lab.Etcd.UnixEndpoint, "trace", target, "--from", from, "--bgpd-socket", Lab.ApiSocketTemplate, "-o", "json");
        Assert.True(r.Stdout.Length > 0, $"trace printed nothing (exit {r.ExitCode}): {r.Stderr}");
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        return (r.ExitCode, d.RootElement.Clone(), r.Stdout);
    }

    public async Task DisposeAsync()
    {
        if (Services is not null)
        {
            await Services.DisposeAsync();
        }
        await Lab.DisposeAsync();
    }
}

[Trait("Category", "Privileged")]
public sealed class ServiceTraceTests(ServiceTraceLab f) : IClassFixture<ServiceTraceLab>
{
    private static string Str(JsonElement e, string name) => e.GetProperty(name).GetString() ?? "";

    private static JsonElement[] Endpoints(JsonElement r) => [.. r.GetProperty("endpoints").EnumerateArray()];

    private static async Task<HashSet<string>> AnswersAsync(TestNetns from, string address, int port, int connections)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < connections; i++)
        {
            seen.Add(await ServiceLab.ConnectAsync(from, address, port));
        }
        return seen;
    }

    private void AssertBothReplicas(JsonElement r, string text, bool masquerade)
    {
        Assert.True(r.GetProperty("reachable").GetBoolean(), text);
        Assert.Equal("lab/web:http", Str(r.GetProperty("service"), "servicePort"));
        JsonElement[] paths = [.. r.GetProperty("service").GetProperty("paths").EnumerateArray()];
        Assert.Equal(2, paths.Length);
        Assert.All(paths, p => Assert.Equal(0.5, p.GetProperty("probability").GetDouble(), 6));
        Assert.All(paths, p => Assert.Equal(masquerade, p.GetProperty("masquerade").GetBoolean()));
        JsonElement[] eps = Endpoints(r);
        Assert.Equal([f.WebA.Address, f.WebB.Address], eps.Select(e => Str(e, "address")));
        Assert.All(eps, e => Assert.True(e.GetProperty("reachable").GetBoolean(), text));
        Assert.Equal(["node2", "node3"], eps.Select(e => Str(e, "destinationNode")));
        Assert.All(eps, e => Assert.Contains("pod", e.GetProperty("hops").EnumerateArray().Select(h => Str(h, "hop"))));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Cluster_ip_from_a_pod_external_ip_and_node_port_from_outside(bool nftables)
    {
        await f.Services.ProgramAsync(f.All, nftables);
        try
        {
            Assert.Equal(["web-a", "web-b"], (await AnswersAsync(f.Client.Netns, ServiceTraceLab.ClusterIp, ServiceTraceLab.Port, 12)).Order());
            Assert.Equal(["web-a", "web-b"], (await AnswersAsync(f.Services.Client, ServiceTraceLab.ExternalIp, ServiceTraceLab.Port, 12)).Order());
            Assert.Equal(["web-a", "web-b"], (await AnswersAsync(f.Services.Client, f.Lab.Nodes[0].Address, ServiceTraceLab.NodePort, 12)).Order());

            (int exit, JsonElement r, string text) = await f.TraceAsync($"{ServiceTraceLab.ClusterIp}:{ServiceTraceLab.Port}", "lab/client");
            Assert.True(exit == 0, text);
            AssertBothReplicas(r, text, masquerade: false);
            Assert.Equal("cluster IP", Str(r.GetProperty("service"), "kind"));
            Assert.Contains(nftables ? "nftables ip kube-proxy" : "iptables nat", r.GetProperty("service").GetProperty("facts").GetProperty("rules").GetString(), StringComparison.Ordinal);
            Assert.All(Endpoints(r), e => Assert.Equal("from-pod", Str(e.GetProperty("hops")[1], "hop")));

            (exit, r, text) = await f.TraceAsync($"{ServiceTraceLab.ExternalIp}:{ServiceTraceLab.Port}", "external");
            Assert.True(exit == 0, text);
            Assert.Equal("node1", Str(r, "node"));
            AssertBothReplicas(r, text, masquerade: true);
            Assert.All(r.GetProperty("service").GetProperty("paths").EnumerateArray(), p => Assert.Contains("externalTrafficPolicy: Cluster", Str(p, "masqueradeReason"), StringComparison.Ordinal));

            (exit, r, text) = await f.TraceAsync($"{f.Lab.Nodes[0].Address}:{ServiceTraceLab.NodePort}/tcp", "external");
            Assert.True(exit == 0, text);
            Assert.Equal("node1", Str(r, "node"));
            Assert.Equal("NodePort", Str(r.GetProperty("service"), "kind"));
            AssertBothReplicas(r, text, masquerade: true);
        }
        finally
        {
            await f.Services.ProgramAsync(f.All);
        }
    }

    [Fact]
    public async Task No_such_service_port_breaks_at_the_service()
    {
        (int exit, JsonElement r, string text) = await f.TraceAsync($"{ServiceTraceLab.ClusterIp}:81", "lab/client");
        Assert.Equal(1, exit);
        Assert.Equal("service", Str(r, "brokenAt"));
        Assert.Contains("no Service has that address and port", Str(r.GetProperty("service"), "summary"), StringComparison.Ordinal);
        Assert.Empty(Endpoints(r));
        Assert.Equal("", await ServiceLab.ConnectAsync(f.Client.Netns, ServiceTraceLab.ClusterIp, 81));
    }

    [Fact]
    public async Task No_endpoints_is_rejected()
    {
        (int exit, JsonElement r, string text) = await f.TraceAsync("10.96.0.20:80", "lab/client");
        Assert.Equal(1, exit);
        Assert.Equal("service", Str(r, "brokenAt"));
        string s = Str(r.GetProperty("service"), "summary");
        Assert.Contains("REJECT", s, StringComparison.Ordinal);
        Assert.Contains("lab/empty:http has no endpoints", s, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Local_policy_without_a_local_endpoint_drops()
    {
        (int exit, JsonElement r, string text) = await f.TraceAsync($"{f.Lab.Nodes[0].Address}:30081", "external");
        Assert.Equal(1, exit);
        string s = Str(r.GetProperty("service"), "summary");
        Assert.Contains("DROP", s, StringComparison.Ordinal);
        Assert.Contains("lab/local-only:http has no local endpoints", s, StringComparison.Ordinal);
        // node2 runs the endpoint: its NodePort keeps the client's address.
        (exit, r, text) = await f.TraceAsync($"{f.Lab.Nodes[1].Address}:30081", "external");
        Assert.True(exit == 0, text);
        Assert.False(r.GetProperty("service").GetProperty("paths")[0].GetProperty("masquerade").GetBoolean());
    }

    [Fact]
    public async Task An_endpoint_whose_pod_path_breaks_is_named_under_it()
    {
        LabNode n3 = f.Lab.Nodes[2];
        string ifName = HostInterface.Name("lab", "web-b", "");
        TestNetns.Ip("-n", n3.Netns.Name, "route", "del", f.WebB.Address + "/32", "dev", ifName);
        try
        {
            (int exit, JsonElement r, string text) = await f.TraceAsync($"{ServiceTraceLab.ClusterIp}:{ServiceTraceLab.Port}", "lab/client");
            Assert.True(exit == 0, text);
            JsonElement b = Endpoints(r).Single(e => Str(e, "address") == f.WebB.Address);
            Assert.Equal("destination-route", Str(b, "brokenAt"));
            Assert.True(Endpoints(r).Single(e => Str(e, "address") == f.WebA.Address).GetProperty("reachable").GetBoolean());
        }
        finally
        {
            TestNetns.Ip("-n", n3.Netns.Name, "route", "add", f.WebB.Address + "/32", "dev", ifName, "scope", "link");
        }
    }

    [Fact]
    public async Task A_source_pod_without_its_veth_breaks_at_from_pod()
    {
        f.Doomed.Netns.Dispose();
        string ifName = HostInterface.Name("lab", "doomed", "");
        await BgpLab.WaitAsync(() => !TestNetns.Ip("-n", f.Lab.Nodes[0].Netns.Name, "link").Contains(ifName, StringComparison.Ordinal), "the veth to go with the namespace");
        (int exit, JsonElement r, string text) = await f.TraceAsync($"{ServiceTraceLab.ClusterIp}:{ServiceTraceLab.Port}", "lab/doomed");
        Assert.Equal(1, exit);
        Assert.All(Endpoints(r), e => Assert.Equal("from-pod", Str(e, "brokenAt")));
        Assert.Contains($"{ifName} does not exist on node1", Str(Endpoints(r)[0].GetProperty("hops")[1], "summary"), StringComparison.Ordinal);
    }
}
