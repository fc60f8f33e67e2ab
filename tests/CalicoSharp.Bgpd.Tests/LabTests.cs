using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The lab of DESIGN.md: etcd, BIRD as the ToR, three nodes running bgpd, pods from the CNI plugin.</summary>
[Trait("Category", "Privileged")]
public class LabTests
{
    [Theory]
    [InlineData(TorModel.AsPerComputeServer)]
    [InlineData(TorModel.AsPerRack)]
    public async Task Pods_on_different_nodes_talk_through_the_tor_and_blocks_follow_ipam(TorModel model)
    {
        await using BgpLab lab = await BgpLab.StartAsync(model);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1], n3 = lab.Nodes[2];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        string blockA = string.Join('.', a.Address.Split('.')[..3]);
        // node1's block reaches node2 and node3 through the ToR; node1 itself holds it as a blackhole.
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{blockA}.", StringComparison.Ordinal) && BgpLab.KernelRoutes(n3).Contains($"{blockA}.", StringComparison.Ordinal),
            "node1's block in the other kernels", 60, lab.Diagnostics);
        Assert.Contains($"via {n2.TorAddress}", BgpLab.KernelRoutes(n2), StringComparison.Ordinal);
        Assert.Contains("blackhole", BgpLab.KernelRoutes(n1), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
        // The ToR's default route and 192.168.77.0/24 are outside the pools: never installed.
        string n2Routes = TestNetns.Ip("-n", n2.Netns.Name, "route");
        Assert.DoesNotContain("192.168.77.0", n2Routes, StringComparison.Ordinal);
        Assert.DoesNotContain("default", n2Routes, StringComparison.Ordinal);

        // A block claimed on node3 shows up elsewhere and goes when IPAM releases the node.
        LabPod c = await lab.AddPodAsync(n3, "pod-c");
        string blockC = c.Block;
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"{blockC} via", StringComparison.Ordinal), "node3's block on node1", 30, lab.Diagnostics);
        await lab.Ipam.ReleaseNodeAsync(n3.Name);
        await BgpLab.WaitAsync(() => !BgpLab.KernelRoutes(n1).Contains(blockC, StringComparison.Ordinal), "node3's block withdrawn", 30, lab.Diagnostics);
        // The block lost its affinity but pod-c's address stays allocated to node3 (as in Calico): node3 now
        // announces it as a borrowed /32, so pod-c stays reachable.
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"{c.Address} via", StringComparison.Ordinal), "pod-c's /32 on node1", 30, lab.Diagnostics);
        Assert.True(await BgpLab.TcpExchangeAsync(a, c), lab.Diagnostics());
        Assert.Contains($"{blockA}.", BgpLab.KernelRoutes(n2), StringComparison.Ordinal);
    }
}

/// <summary>A peer announcing a local pod's address must not take the pod's traffic (issue 16, finding 2).</summary>
[Trait("Category", "Privileged")]
public class LocalPodProtectionTests
{
    [Fact]
    public async Task A_peer_announcing_a_local_pods_address_does_not_take_its_route_or_traffic()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, nodes: 2);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{a.Block} via", StringComparison.Ordinal), "node1's block on node2", 60, lab.Diagnostics);
        string RouteToPod() => TestNetns.Ip("-n", n1.Netns.Name, "route", "get", a.Address);
        Assert.Contains(" dev cali", RouteToPod(), StringComparison.Ordinal);

        // The ToR announces pod-a's /32 to every node, node1 included (as a misconfigured or hostile peer would).
        // BIRD only exports BGP routes to its own kernel, so the ToR itself still forwards by node1's block.
        string hijack = $"protocol static hijack {{ ipv4; route {a.Address}/32 blackhole; }}\n";
        lab.Bird!.Reconfigure(lab.TorConfig() + hijack);
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{a.Address} via", StringComparison.Ordinal), "the /32 on node2 (it was announced)", 60, lab.Diagnostics);
        await BgpLab.WaitAsync(() => File.ReadAllText(n1.LogFile).Contains($"{a.Address}/32 refused: it is inside {a.Block}", StringComparison.Ordinal),
            "node1's bgpd to refuse the /32", 30, lab.Diagnostics);
        Assert.Contains(" dev cali", RouteToPod(), StringComparison.Ordinal);
        Assert.DoesNotContain(a.Address + " ", BgpLab.KernelRoutes(n1), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());

        // Withdrawn: the pod's route stays, and so does its traffic.
        lab.Bird.Reconfigure(lab.TorConfig());
        await BgpLab.WaitAsync(() => !BgpLab.KernelRoutes(n2).Contains($"{a.Address} via", StringComparison.Ordinal), "the /32 withdrawn from node2", 60, lab.Diagnostics);
        Assert.Contains(" dev cali", RouteToPod(), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
        Assert.Single(File.ReadAllLines(n1.LogFile), l => l.Contains($"{a.Address}/32 refused", StringComparison.Ordinal));
    }
}

