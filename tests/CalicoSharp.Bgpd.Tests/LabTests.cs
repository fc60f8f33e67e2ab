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
        string blockC = IpNet.Enclosing(System.Net.IPAddress.Parse(c.Address), 26).ToString();
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
