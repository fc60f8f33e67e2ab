using System.Net;
using System.Net.Sockets;
using CalicoSharp.Cni;
using CalicoSharp.Ipam;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>The plugin with the node's bgpd assigning its addresses (NodeIpam on bgpd's control socket), as
/// root with a real etcd and bgpd (in a node namespace, no kernel routes), and every way bgpd can fail to
/// answer, after which the plugin assigns itself.</summary>
[Trait("Category", "Privileged")]
public sealed class NodeAgentTests : IDisposable
{
    private readonly CniNodeLab lab = new(("10.78.0.0/16", "agent-v4"));
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-agent-").FullName;
    private readonly BgpdProcess bgpd;

    public NodeAgentTests() => bgpd = StartBgpd("node1", Socket);

    private IpamClient ipam => lab.Ipam;

    private string Socket => Path.Combine(dir, "bgpd.sock");

    private string LogFile => Path.Combine(dir, "cni.log");

    public void Dispose()
    {
        bgpd.Dispose();
        lab.Dispose();
        Directory.Delete(dir, true);
    }

    private string[] BgpdCommand => ["ip", "netns", "exec", lab.Node.Name, "dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd")];

    private BgpdProcess StartBgpd(string nodeName, string socket) => BgpdProcess.Start(BgpdCommand,
        ["--node-name", nodeName, "--ipv4-address", "10.255.0.1/32", "--as", "64512", "--etcd-endpoints", lab.Etcd.UnixEndpoint,
         "--no-kernel", "--api-socket", socket, "--state-dir", lab.StateDir, "--log-level", "debug"], socket);

    private string Conf(string socket, string nodeName = "node1", string pools = "") =>
        $$$"""{"cniVersion":"1.0.0","name":"net","type":"calicosharp","mtu":1400,"etcd_endpoints":"{{{lab.Etcd.UnixEndpoint}}}","nodename":"{{{nodeName}}}","bgpd_socket":"{{{socket}}}","log_level":"debug","log_file_path":"{{{LogFile}}}","ipam":{"type":"calicosharp-ipam"{{{pools}}}}}""";

    private static NetConf Parse(string conf) => NetConf.Parse(System.Text.Encoding.UTF8.GetBytes(conf));

    private static AutoAssignRequest Request(string handle, string nodeName = "node1", string? pool = null) => new()
    {
        HandleId = handle,
        Node = nodeName,
        Num4 = 1,
        Attributes = new Dictionary<string, string> { ["containerID"] = handle },
        Ipv4Pools = pool is null ? null : [pool],
    };

    [Fact]
    public async Task ADD_takes_its_address_from_bgpd_with_the_pods_attributes_and_DEL_releases_it()
    {
        var pod = lab.NewPod();
        var (code, result) = await PluginHarness.RunAsync(PluginKind.Network, lab.Env("ADD", "agent1", pod), Conf(Socket), new PluginOptions { Dataplane = () => new LinuxDataplane(lab.NodeNs) });
        Assert.Equal(0, code);
        var address = IPAddress.Parse(result.GetProperty("ips")[0].GetProperty("address").GetString()!.Split('/')[0]);
        Assert.Contains("allocated by bgpd at " + Socket, await File.ReadAllTextAsync(LogFile));
        var lookup = await ipam.LookupAsync(address);
        Assert.NotNull(lookup);
        Assert.Equal("net.agent1", lookup.HandleId);
        Assert.NotNull(lookup.Attributes);
        Assert.Equal("node1", lookup.Attributes["node"]);
        Assert.Equal("lab", lookup.Attributes["namespace"]);
        Assert.Equal("agent1", lookup.Attributes["pod"]);

        Assert.Equal(0, (await PluginHarness.RunAsync(PluginKind.Network, lab.Env("DEL", "agent1", pod), Conf(Socket), new PluginOptions { Dataplane = () => new LinuxDataplane(lab.NodeNs) })).Code);
        Assert.Empty(await ipam.AddressesOfHandleAsync("net.agent1"));
    }

    public static TheoryData<string> AddSteps() => ["veth", "host-up", "ipam", "pod-network", "host-routes"];

    /// <summary>The interfaces are made while bgpd assigns: a failure there (or after) waits for bgpd's answer,
    /// then undoes both halves.</summary>
    [Theory]
    [MemberData(nameof(AddSteps))]
    public async Task A_failure_after_any_ADD_step_through_bgpd_leaves_nothing_behind(string failAfter)
    {
        var pod = lab.NewPod();
        var (code, err) = await PluginHarness.RunAsync(PluginKind.Network, lab.Env("ADD", "failing", pod), Conf(Socket), new PluginOptions
        {
            Dataplane = () => new LinuxDataplane(lab.NodeNs),
            AfterStep = s =>
            {
                if (s == failAfter)
                {
                    throw new CniException(CniCode.DataplaneFailure, $"injected failure after {s}");
                }
            },
        });
        Assert.Equal(1, code);
        Assert.Equal($"injected failure after {failAfter}", err.GetProperty("msg").GetString());
        Assert.Contains("allocated by bgpd", await File.ReadAllTextAsync(LogFile));
        await lab.AssertNothingLeftAsync("net.failing", pod, "10.78.");
    }

    [Fact]
    public void Assigning_through_bgpd_twice_for_one_handle_gives_the_same_address()
    {
        using var agent = NodeAgent.Find(Parse(Conf(Socket)), Log.None)!;
        var first = agent.TryAssign(Request("net.twice"))!;
        var second = agent.TryAssign(Request("net.twice"))!;
        Assert.Single(first);
        Assert.Equal(first[0].Address, second[0].Address);
    }

    [Fact]
    public async Task An_exhausted_pool_through_bgpd_is_the_allocators_error_and_ADD_leaves_nothing()
    {
        // Four addresses in all: one block of four.
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.79.0.0/30", Name = "tiny", BlockSize = 30 });
        using (var agent = NodeAgent.Find(Parse(Conf(Socket)), Log.None)!)
        {
            for (int i = 0; i < 4; i++)
            {
                Assert.NotNull(agent.TryAssign(Request($"net.fill{i}", pool: "tiny")));
            }

            var e = Assert.Throws<IpamException>(() => agent.TryAssign(Request("net.one-too-many", pool: "tiny")));
            Assert.Equal(IpamErrorKind.PoolExhausted, e.Kind);
        }

        var pod = lab.NewPod();
        var (code, err) = await PluginHarness.RunAsync(PluginKind.Network, lab.Env("ADD", "full", pod), Conf(Socket, pools: ",\"ipv4_pools\":[\"tiny\"]"), new PluginOptions { Dataplane = () => new LinuxDataplane(lab.NodeNs) });
        Assert.Equal((int)CniCode.PoolExhausted, err.GetProperty("code").GetInt32());
        Assert.Equal(1, code);
        Assert.Empty(await ipam.AddressesOfHandleAsync("net.full"));
        Assert.DoesNotContain("eth0", TestNetns.Ip("-n", pod.Name, "-o", "link"), StringComparison.Ordinal);
    }

    public static TheoryData<string> Silences() => ["no-socket", "not-listening", "other-node", "no-etcd"];

    [Theory]
    [MemberData(nameof(Silences))]
    public async Task When_bgpd_does_not_answer_the_plugin_assigns_itself(string how)
    {
        string socket = Path.Combine(dir, how + ".sock");
        BgpdProcess? other = null;
        Socket? bound = null;
        switch (how)
        {
            case "not-listening":
                // A socket file whose process is gone: connect is refused.
                bound = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                bound.Bind(new UnixDomainSocketEndPoint(socket));
                break;
            case "other-node":
                other = StartBgpd("node2", socket);
                break;
            case "no-etcd":
                // Its control API but no etcd (configured by flags only): it does not serve NodeIpam.
                other = BgpdProcess.Start(BgpdCommand, ["--node-name", "node1", "--ipv4-address", "10.255.0.2/32", "--as", "64512", "--no-kernel", "--api-socket", socket], socket);
                break;
        }

        try
        {
            var conf = Conf(socket);
            using (var agent = NodeAgent.Find(Parse(conf), Log.None))
            {
                Assert.Null(agent?.TryAssign(Request("net.fallback-probe")));
            }

            var pod = lab.NewPod();
            var (code, result) = await PluginHarness.RunAsync(PluginKind.Network, lab.Env("ADD", how, pod), conf, new PluginOptions { Dataplane = () => new LinuxDataplane(lab.NodeNs) });
            Assert.Equal(0, code);
            var address = IPAddress.Parse(result.GetProperty("ips")[0].GetProperty("address").GetString()!.Split('/')[0]);
            Assert.Equal("node1", (await ipam.LookupAsync(address))!.Attributes!["node"]);
            if (how != "no-socket")
            {
                Assert.Contains("doing it directly against etcd", await File.ReadAllTextAsync(LogFile));
            }
        }
        finally
        {
            bound?.Dispose();
            other?.Dispose();
        }
    }
}