/// <summary>The node-to-node models on one L2 segment (no BGP on the switch): Calico's full mesh, and a node as route reflector.</summary>
[Trait("Category", "Privileged")]
public class NodePeeringTests
{
    private static async Task<System.Text.Json.JsonElement> PeersAsync(BgpLab lab, LabNode n)
    {
        ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n.ApiSocket, "-o", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var d = System.Text.Json.JsonDocument.Parse(r.Stdout);
        return d.RootElement.GetProperty("peers").Clone();
    }

    [Theory]
    [InlineData(TorModel.NodeMesh)]
    [InlineData(TorModel.NodeRouteReflector)]
    public async Task Pods_talk_across_nodes_that_peer_with_each_other(TorModel model)
    {
        await using BgpLab lab = await BgpLab.StartAsync(model);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1], n3 = lab.Nodes[2];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        LabPod c = await lab.AddPodAsync(n3, "pod-c");
        // Each block reaches the other nodes with its owner's address as the next hop (iBGP keeps it; a
        // reflector does not change it), on the shared segment.
        foreach (LabNode at in lab.Nodes)
        {
            foreach (LabPod p in new[] { a, b, c }.Where(p => p.Node != at))
            {
                await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(at).Contains($"{p.Block} via {p.Node.Address}", StringComparison.Ordinal),
                    $"{p.Node.Name}'s block on {at.Name}", 60, lab.Diagnostics);
            }
        }
        Assert.True(await BgpLab.TcpExchangeAsync(b, c), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(c, a), lab.Diagnostics());

        // Who peers with whom: everyone with everyone, or the clients with the reflector only.
        var expected = model == TorModel.NodeMesh
            ? new Dictionary<LabNode, string[]> { [n1] = [n2.Address, n3.Address], [n2] = [n1.Address, n3.Address], [n3] = [n1.Address, n2.Address] }
            : new Dictionary<LabNode, string[]> { [n1] = [n2.Address, n3.Address], [n2] = [n1.Address], [n3] = [n1.Address] };
        foreach ((LabNode n, string[] peers) in expected)
        {
            System.Text.Json.JsonElement got = await PeersAsync(lab, n);
            Assert.Equal(peers.Order(), got.EnumerateArray().Select(p => p.GetProperty("address").GetString()!).Order());
            Assert.All(got.EnumerateArray(), p => Assert.Equal("Established", p.GetProperty("state").GetString()));
            if (model == TorModel.NodeRouteReflector && n == n1)
            {
                Assert.All(got.EnumerateArray(), p => Assert.Contains("route reflector client", p.GetProperty("type").GetString(), StringComparison.Ordinal));
            }
        }
    }
}

[Trait("Category", "Privileged")]
public class LabFailureTests
{
    private static bool Established(BgpLab lab, LabNode n) =>
        lab.Bird!.Birdc($"show protocols node{n.Index}").Contains("Established", StringComparison.Ordinal);

