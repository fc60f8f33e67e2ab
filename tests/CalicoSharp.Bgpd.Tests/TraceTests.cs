using System.Net;
using System.Text.Json;
using CalicoSharp.Ipam;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>A two-node lab with pods, shared by the trace tests; each test repairs what it breaks.</summary>
public sealed class TraceLab : IAsyncLifetime
{
    public BgpLab Lab { get; private set; } = null!;

    public LabPod A { get; private set; } = null!;

    public LabPod B { get; private set; } = null!;

    public LabPod Doomed { get; private set; } = null!;

    /// <summary>A source pod whose namespace goes away (for the from-pod hop).</summary>
    public LabPod GoneSource { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2);
        A = await Lab.AddPodAsync(Lab.Nodes[0], "pod-a");
        B = await Lab.AddPodAsync(Lab.Nodes[1], "pod-b");
        Doomed = await Lab.AddPodAsync(Lab.Nodes[1], "pod-doomed");
        GoneSource = await Lab.AddPodAsync(Lab.Nodes[0], "pod-gone-source");
        await WaitForBlockAsync(Lab.Nodes[0], B, present: true);
    }

    public Task WaitForBlockAsync(LabNode at, LabPod of, bool present) =>
        BgpLab.WaitAsync(() => BgpLab.KernelRoutes(at).Contains($"{of.Block} via", StringComparison.Ordinal) == present,
            $"{of.Node.Name}'s block {(present ? "in" : "gone from")} {at.Name}'s kernel", 60, Lab.Diagnostics);

    /// <summary>Runs calicosharpctl trace -o json against the lab (each node's bgpd API by the {node} socket template).</summary>
    public async Task<(int Exit, JsonElement Result)> TraceAsync(string address, string from)
    {
        ProcessResult r = await BgpLab.CtlAsync("--etcd-endpoints", Lab.Etcd.UnixEndpoint, "trace", address, "--from", from, "--bgpd-socket", Lab.ApiSocketTemplate, "-o", "json");
        Assert.True(r.Stdout.Length > 0, $"trace printed nothing (exit {r.ExitCode}): {r.Stderr}");
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        return (r.ExitCode, d.RootElement.Clone());
    }

    public async Task DisposeAsync() => await Lab.DisposeAsync();
}

/// <summary>calicosharpctl trace against the lab: the whole path, then one test per hop that breaks exactly that hop.</summary>
[Trait("Category", "Privileged")]
public sealed class TraceTests(TraceLab f) : IClassFixture<TraceLab>
{
    private static string? BrokenAt(JsonElement r) => r.GetProperty("brokenAt").GetString();

    private static JsonElement HopOf(JsonElement r, string name) => r.GetProperty("hops").EnumerateArray().Single(h => h.GetProperty("hop").GetString() == name);

    private static string Fact(JsonElement r, string hop, string key) => HopOf(r, hop).GetProperty("facts").GetProperty(key).GetString()!;

    private static string Summary(JsonElement r, string hop) => HopOf(r, hop).GetProperty("summary").GetString()!;

