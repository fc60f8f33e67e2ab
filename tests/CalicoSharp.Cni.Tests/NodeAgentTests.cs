using System.Diagnostics;
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
    private readonly EtcdServer etcd = EtcdServer.Start();
    private readonly string prefix = TestNetns.NewLabPrefix();
    private readonly TestNetns node;
    private readonly NetNs nodeNs;
    private readonly List<TestNetns> pods = [];
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-agent-").FullName;
    private readonly IpamClient ipam;
    private readonly Process bgpd;

    public NodeAgentTests()
    {
        node = TestNetns.Create(prefix + "-node1");
        nodeNs = NetNs.Open(node.Path);
        ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint] }));
        ipam.AddPoolAsync(new PoolRequest { Cidr = "10.78.0.0/16", Name = "agent-v4" }).GetAwaiter().GetResult();
        bgpd = StartBgpd("node1", Socket);
    }

    private string Socket => Path.Combine(dir, "bgpd.sock");

    private string StateDir => Path.Combine(dir, "state");

    private string LogFile => Path.Combine(dir, "cni.log");

    public void Dispose()
    {
        bgpd.Kill(entireProcessTree: true);
        bgpd.WaitForExit();
        bgpd.Dispose();
        foreach (var p in pods)
        {
            p.Dispose();
        }

        nodeNs.Dispose();
        node.Dispose();
        ipam.Dispose();
        etcd.Dispose();
        Directory.Delete(dir, true);
    }

    private Process StartBgpd(string nodeName, string socket)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "netns", "exec", node.Name, "dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd"),
            "--node-name", nodeName, "--ipv4-address", "10.255.0.1/32", "--as", "64512", "--etcd-endpoints", etcd.UnixEndpoint,
            "--no-kernel", "--api-socket", socket, "--state-dir", StateDir, "--log-level", "debug" })
        {
            psi.ArgumentList.Add(a);
        }

        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var sw = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (p.HasExited || sw.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new InvalidOperationException($"bgpd did not open {socket}");
            }

            Thread.Sleep(50);
        }

        return p;
    }

    private string Conf(string socket, string nodeName = "node1", string pools = "") =>
        $$$"""{"cniVersion":"1.0.0","name":"net","type":"calicosharp","mtu":1400,"etcd_endpoints":"{{{etcd.UnixEndpoint}}}","nodename":"{{{nodeName}}}","bgpd_socket":"{{{socket}}}","log_level":"debug","log_file_path":"{{{LogFile}}}","ipam":{"type":"calicosharp-ipam"{{{pools}}}}}""";

    private Dictionary<string, string> Env(string command, string containerId, TestNetns pod) => new()
    {
        ["CNI_COMMAND"] = command,
        ["CNI_CONTAINERID"] = containerId,
        ["CNI_NETNS"] = pod.Path,
        ["CNI_IFNAME"] = "eth0",
        ["CNI_PATH"] = "/usr/lib/cni",
        ["CNI_ARGS"] = $"IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={containerId}",
        ["CALICOSHARP_STATE_DIR"] = StateDir,
    };

    private TestNetns NewPod()
    {
        var p = TestNetns.Create($"{prefix}-pod{pods.Count + 1}");
        pods.Add(p);
        return p;
    }

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
        var pod = NewPod();
        var (code, result) = await PluginHarness.RunAsync(PluginKind.Network, Env("ADD", "agent1", pod), Conf(Socket), new PluginOptions { Dataplane = () => new LinuxDataplane(nodeNs) });
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

        Assert.Equal(0, (await PluginHarness.RunAsync(PluginKind.Network, Env("DEL", "agent1", pod), Conf(Socket), new PluginOptions { Dataplane = () => new LinuxDataplane(nodeNs) })).Code);
        Assert.Empty(await ipam.AddressesOfHandleAsync("net.agent1"));
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

        var pod = NewPod();
        var (code, err) = await PluginHarness.RunAsync(PluginKind.Network, Env("ADD", "full", pod), Conf(Socket, pools: ",\"ipv4_pools\":[\"tiny\"]"), new PluginOptions { Dataplane = () => new LinuxDataplane(nodeNs) });
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
        Process? other = null;
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
                socket = Path.Combine(dir, "noetcd.sock");
                other = StartNoEtcdBgpd(socket);
                break;
        }

        try
        {
            var conf = Conf(socket);
            using (var agent = NodeAgent.Find(Parse(conf), Log.None))
            {
                Assert.Null(agent?.TryAssign(Request("net.fallback-probe")));
            }

            var pod = NewPod();
            var (code, result) = await PluginHarness.RunAsync(PluginKind.Network, Env("ADD", how, pod), conf, new PluginOptions { Dataplane = () => new LinuxDataplane(nodeNs) });
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
            if (other is not null)
            {
                other.Kill(entireProcessTree: true);
                other.WaitForExit();
                other.Dispose();
            }
        }
    }

    /// <summary>A bgpd with its control API but no etcd (config from flags only): it does not serve NodeIpam.</summary>
    private Process StartNoEtcdBgpd(string socket)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "netns", "exec", node.Name, "dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd"),
            "--node-name", "node1", "--ipv4-address", "10.255.0.2/32", "--as", "64512", "--no-kernel", "--api-socket", socket })
        {
            psi.ArgumentList.Add(a);
        }

        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var sw = Stopwatch.StartNew();
        while (!File.Exists(socket) && !p.HasExited && sw.Elapsed < TimeSpan.FromSeconds(30))
        {
            Thread.Sleep(50);
        }

        return p;
    }
}