    [Fact]
    public async Task Sigkill_keeps_routes_until_restart_and_the_restarted_bgpd_leaves_nothing_stale()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        string blockA = a.Block;
        string blockB = b.Block;
        // Both ways first: node1 must have learned node2's block before it is killed, or replies have no route.
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{blockA} via", StringComparison.Ordinal)
            && BgpLab.KernelRoutes(n1).Contains($"{blockB} via", StringComparison.Ordinal), "both blocks on both nodes", 60, lab.Diagnostics);

        BgpLab.StopBgpd(n1, "KILL");
        // The ToR keeps node1's routes as stale (it is node1's graceful-restart helper), node2 keeps its route,
        // node1 keeps its kernel routes: traffic keeps flowing.
        await Task.Delay(2000);
        Assert.Contains($"{blockA} via", BgpLab.KernelRoutes(n2), StringComparison.Ordinal);
        Assert.Contains("blackhole", BgpLab.KernelRoutes(n1), StringComparison.Ordinal);
        Assert.Contains(blockA, lab.Bird!.Birdc($"show route protocol node1"), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
        // Something the old run left that nobody announces any more: the restarted bgpd must remove it.
        TestNetns.Ip("-n", n1.Netns.Name, "route", "add", "10.244.250.0/26", "via", n1.TorAddress, "proto", "81");

        lab.StartBgpd(n1);
        await BgpLab.WaitAsync(() => File.ReadAllText(n1.LogFile).Contains("End-of-RIB for IPv4, removing", StringComparison.Ordinal), "node1 to release its stale routes", 60, lab.Diagnostics);
        await BgpLab.WaitAsync(() => !BgpLab.KernelRoutes(n1).Contains("10.244.250.0", StringComparison.Ordinal), "the stale route to go", 30, lab.Diagnostics);
        Assert.Contains("left by a previous run", File.ReadAllText(n1.LogFile), StringComparison.Ordinal);
        Assert.Contains("blackhole " + blockA, BgpLab.KernelRoutes(n1), StringComparison.Ordinal);
        Assert.Contains($"{blockA} via", BgpLab.KernelRoutes(n2), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
    }

    /// <summary>Issue 16, finding 6: pods keep talking, without losing a packet, while bgpd on the node of one of
    /// them restarts after a crash (SIGKILL) and in a planned restart (SIGTERM: no Cease, so the ToR keeps the node's
    /// routes).</summary>
    [Theory]
    [InlineData("KILL")]
    [InlineData("TERM")]
    public async Task Pods_lose_no_packet_and_no_connection_while_bgpd_restarts(string signal)
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{a.Block} via", StringComparison.Ordinal)
            && BgpLab.KernelRoutes(n1).Contains($"{b.Block} via", StringComparison.Ordinal), "both blocks on both nodes", 60, lab.Diagnostics);
        RestartTrafficResult r = await RestartTraffic.RunAsync(lab, b, a, signal);
        Assert.True(r.PingsSent == 2000, $"{r}");
        Assert.True(r.PingsLost == 0, $"{r}\n{lab.Diagnostics()}");
        Assert.True(r.TcpUnbroken, $"{r}\n{lab.Diagnostics()}");
        if (signal == "TERM")
        {
            string log = File.ReadAllText(n1.LogFile);
            Assert.True(log.Contains("closing without a NOTIFICATION", StringComparison.Ordinal),
                "no 'closing without a NOTIFICATION' in node1's log; its session lines:\n" + string.Join('\n', log.Split('\n').Where(l =>
                    l.Contains("closing", StringComparison.Ordinal) || l.Contains("NOTIFICATION", StringComparison.Ordinal) || l.Contains("stablished", StringComparison.Ordinal)
                    || l.Contains("signal", StringComparison.OrdinalIgnoreCase) || l.Contains("stopping", StringComparison.OrdinalIgnoreCase))));
        }
    }

    [Fact]
    public async Task Md5_session_with_bird_works_and_a_wrong_password_does_not()
    {
        // node1: the password in the bgppeer; node2: a wrong one; node3: Calico's secretKeyRef, read from a file.
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 3, l =>
        {
            l.TorPeerExtra = _ => "password \"lab-secret\";";
            l.PeerSpecExtra = n => n.Index switch
            {
                1 => ",\"password\":\"lab-secret\"",
                2 => ",\"password\":\"wrong-secret\"",
                _ => ",\"password\":{\"secretKeyRef\":{\"name\":\"bgp-secrets\",\"key\":\"tor-password\"}}",
            };
            Directory.CreateDirectory(Path.Combine(l.SecretsDirectory, "bgp-secrets"));
            File.WriteAllText(Path.Combine(l.SecretsDirectory, "bgp-secrets", "tor-password"), "lab-secret\n");
        });
        await BgpLab.WaitAsync(() => Established(lab, lab.Nodes[0]) && Established(lab, lab.Nodes[2]), "the MD5 sessions of node1 and node3", 30, lab.Diagnostics);
        await Task.Delay(5000);
        Assert.False(Established(lab, lab.Nodes[1]), lab.Diagnostics());
    }

    [Fact]
    public async Task Gtsm_session_comes_up_with_a_ttl_255_peer_and_not_with_a_ttl_1_one()
    {
        // Both nodes ask for GTSM (ttlSecurity 1: accept only TTL 255 from the directly connected ToR); BIRD
        // sends TTL 255 to node1 ("ttl security on") and its eBGP default of 1 to node2.
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2, l =>
        {
            l.TorPeerExtra = n => n.Index == 1 ? "ttl security on;" : "";
            l.PeerSpecExtra = _ => ",\"ttlSecurity\":1";
        });
        await BgpLab.WaitAsync(() => Established(lab, lab.Nodes[0]), "the GTSM session of node1", 30, lab.Diagnostics);
        await Task.Delay(5000);
        Assert.False(Established(lab, lab.Nodes[1]), lab.Diagnostics());
    }

    [Fact]
    public async Task A_password_secret_that_cannot_be_read_leaves_the_peer_out_and_says_why()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 1, l =>
        {
            l.TorPeerExtra = _ => "password \"lab-secret\";";
            l.PeerSpecExtra = _ => ",\"password\":{\"secretKeyRef\":{\"name\":\"bgp-secrets\",\"key\":\"missing\"}}";
        });
        string path = Path.Combine(lab.SecretsDirectory, "bgp-secrets", "missing");
        await BgpLab.WaitAsync(() => File.ReadAllText(lab.Nodes[0].LogFile).Contains($"cannot read its password from {path}", StringComparison.Ordinal),
            "the error naming the file", 30, lab.Diagnostics);
        // Once the secret appears, the peer comes up.
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, "lab-secret");
        await BgpLab.WaitAsync(() => Established(lab, lab.Nodes[0]), "the session once the secret is there", 30, lab.Diagnostics);
    }

    [Fact]
    public async Task A_reflected_next_hop_beyond_the_link_is_resolved_through_the_fabric()
    {
        // The ToR reflects without next hop self: node2 learns node1's block with next hop 172.30.1.2, which is
        // not on its link; bgpd resolves it through node2's fabric route (via its ToR), as BIRD's "gateway recursive".
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerRack, 2, l =>
        {
            l.TorNextHopSelf = false;
            l.FabricRoute = true;
        });
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        string blockA = a.Block;
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{blockA} via {n2.TorAddress}", StringComparison.Ordinal),
            "node1's block on node2, via node2's ToR", 30, lab.Diagnostics);
        ProcessResult routes = await BgpLab.CtlAsync("bgp", "routes", "--prefix", a.Address, "--bgpd-socket", n2.ApiSocket);
        Assert.Contains(n1.Address, routes.Stdout, StringComparison.Ordinal); // the BGP next hop stays node1's address
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
    }

    [Fact]
    public async Task Etcd_restart_drops_no_session()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerRack, 2);
        await BgpLab.WaitAsync(() => lab.Nodes.All(n => Established(lab, n)), "every session", 30, lab.Diagnostics);
        string before = lab.Bird!.Birdc("show protocols");
        lab.Etcd.Stop();
        await Task.Delay(4000);
        lab.Etcd.Launch();
        await Task.Delay(3000);
        Assert.True(lab.Nodes.All(n => Established(lab, n)), lab.Diagnostics());
        // Same "since" times: no session flapped.
        Assert.Equal(before.Split('\n').Where(l => l.StartsWith("node", StringComparison.Ordinal)), lab.Bird!.Birdc("show protocols").Split('\n').Where(l => l.StartsWith("node", StringComparison.Ordinal)));
        Assert.Contains(File.ReadAllLines(lab.Nodes[0].LogFile), l => l.Contains("etcd:", StringComparison.Ordinal) && l.Contains("keeping the last known configuration", StringComparison.Ordinal));
    }
}