    [Fact]
    public async Task Trace_names_block_node_next_hop_interface_and_pod()
    {
        LabNode n1 = f.Lab.Nodes[0], n2 = f.Lab.Nodes[1];
        (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-a");
        Assert.True(exit == 0, r.ToString());
        Assert.Null(BrokenAt(r));
        Assert.Equal(["ipam", "from-pod", "source-route", "fabric", "destination-route", "pod"], r.GetProperty("hops").EnumerateArray().Select(h => h.GetProperty("hop").GetString()));
        Assert.Equal(f.B.Block, Fact(r, "ipam", "block"));
        Assert.Equal(n2.Name, Fact(r, "ipam", "node"));
        Assert.Equal(n1.Name, Fact(r, "source-route", "node"));
        Assert.Equal(n1.TorAddress, Fact(r, "source-route", "nextHop"));
        Assert.Equal(n1.TorAddress, Fact(r, "source-route", "gateway"));
        Assert.Equal($"{BgpLab.TorAsPerCompute} {n2.As}", Fact(r, "source-route", "asPath"));
        string ifName = HostInterface.Name("lab", "pod-b", "");
        Assert.Equal(ifName, Fact(r, "destination-route", "device"));
        Assert.Equal(ifName, Fact(r, "pod", "interface"));
        Assert.Equal("pod-b", Fact(r, "pod", "pod"));
        Assert.Equal("lab", Fact(r, "pod", "namespace"));
        Assert.Equal($"{f.Lab.Prefix}-pod-b", Fact(r, "pod", "containerID"));

        // From a node, and from the pod's own node (no BGP hop: the host route delivers it).
        (exit, r) = await f.TraceAsync(f.B.Address, n1.Name);
        Assert.True(exit == 0, r.ToString());
        (exit, r) = await f.TraceAsync(f.B.Address, n2.Name);
        Assert.True(exit == 0, r.ToString());
        Assert.DoesNotContain("source-route", r.GetProperty("hops").EnumerateArray().Select(h => h.GetProperty("hop").GetString()));
    }

    [Fact]
    public async Task An_address_not_allocated_breaks_at_ipam()
    {
        string free = IpNet.Parse(f.B.Block).AddressAt(60).ToString();
        (int exit, JsonElement r) = await f.TraceAsync(free, f.Lab.Nodes[0].Name);
        Assert.Equal(1, exit);
        Assert.Equal("ipam", BrokenAt(r));
        Assert.Contains("not allocated", Summary(r, "ipam"), StringComparison.Ordinal);
        Assert.Contains(f.B.Block, Summary(r, "ipam"), StringComparison.Ordinal);

        (_, r) = await f.TraceAsync("10.244.250.7", f.Lab.Nodes[0].Name);
        Assert.Equal("ipam", BrokenAt(r));
        Assert.Contains("no node has claimed a block", Summary(r, "ipam"), StringComparison.Ordinal);

        (_, r) = await f.TraceAsync("192.168.77.5", f.Lab.Nodes[0].Name);
        Assert.Equal("ipam", BrokenAt(r));
        Assert.Contains("in no IP pool", Summary(r, "ipam"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_block_route_withdrawn_at_the_source_breaks_at_source_route()
    {
        LabNode n1 = f.Lab.Nodes[0];
        // The ToR stops sending node1 anything: node2's block is withdrawn at node1.
        f.Lab.Bird!.Birdc($"disable node{n1.Index}");
        try
        {
            await f.WaitForBlockAsync(n1, f.B, present: false);
            (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-a");
            Assert.Equal(1, exit);
            Assert.Equal("source-route", BrokenAt(r));
            Assert.Contains($"{n1.Name} has no route to {f.B.Address}", Summary(r, "source-route"), StringComparison.Ordinal);
            Assert.Equal("ok", HopOf(r, "ipam").GetProperty("status").GetString());
        }
        finally
        {
            f.Lab.Bird!.Birdc($"enable node{n1.Index}");
            await f.WaitForBlockAsync(n1, f.B, present: true);
        }
    }

    [Fact]
    public async Task A_more_specific_blackhole_at_the_source_is_named_as_overriding_the_bgp_route()
    {
        LabNode n1 = f.Lab.Nodes[0];
        string part = IpNet.Enclosing(IPAddress.Parse(f.B.Address), 28).ToString();
        TestNetns.Ip("-n", n1.Netns.Name, "route", "add", "blackhole", part);
        try
        {
            (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-a");
            Assert.Equal(1, exit);
            Assert.Equal("source-route", BrokenAt(r));
            Assert.Contains($"{n1.Name} drops packets to {f.B.Address}: its route is {part} blackhole", Summary(r, "source-route"), StringComparison.Ordinal);
            Assert.Contains($"more specific than its BGP route for {f.B.Block}", Summary(r, "source-route"), StringComparison.Ordinal);
        }
        finally
        {
            TestNetns.Ip("-n", n1.Netns.Name, "route", "del", "blackhole", part);
        }
    }

    [Fact]
    public async Task A_route_from_another_origin_than_the_owner_disagrees_with_ipam()
    {
        // The ToR originates a /27 inside node2's block: node1 follows it (more specific), but its origin AS is
        // the ToR's, not node2's.
        LabNode n1 = f.Lab.Nodes[0], n2 = f.Lab.Nodes[1];
        string hijack = IpNet.Enclosing(IPAddress.Parse(f.B.Address), 27).ToString();
        string normal = f.Lab.TorConfig();
        f.Lab.Bird!.Reconfigure(normal + $"protocol static hijack {{ ipv4; route {hijack} blackhole; }}\n");
        try
        {
            await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n1).Contains($"{hijack} via", StringComparison.Ordinal), "the /27 on node1", 30, f.Lab.Diagnostics);
            (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-a");
            Assert.Equal(1, exit);
            Assert.Equal("source-route", BrokenAt(r));
            Assert.Contains($"comes from AS {BgpLab.TorAsPerCompute}, but IPAM gives the address to {n2.Name} (AS {n2.As}): this disagrees with IPAM", Summary(r, "source-route"), StringComparison.Ordinal);
            Assert.Equal(hijack, Fact(r, "source-route", "bgpPrefix"));
        }
        finally
        {
            f.Lab.Bird!.Reconfigure(normal);
            await BgpLab.WaitAsync(() => !BgpLab.KernelRoutes(n1).Contains(hijack, StringComparison.Ordinal), "the /27 gone from node1", 30, f.Lab.Diagnostics);
        }
    }

    [Fact]
    public async Task A_host_route_removed_at_the_destination_breaks_at_destination_route()
    {
        LabNode n2 = f.Lab.Nodes[1];
        string ifName = HostInterface.Name("lab", "pod-b", "");
        TestNetns.Ip("-n", n2.Netns.Name, "route", "del", f.B.Address + "/32", "dev", ifName);
        try
        {
            (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-a");
            Assert.Equal(1, exit);
            Assert.Equal("destination-route", BrokenAt(r));
            Assert.Contains("no /32 host route", Summary(r, "destination-route"), StringComparison.Ordinal);
            Assert.Contains("blackhole", Summary(r, "destination-route"), StringComparison.Ordinal);
            Assert.Equal("ok", HopOf(r, "source-route").GetProperty("status").GetString());
        }
        finally
        {
            TestNetns.Ip("-n", n2.Netns.Name, "route", "add", f.B.Address + "/32", "dev", ifName, "scope", "link");
        }
    }

    [Fact]
    public async Task A_pod_namespace_gone_breaks_at_the_pod()
    {
        LabNode n2 = f.Lab.Nodes[1];
        string ifName = HostInterface.Name("lab", "pod-doomed", "");
        f.Doomed.Netns.Dispose();
        await BgpLab.WaitAsync(() => !TestNetns.Ip("-n", n2.Netns.Name, "link").Contains(ifName, StringComparison.Ordinal), "the veth to go with the namespace");
        (int exit, JsonElement r) = await f.TraceAsync(f.Doomed.Address, "lab/pod-a");
        Assert.Equal(1, exit);
        Assert.Equal("pod", BrokenAt(r));
        Assert.Contains($"{ifName} does not exist on {n2.Name}", Summary(r, "pod"), StringComparison.Ordinal);
        Assert.Equal("warning", HopOf(r, "destination-route").GetProperty("status").GetString());
    }

    [Fact]
    public async Task A_source_pod_whose_namespace_is_gone_breaks_at_from_pod()
    {
        LabNode n1 = f.Lab.Nodes[0];
        string ifName = HostInterface.Name("lab", "pod-gone-source", "");
        f.GoneSource.Netns.Dispose();
        await BgpLab.WaitAsync(() => !TestNetns.Ip("-n", n1.Netns.Name, "link").Contains(ifName, StringComparison.Ordinal), "the veth to go with the namespace");
        (int exit, JsonElement r) = await f.TraceAsync(f.B.Address, "lab/pod-gone-source");
        Assert.Equal(1, exit);
        Assert.Equal("from-pod", BrokenAt(r));
        Assert.Contains($"{ifName} does not exist on {n1.Name}", Summary(r, "from-pod"), StringComparison.Ordinal);
    }
}
