using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>bgpconfigurations service ranges in the lab: every node advertises them, the ToR (BIRD) spreads a client's
/// connections over the nodes (ECMP), kube-proxy's rules (the lab's stand-in) on whichever node receives a connection
/// take it to a replica.</summary>
[Trait("Category", "Privileged")]
public sealed class ServiceAdvertisementLabTests
{
    private const string ClusterIp = "10.96.0.10", ExternalIp = "172.30.250.10";
    private const string ClusterRange = "10.96.0.0/16", ExternalRange = "172.30.250.0/24";
    private const int Port = 80, TargetPort = 8080;

    private static Task PutConfigAsync(BgpLab lab, string services) => lab.PutAsync("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
        $$$"""{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":{{{BgpLab.RackAs}}},"nodeToNodeMeshEnabled":false{{{services}}}}}""");

    private static string TorRoute(BgpLab lab, string prefix) => TestNetns.Ip("-n", lab.Tor.Name, "route", "show", prefix);

    private static int NextHops(string route, BgpLab lab) => lab.Nodes.Count(n => route.Contains($"via {n.Address} ", StringComparison.Ordinal));

    /// <summary>New connections to the cluster IP each node's kube-proxy rules took (the nat table sees a connection's
    /// first packet only).</summary>
    private static async Task<long> ConnectionsSeenAsync(LabNode n)
    {
        ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", n.Netns.Name, "iptables", "-t", "nat", "-L", "KUBE-SERVICES", "-v", "-n", "-x"], TimeSpan.FromSeconds(20), null, "");
        Assert.True(r.ExitCode == 0, r.Stderr);
        return r.Stdout.Split('\n').Where(l => l.Contains(ClusterIp, StringComparison.Ordinal) && l.Contains("KUBE-SVC-", StringComparison.Ordinal))
            .Sum(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[0], CultureInfo.InvariantCulture));
    }

    private static async Task<JsonElement> StatusAsync(LabNode n)
    {
        ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n.ApiSocket, "-o", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        return d.RootElement.Clone();
    }

    [Fact]
    public async Task Every_node_advertises_the_ranges_and_a_client_outside_reaches_the_service_through_the_tor()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 3, l => l.FabricRoute = true);
        await using ServiceLab services = ServiceLab.Start(lab);
        LabPod webA = await lab.AddPodAsync(lab.Nodes[1], "web-a");
        LabPod webB = await lab.AddPodAsync(lab.Nodes[2], "web-b");
        services.Serve(webA, TargetPort);
        services.Serve(webB, TargetPort);
        await services.ProgramAsync(
        [
            new LabService("lab", "web", ClusterIp, [new LabServicePort("http", Port, TargetPort: TargetPort)],
                [new LabEndpoint(webA.Address, "node2"), new LabEndpoint(webB.Address, "node3")]) { ExternalIps = [ExternalIp] },
        ]);
        // The ToR hashes on ports too (Linux's default hashes addresses only: one client would always hit one node).
        TestNetns.Ip("netns", "exec", lab.Tor.Name, "sysctl", "-q", "-w", "net.ipv4.fib_multipath_hash_policy=1");
        await BgpLab.WaitAsync(() => lab.Nodes.All(n => lab.Nodes.Where(m => m != n && m.Name != "node1").All(m => BgpLab.KernelRoutes(n).Contains(m.Name == "node2" ? webA.Block : webB.Block, StringComparison.Ordinal))),
            "the pods' blocks everywhere", 60, lab.Diagnostics);

        await PutConfigAsync(lab, $",\"serviceClusterIPs\":[{{\"cidr\":\"{ClusterRange}\"}}],\"serviceExternalIPs\":[{{\"cidr\":\"{ExternalRange}\"}}]");
        await BgpLab.WaitAsync(() => NextHops(TorRoute(lab, ClusterRange), lab) == 3 && NextHops(TorRoute(lab, ExternalRange), lab) == 3,
            "the ToR's ECMP routes to both ranges via every node", 60, () => TorRoute(lab, ClusterRange) + lab.Diagnostics());
        // Only advertised: no node has a route of its own for a range (kube-proxy takes the traffic before routing),
        // and none installed another node's advertisement that the ToR passed on.
        Assert.All(lab.Nodes, n => Assert.Equal("", TestNetns.Ip("-n", n.Netns.Name, "route", "show", ClusterRange).Trim()));
        long refused = 0;
        foreach (LabNode n in lab.Nodes)
        {
            JsonElement s = await StatusAsync(n);
            Assert.Equal([(ClusterRange, "serviceClusterIPs"), (ExternalRange, "serviceExternalIPs")],
                s.GetProperty("serviceRanges").EnumerateArray().Select(r => (r.GetProperty("cidr").GetString(), r.GetProperty("kind").GetString())));
            refused += s.GetProperty("serviceRoutesRefused").GetInt64();
        }
        Assert.True(refused > 0, "the ToR passes each node the others' advertisements; they are refused");

        // 30 connections from the client outside: spread over the three nodes, both replicas answer.
        long[] before = await Task.WhenAll(lab.Nodes.Select(ConnectionsSeenAsync));
        var answers = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < 30; i++)
        {
            answers.Add(await ServiceLab.ConnectAsync(services.Client, ClusterIp, Port));
        }
        long[] after = await Task.WhenAll(lab.Nodes.Select(ConnectionsSeenAsync));
        Assert.Equal(["web-a", "web-b"], answers.Order(StringComparer.Ordinal));
        Assert.All(lab.Nodes.Select((n, i) => (n.Name, after[i] - before[i])), x => Assert.True(x.Item2 > 0, $"{x.Name} took none of the 30 connections: {string.Join(", ", after.Zip(before, (a, b) => a - b))}"));
        var external = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < 12; i++)
        {
            external.Add(await ServiceLab.ConnectAsync(services.Client, ExternalIp, Port));
        }
        Assert.Equal(["web-a", "web-b"], external.Order(StringComparer.Ordinal));

        // Live: the external range goes from the ToR; the node labelled out of external load balancers stops advertising.
        await PutConfigAsync(lab, $",\"serviceClusterIPs\":[{{\"cidr\":\"{ClusterRange}\"}}]");
        await BgpLab.WaitAsync(() => TorRoute(lab, ExternalRange).Trim().Length == 0, "the external range withdrawn", 30, lab.Diagnostics);
        string key = Keys.Node("node1");
        KvEntry node1 = await lab.Ipam.Store.GetAsync(key, CancellationToken.None) ?? throw new InvalidOperationException("no node1 record");
        JsonNode record = JsonNode.Parse(node1.Value)!;
        record["metadata"]!["labels"] = new JsonObject { [Daemon.ExcludeLabel] = "true" };
        await lab.PutAsync(key, record.ToJsonString());
        await BgpLab.WaitAsync(() => NextHops(TorRoute(lab, ClusterRange), lab) == 2 && !TorRoute(lab, ClusterRange).Contains($"via {lab.Nodes[0].Address} ", StringComparison.Ordinal),
            "node1's advertisement withdrawn", 30, () => TorRoute(lab, ClusterRange) + lab.Diagnostics());
        Assert.Contains(await ServiceLab.ConnectAsync(services.Client, ClusterIp, Port), new[] { "web-a", "web-b" });
    }
}
