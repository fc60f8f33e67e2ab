using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>bgpd started without an address flag takes its BGP address from its nodes record in etcd, as calico/node
/// writes it, and follows a change of it live: the mesh moves to the new address and pods keep talking.</summary>
[Trait("Category", "Privileged")]
public class NodeAddressLabTests
{
    [Fact]
    public async Task Bgpd_takes_its_address_from_the_node_record_and_a_change_moves_the_sessions()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.NodeMesh, nodes: 2, l => l.AddressFlag = false);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"{b.Block} via {n2.Address}", StringComparison.Ordinal), "node2's block on node1 via node2's address", 60, lab.Diagnostics);
        Assert.Contains($"BGP IPv4 address {n2.Address} (from etcd", await File.ReadAllTextAsync(n2.LogFile), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());

        // node2 moves to another address of its link; only its record says so.
        string moved = $"172.30.0.{100 + n2.Index + 10}";
        TestNetns.Ip("-n", n2.Netns.Name, "addr", "add", $"{moved}/24", "dev", lab.NodeInterface(n2));
        await lab.PutNodeAddressAsync(n2, $"{moved}/24");
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"{b.Block} via {moved}", StringComparison.Ordinal), "node2's block on node1 via the new address", 60, lab.Diagnostics);
        Assert.Contains($"BGP IPv4 address {n2.Address} -> {moved}", await File.ReadAllTextAsync(n2.LogFile), StringComparison.Ordinal);
        // The session itself now runs between node1 and the new address, and the old address is no longer needed.
        // (The route can arrive before the reset session is back: wait for it rather than look once.)
        await BgpLab.WaitAsync(() => EstablishedAsync(n1).GetAwaiter().GetResult().Contains($"{moved}:179", StringComparison.Ordinal),
            "the session between node1 and node2's new address", 60, lab.Diagnostics);
        // Same subnet: the new address is a secondary one, which the kernel deletes with the primary unless promoted.
        await ProcessRunner.RunAsync("ip", ["netns", "exec", n2.Netns.Name, "sysctl", "-q", "-w", $"net.ipv4.conf.{lab.NodeInterface(n2)}.promote_secondaries=1"], TimeSpan.FromSeconds(10));
        TestNetns.Ip("-n", n2.Netns.Name, "addr", "del", $"{n2.Address}/{n2.PrefixLength}", "dev", lab.NodeInterface(n2));
        await Task.Delay(500);
        Assert.Contains($"{b.Block} via {moved}", BgpLab.KernelRoutes(n1), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
    }

    /// <summary>The node's established TCP connections (ss), one "local peer" line each.</summary>
    private static async Task<string> EstablishedAsync(LabNode n) =>
        (await ProcessRunner.RunAsync("ip", ["netns", "exec", n.Netns.Name, "ss", "-Htn", "state", "established"], TimeSpan.FromSeconds(10))).Stdout;
}