[Trait("Category", "Privileged")]
public class LabInterfaceTests
{
    [Fact]
    public async Task Node_status_routes_lookup_and_metrics_show_what_the_node_does()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        string blockA = a.Block;
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{blockA} via", StringComparison.Ordinal), "node1's block on node2", 60, lab.Diagnostics);

        ProcessResult status = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n2.ApiSocket);
        Assert.True(status.ExitCode == 0, status.Stderr);
        Assert.Contains("calicosharp-bgpd on node2 is running", status.Stdout, StringComparison.Ordinal);
        Assert.Matches($@"{n2.TorAddress.Replace(".", "\\.", StringComparison.Ordinal)}\s+eBGP\s+65100\s+Established", status.Stdout);

        ProcessResult json = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n2.ApiSocket, "-o", "json");
        using (var d = System.Text.Json.JsonDocument.Parse(json.Stdout))
        {
            Assert.Equal("Established", d.RootElement.GetProperty("peers")[0].GetProperty("state").GetString());
        }

        ProcessResult routes = await BgpLab.CtlAsync("bgp", "routes", "--bgpd-socket", n2.ApiSocket, "--prefix", a.Address);
        Assert.True(routes.ExitCode == 0, routes.Stderr);
        Assert.Contains(blockA, routes.Stdout, StringComparison.Ordinal);
        Assert.Contains("65100 65001", routes.Stdout, StringComparison.Ordinal);
        Assert.Contains($"via {n2.TorAddress}", routes.Stdout, StringComparison.Ordinal);
        ProcessResult none = await BgpLab.CtlAsync("bgp", "routes", "--bgpd-socket", n2.ApiSocket, "--prefix", "10.99.0.0/16");
        Assert.Equal(1, none.ExitCode);
        ProcessResult dead = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", "/nonexistent/bgpd.sock");
        Assert.NotEqual(0, dead.ExitCode);
        Assert.Contains("is calicosharp-bgpd running", dead.Stderr, StringComparison.Ordinal);

        ProcessResult metrics = await ProcessRunner.RunAsync("ip", ["netns", "exec", n2.Netns.Name, "curl", "-sf", $"http://{LabNode.MetricsAddress}/metrics"], TimeSpan.FromSeconds(20));
        Assert.True(metrics.ExitCode == 0, metrics.Stderr);
        Assert.Contains("calicosharp_bgp_sessions{state=\"Established\"} 1", metrics.Stdout, StringComparison.Ordinal);
        Assert.Contains($"calicosharp_bgp_peer_up{{peer=\"{n2.TorAddress}\"", metrics.Stdout, StringComparison.Ordinal);
        Assert.Contains("calicosharp_etcd_up 1", metrics.Stdout, StringComparison.Ordinal);
        Assert.Contains("calicosharp_etcd_watch_up 1", metrics.Stdout, StringComparison.Ordinal);
        Assert.Matches(@"calicosharp_kernel_route_operations_total [1-9]", metrics.Stdout);
    }
}

