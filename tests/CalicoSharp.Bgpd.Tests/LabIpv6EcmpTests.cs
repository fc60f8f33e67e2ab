using System.Text.RegularExpressions;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>Dual stack in the lab: IPv6 pod addresses from the CNI plugin, IPv6 blocks carried by MP-BGP over an
/// IPv6 session to the ToR (issue 16, finding 9a).</summary>
[Trait("Category", "Privileged")]
public class Ipv6LabTests
{
    [Theory]
    [InlineData(TorModel.AsPerComputeServer)]
    [InlineData(TorModel.AsPerRack)]
    public async Task Ipv6_pods_on_different_nodes_exchange_tcp_through_the_tor(TorModel model)
    {
        await using BgpLab lab = await BgpLab.StartAsync(model, 2, l => l.Ipv6 = true);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");
        Assert.StartsWith("fd10:244::", a.Address6, StringComparison.Ordinal);
        Assert.StartsWith("fd10:244::", b.Address6, StringComparison.Ordinal);
        Assert.NotEqual(a.Block6, b.Block6);

        // Each node's IPv6 block reaches the other through the ToR's IPv6 session; its owner holds it as a blackhole.
        await BgpLab.WaitAsync(() => BgpLab.KernelRoutes6(n2).Contains($"{a.Block6} via {n2.TorAddress6} ", StringComparison.Ordinal)
            && BgpLab.KernelRoutes6(n1).Contains($"{b.Block6} via {n1.TorAddress6} ", StringComparison.Ordinal),
            "each node's IPv6 block in the other's kernel", 45, lab.Diagnostics);
        Assert.Contains($"blackhole {a.Block6} ", BgpLab.KernelRoutes6(n1), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b, ipv6: true), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a, ipv6: true), lab.Diagnostics());
        // Dual stack: the IPv4 side works beside it.
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());

        // The ToR's IPv6 default route and fd99:77::/48 are outside the pools: never installed.
        string n2Routes = TestNetns.Ip("-6", "-n", n2.Netns.Name, "route");
        Assert.DoesNotContain("fd99:77", n2Routes, StringComparison.Ordinal);
        Assert.DoesNotContain("default", n2Routes, StringComparison.Ordinal);
    }
}

/// <summary>A node with two ToR uplinks: one multipath kernel route, and forwarding that survives either ToR
/// session going down (issue 16, finding 9b).</summary>
[Trait("Category", "Privileged")]
public class EcmpLabTests
{
    /// <summary>The gateways of the node's bgpd route for <paramref name="prefix"/>, as ip route shows them (one
    /// "via" for a single path, a "nexthop via" line per path of a multipath route).</summary>
    private static string[] Gateways(LabNode n, string prefix) =>
        [.. Regex.Matches(TestNetns.Ip("-n", n.Netns.Name, "route", "show", prefix, "proto", "81"), @"via (\S+)").Select(m => m.Groups[1].Value).Order(StringComparer.Ordinal)];

    private static bool RouteIs(LabNode n, string prefix, params string[] gateways) =>
        Gateways(n, prefix).SequenceEqual(gateways.Order(StringComparer.Ordinal));

    [Fact]
    public async Task A_node_with_two_uplinks_installs_one_multipath_route_and_keeps_forwarding_when_either_tor_session_goes_down()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2, l => l.Uplinks = 2);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(n1, "pod-a");
        LabPod b = await lab.AddPodAsync(n2, "pod-b");

        async Task BothPathsAsync(string why)
        {
            await BgpLab.WaitAsync(() => RouteIs(n1, b.Block, n1.TorAddress, n1.TorAddress2) && RouteIs(n2, a.Block, n2.TorAddress, n2.TorAddress2),
                $"one route with both ToRs as next hops on both nodes ({why})", 30, lab.Diagnostics);
        }

        await BothPathsAsync("at start");
        string route = TestNetns.Ip("-n", n1.Netns.Name, "route", "show", b.Block, "proto", "81");
        Assert.Single(Regex.Matches(route, @"^\S", RegexOptions.Multiline)); // one route, not two
        Assert.Contains($"nexthop via {n1.TorAddress} ", route, StringComparison.Ordinal);
        Assert.Contains($"nexthop via {n1.TorAddress2} ", route, StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());

        // The first ToR's session with node1 goes down (BIRD sends a Cease): node1 keeps only the second ToR, and
        // the first ToR withdraws node1's block from node2, which keeps only the second ToR too. Each flow hashes
        // onto one path, so both ToRs are taken down in turn: whichever path a flow used, it must move.
        lab.Bird!.Birdc("disable node1");
        await BgpLab.WaitAsync(() => RouteIs(n1, b.Block, n1.TorAddress2) && RouteIs(n2, a.Block, n2.TorAddress2),
            "the routes to shrink to the second ToR", 30, lab.Diagnostics);
        Assert.DoesNotContain("nexthop", TestNetns.Ip("-n", n1.Netns.Name, "route", "show", b.Block, "proto", "81"), StringComparison.Ordinal);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());

        lab.Bird.Birdc("enable node1");
        await BothPathsAsync("the first ToR's session back");
        lab.Bird2!.Birdc("disable node1");
        await BgpLab.WaitAsync(() => RouteIs(n1, b.Block, n1.TorAddress) && RouteIs(n2, a.Block, n2.TorAddress),
            "the routes to shrink to the first ToR", 30, lab.Diagnostics);
        Assert.True(await BgpLab.TcpExchangeAsync(a, b), lab.Diagnostics());
        Assert.True(await BgpLab.TcpExchangeAsync(b, a), lab.Diagnostics());
    }
}