/// <summary>Issue 16, finding 8, as the ToR (BIRD) sees it: Calico's communities and prefixAdvertisements on the
/// advertised blocks, and nothing of a pool with disableBGPExport.</summary>
[Trait("Category", "Privileged")]
public class AdvertisementLabTests
{
    [Fact]
    public async Task The_tor_gets_the_configured_communities_and_nothing_of_a_pool_with_disableBGPExport()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2);
        LabNode n1 = lab.Nodes[0];
        await lab.PutAsync("/calico/resources/v3/projectcalico.org/ippools/private",
            """{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"private"},"spec":{"cidr":"10.99.0.0/16","blockSize":26,"disableBGPExport":true}}""");
        await lab.PutAsync("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            $$$"""{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":{{{BgpLab.RackAs}}},"nodeToNodeMeshEnabled":false,"communities":[{"name":"rack","value":"65010:100"},{"name":"big","value":"65010:1:2"}],"prefixAdvertisements":[{"cidr":"{{{BgpLab.Pool}}}","communities":["rack","65010:7","big"]}]}}""");
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        IReadOnlyList<AssignedAddress> hidden = await lab.Ipam.AutoAssignAsync(new AutoAssignRequest { Node = n1.Name, HandleId = "private-1", Num4 = 1, Ipv4Pools = ["private"] });
        string hiddenBlock = IpNet.Enclosing(hidden[0].Address, 26).ToString();

        string Route(string block) => lab.Bird!.Birdc($"show route all for {block}").Replace(" ", "", StringComparison.Ordinal);
        await BgpLab.WaitAsync(() => Route(a.Block).Contains("BGP.community:(65010,100)(65010,7)", StringComparison.Ordinal)
            && Route(a.Block).Contains("BGP.large_community:(65010,1,2)", StringComparison.Ordinal), "node1's block with its communities at the ToR", 60, () => Route(a.Block) + lab.Diagnostics());
        // node1 holds the private block (its blackhole is installed) but never advertises it.
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"blackhole {hiddenBlock}", StringComparison.Ordinal), "the private block's blackhole on node1", 30, lab.Diagnostics);
        await Task.Delay(3000);
        Assert.DoesNotContain(hiddenBlock.Split('/')[0], lab.Bird!.Birdc("show route"), StringComparison.Ordinal);
        Assert.DoesNotContain(hiddenBlock.Split('/')[0], BgpLab.KernelRoutes(lab.Nodes[1]), StringComparison.Ordinal);
    }
}
