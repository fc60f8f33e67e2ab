using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using CalicoSharp.Cni;
using CalicoSharp.Ipam;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>The plugin against the kernel and a real etcd, as root, in throwaway namespaces: a node
/// namespace (where the plugin runs) and one namespace per pod. Everything is removed, pass or fail.</summary>
[Trait("Category", "Privileged")]
public sealed class PodLabTests : IDisposable
{
    private readonly CniNodeLab lab = new(("10.77.0.0/16", "lab-v4"), ("fd77:1:2::/48", "lab-v6"));

    private EtcdServer etcd => lab.Etcd;

    private string prefix => lab.Prefix;

    private TestNetns node => lab.Node;

    private NetNs nodeNs => lab.NodeNs;

    private string stateDir => lab.StateDir;

    private IpamClient ipam => lab.Ipam;

    public void Dispose() => lab.Dispose();

    private TestNetns NewPod() => lab.NewPod();

    private string Conf(string version = "1.1.0", string extra = "", string ipamExtra = "\"assign_ipv6\":\"true\"", string name = "k8s-pod-network", string nodeName = "node1") =>
        $$"""{"cniVersion":"{{version}}","name":"{{name}}","type":"calicosharp","mtu":1400,"etcd_endpoints":"{{etcd.UnixEndpoint}}","nodename":"{{nodeName}}","ipam":{"type":"calicosharp-ipam",{{ipamExtra}}}{{extra}}}""";

    private Dictionary<string, string> Env(string command, string containerId, TestNetns? pod, string? netns = null) => lab.Env(command, containerId, pod, netns);

    private Task<(int Code, JsonElement Out)> Run(Dictionary<string, string> env, string conf, PluginKind kind = PluginKind.Network, Action<string>? afterStep = null) =>
        PluginHarness.RunAsync(kind, env, conf, new PluginOptions { Dataplane = () => new LinuxDataplane(nodeNs), AfterStep = afterStep });

    /// <summary>The plugin as a process in the node namespace, as a runtime runs it.</summary>
    private async Task<(int Code, JsonElement Out)> RunProcess(Dictionary<string, string> env, string conf)
    {
        var dll = RepoPaths.ProjectDll("cni/calicosharp", "calicosharp");
        var r = await ProcessRunner.RunAsync("ip", ["netns", "exec", node.Name, "dotnet", dll], TimeSpan.FromSeconds(60), env.ToDictionary(k => k.Key, k => (string?)k.Value), conf);
        return (r.ExitCode, PluginHarness.Parse(Encoding.UTF8.GetBytes(r.Stdout)));
    }

    private static string WithPrev(string conf, JsonElement result) => conf[..^1] + ",\"prevResult\":" + result.GetRawText() + "}";

    /// <summary>Nothing of the pod is left: no host veth, no interface in the pod, no host route, no handle, no address.</summary>
    private Task AssertNothingLeft(string containerId, TestNetns? pod) => lab.AssertNothingLeftAsync("k8s-pod-network." + containerId, pod, "10.77.");

    [Theory]
    [MemberData(nameof(PluginHarness.Versions), MemberType = typeof(PluginHarness))]
    public async Task ADD_CHECK_DEL_as_a_process_for_every_version(string version)
    {
        var pod = NewPod();
        var conf = Conf(version);
        var (code, result) = await RunProcess(Env("ADD", "c" + version.Replace(".", string.Empty, StringComparison.Ordinal), pod), conf);
        Assert.True(code == 0, result.ToString());
        Assert.Equal(version, result.GetProperty("cniVersion").GetString());
        var v4 = result.GetProperty("ips").EnumerateArray().Select(i => i.GetProperty("address").GetString()!).Single(a => a.StartsWith("10.77.", StringComparison.Ordinal));
        Assert.EndsWith("/32", v4, StringComparison.Ordinal);
        Assert.Contains(v4[..^3], TestNetns.Ip("-n", pod.Name, "addr", "show", "eth0"), StringComparison.Ordinal);
        Assert.Contains($"{v4[..^3]} dev cali", TestNetns.Ip("-n", node.Name, "route"), StringComparison.Ordinal);
        var id = "c" + version.Replace(".", string.Empty, StringComparison.Ordinal);
        if (Plugin.SupportsCheck(version))
        {
            var (check, output) = await RunProcess(Env("CHECK", id, pod), WithPrev(conf, result));
            Assert.True(check == 0, output.ToString());
        }

        if (Plugin.SupportsGcAndStatus(version))
        {
            Assert.Equal(0, (await RunProcess(Env("STATUS", id, pod), conf)).Code);
            Assert.Equal(0, (await RunProcess(Env("GC", id, pod), conf[..^1] + $",\"cni.dev/valid-attachments\":[{{\"containerID\":\"{id}\",\"ifname\":\"eth0\"}}]}}")).Code);
            Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("k8s-pod-network." + id), default));
        }

        Assert.Equal(0, (await RunProcess(Env("DEL", id, pod), conf)).Code);
        Assert.Equal(0, (await RunProcess(Env("DEL", id, pod), conf)).Code);
        await AssertNothingLeft(id, pod);
    }

    [Fact]
    public async Task Two_pods_on_one_node_exchange_tcp_over_ipv4_and_ipv6()
    {
        var a = NewPod();
        var b = NewPod();
        var (ca, ra) = await Run(Env("ADD", "pod-a", a), Conf());
        var (cb, rb) = await Run(Env("ADD", "pod-b", b), Conf());
        Assert.True(ca == 0 && cb == 0, $"{ra} {rb}");
        using var nsA = NetNs.Open(a.Path);
        using var nsB = NetNs.Open(b.Path);
        foreach (var family in new[] { AddressFamily.InterNetwork, AddressFamily.InterNetworkV6 })
        {
            var addrB = Address(rb, family);
            var addrA = Address(ra, family);
            Assert.Equal("pong", await Exchange(nsB, addrB, nsA));
            Assert.Equal("pong", await Exchange(nsA, addrA, nsB));
        }

        Assert.Equal(0, (await Run(Env("DEL", "pod-a", a), Conf())).Code);
        Assert.Equal(0, (await Run(Env("DEL", "pod-b", b), Conf())).Code);
        await AssertNothingLeft("pod-a", a);
    }

    private static IPAddress Address(JsonElement result, AddressFamily family) =>
        result.GetProperty("ips").EnumerateArray().Select(i => IPAddress.Parse(i.GetProperty("address").GetString()!.Split('/')[0])).Single(x => x.AddressFamily == family);

    /// <summary>A TCP round trip: a listener created inside <paramref name="serverNs"/>, a client inside
    /// <paramref name="clientNs"/> (a socket stays in the namespace it was created in).</summary>
    private static async Task<string> Exchange(NetNs serverNs, IPAddress serverAddress, NetNs clientNs)
    {
        using var listener = serverNs.Run(() =>
        {
            var s = new Socket(serverAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
            s.Bind(new IPEndPoint(serverAddress, 0));
            s.Listen();
            return s;
        });
        using var client = clientNs.Run(() => new Socket(serverAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        var accept = listener.AcceptAsync(cts.Token).AsTask();
        await client.ConnectAsync(listener.LocalEndPoint!, cts.Token);
        using var server = await accept;
        await client.SendAsync(Encoding.ASCII.GetBytes("ping"), cts.Token);
        var buf = new byte[4];
        Assert.Equal(4, await server.ReceiveAsync(buf, cts.Token));
        Assert.Equal("ping", Encoding.ASCII.GetString(buf));
        await server.SendAsync(Encoding.ASCII.GetBytes("pong"), cts.Token);
        int n = await client.ReceiveAsync(buf, cts.Token);
        return Encoding.ASCII.GetString(buf, 0, n);
    }

    private static readonly string[] AddStepNames = ["ipam", "veth", "host-sysctls", "host-up", "pod-sysctls", "pod-network", "host-routes"];

    public static TheoryData<string> AddSteps() => [.. AddStepNames];

    [Theory]
    [MemberData(nameof(AddSteps))]
    public async Task A_failure_after_any_ADD_step_leaves_nothing_behind(string failAfter)
    {
        var pod = NewPod();
        var seen = new List<string>();
        var (code, err) = await Run(Env("ADD", "failing", pod), Conf(), afterStep: s =>
        {
            seen.Add(s);
            if (s == failAfter)
            {
                throw new CniException(CniCode.DataplaneFailure, $"injected failure after {s}");
            }
        });
        Assert.Equal(1, code);
        Assert.Equal($"injected failure after {failAfter}", err.GetProperty("msg").GetString());
        // No ADD step ran after the failure (the undo's IPAM release reports its own step, "released").
        Assert.DoesNotContain(seen.Skip(seen.IndexOf(failAfter) + 1), AddStepNames.Contains);
        await AssertNothingLeft("failing", pod);
    }

    public static TheoryData<string, string> Tamperings() => new()
    {
        { "address", "address 10.77." },
        { "pod-route", "default route via 169.254.1.1 is missing" },
        { "host-route", "host route 10.77." },
        { "link-down", "is down" },
        { "neighbour", "permanent neighbour 169.254.1.1" },
        { "mtu", "has MTU 1300, expected 1400" },
    };

    [Theory]
    [MemberData(nameof(Tamperings))]
    public async Task CHECK_names_what_was_tampered_with(string tamper, string expected)
    {
        var pod = NewPod();
        var conf = Conf(ipamExtra: "\"assign_ipv4\":\"true\"");
        var (code, result) = await Run(Env("ADD", "checked", pod), conf);
        Assert.Equal(0, code);
        Assert.Equal(0, (await Run(Env("CHECK", "checked", pod), WithPrev(conf, result))).Code);
        var ip = Address(result, AddressFamily.InterNetwork).ToString();
        var host = LinuxDataplane.HostVethName(CniEnv.Parse(Env("ADD", "checked", pod)));
        switch (tamper)
        {
            case "address": TestNetns.Ip("-n", pod.Name, "addr", "del", ip + "/32", "dev", "eth0"); break;
            case "pod-route": TestNetns.Ip("-n", pod.Name, "route", "del", "default"); break;
            case "host-route": TestNetns.Ip("-n", node.Name, "route", "del", ip + "/32"); break;
            case "link-down": TestNetns.Ip("-n", pod.Name, "link", "set", "eth0", "down"); break;
            case "neighbour": TestNetns.Ip("-n", pod.Name, "neigh", "del", "169.254.1.1", "dev", "eth0"); break;
            case "mtu": TestNetns.Ip("-n", node.Name, "link", "set", host, "mtu", "1300"); break;
        }

        var (bad, err) = await Run(Env("CHECK", "checked", pod), WithPrev(conf, result));
        Assert.Equal(1, bad);
        Assert.Equal(CniCode.CheckFailed, err.GetProperty("code").GetInt32());
        Assert.Contains(expected, err.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.Equal(0, (await Run(Env("DEL", "checked", pod), conf)).Code);
        await AssertNothingLeft("checked", pod);
    }

    [Fact]
    public async Task GC_releases_only_this_networks_stale_allocations_on_this_node()
    {
        async Task Add(string net, string nodeName, string id) =>
            Assert.Equal(0, (await Run(Env("ADD", id, null, "/none"), Conf(name: net, nodeName: nodeName, ipamExtra: "\"assign_ipv4\":true"), PluginKind.Ipam)).Code);
        await Add("net-a", "node1", "a1");
        await Add("net-a", "node1", "a2");
        await Add("net-b", "node1", "b1");
        await Add("net-a", "node2", "a3");
        var gc = Conf(name: "net-a", nodeName: "node1")[..^1] + ",\"cni.dev/valid-attachments\":[{\"containerID\":\"a1\",\"ifname\":\"eth0\"}]}";
        Assert.Equal(0, (await Run(Env("GC", "x", null, "/none"), gc, PluginKind.Ipam)).Code);
        Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("net-a.a1"), default));
        Assert.Null(await ipam.Store.GetAsync(Keys.Handle("net-a.a2"), default));
        Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("net-b.b1"), default));
        Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("net-a.a3"), default));
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task GC_of_a_network_leaves_a_network_whose_name_extends_it_with_a_dot()
    {
        // Handles are "<network>.<container id>": GC of "k8s" must not take "k8s.x"'s handle "k8s.x.b1" for a
        // container "x.b1" of its own.
        async Task Add(string net, string id) =>
            Assert.Equal(0, (await Run(Env("ADD", id, null, "/none"), Conf(name: net, ipamExtra: "\"assign_ipv4\":true"), PluginKind.Ipam)).Code);
        await Add("k8s", "a1");
        await Add("k8s", "a2");
        await Add("k8s.x", "b1");
        var gc = Conf(name: "k8s")[..^1] + ",\"cni.dev/valid-attachments\":[{\"containerID\":\"a1\",\"ifname\":\"eth0\"}]}";
        Assert.Equal(0, (await Run(Env("GC", "x", null, "/none"), gc, PluginKind.Ipam)).Code);
        Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("k8s.a1"), default));
        Assert.Null(await ipam.Store.GetAsync(Keys.Handle("k8s.a2"), default));
        Assert.NotNull(await ipam.Store.GetAsync(Keys.Handle("k8s.x.b1"), default));
        Assert.Single(await ipam.AddressesOfHandleAsync("k8s.x.b1"));
        Assert.Empty((await ipam.CheckAsync()).Problems);
    }

    [Fact]
    public async Task A_late_DEL_of_a_pods_old_sandbox_leaves_the_new_sandboxs_interface()
    {
        // kubelet recreates a pod's sandbox: the new container c2 gets the same host interface name (it comes
        // from the pod), then a late or retried DEL of the old container c1 arrives.
        Dictionary<string, string> PodEnv(string command, string id, TestNetns pod)
        {
            var env = Env(command, id, pod);
            env["CNI_ARGS"] = $"IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID=6f1c2d4e-0000-4000-8000-000000000001";
            return env;
        }

        var conf = Conf(ipamExtra: "\"assign_ipv4\":true");
        var (sandbox1, sandbox2) = (NewPod(), NewPod());
        var (code1, first) = await Run(PodEnv("ADD", "c1", sandbox1), conf);
        Assert.True(code1 == 0, first.ToString());
        var (code2, second) = await Run(PodEnv("ADD", "c2", sandbox2), conf);
        Assert.True(code2 == 0, second.ToString());
        var ip2 = Address(second, AddressFamily.InterNetwork);
        var hostName = LinuxDataplane.HostVethName(CniEnv.Parse(PodEnv("ADD", "c2", sandbox2)));

        // The old sandbox's CHECK names the interface's owner now.
        var (check1, err) = await Run(PodEnv("CHECK", "c1", sandbox1), WithPrev(conf, first));
        Assert.Equal(1, check1);
        Assert.Contains("belongs to container c2, not to c1", err.GetProperty("msg").GetString(), StringComparison.Ordinal);

        Assert.Equal(0, (await Run(PodEnv("DEL", "c1", sandbox1), conf)).Code);
        Assert.Contains(hostName, TestNetns.Ip("-n", node.Name, "-o", "link"), StringComparison.Ordinal);
        Assert.Contains($"{ip2} dev {hostName}", TestNetns.Ip("-n", node.Name, "route"), StringComparison.Ordinal);
        Assert.Contains($"{ip2}/32", TestNetns.Ip("-n", sandbox2.Name, "addr", "show", "eth0"), StringComparison.Ordinal);
        Assert.Equal(0, (await Run(PodEnv("CHECK", "c2", sandbox2), WithPrev(conf, second))).Code);
        Assert.Empty(await ipam.AddressesOfHandleAsync("k8s-pod-network.c1"));
        Assert.Equal(0, (await Run(PodEnv("DEL", "c2", sandbox2), conf)).Code);
        await AssertNothingLeft("c2", sandbox2);
    }

    [Fact]
    public async Task DEL_twice_and_DEL_of_a_missing_netns_succeed_and_ADD_to_one_fails_cleanly()
    {
        var pod = NewPod();
        Assert.Equal(0, (await Run(Env("ADD", "gone", pod), Conf())).Code);
        TestNetns.Ip("netns", "del", pod.Name); // the runtime lost the namespace
        Assert.Equal(0, (await Run(Env("DEL", "gone", pod), Conf())).Code);
        Assert.Equal(0, (await Run(Env("DEL", "gone", pod), Conf())).Code);
        await AssertNothingLeft("gone", null);

        var (code, err) = await Run(Env("ADD", "nowhere", null, $"/var/run/netns/{prefix}-missing"), Conf());
        Assert.Equal(1, code);
        Assert.Equal(CniCode.UnknownContainer, err.GetProperty("code").GetInt32());
        await AssertNothingLeft("nowhere", null);
    }

    [Fact]
    public async Task Exhausted_pool_is_error_100_and_leaves_nothing()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.78.0.0/30", Name = "tiny", BlockSize = 30 });
        await ipam.ConfigureAsync(strictAffinity: true, null);
        var conf = Conf(ipamExtra: "\"ipv4_pools\":[\"tiny\"]");
        var pods4 = Enumerable.Range(0, 4).Select(_ => NewPod()).ToList();
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(0, (await Run(Env("ADD", $"t{i}", pods4[i]), conf)).Code);
        }

        var extra = NewPod();
        var (code, err) = await Run(Env("ADD", "t4", extra), conf);
        Assert.Equal(1, code);
        Assert.Equal(CniCode.PoolExhausted, err.GetProperty("code").GetInt32());
        Assert.Contains("tiny (10.78.0.0/30)", err.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.DoesNotContain("eth0", TestNetns.Ip("-n", extra.Name, "-o", "link"), StringComparison.Ordinal);
        for (int i = 0; i < 4; i++)
        {
            Assert.Equal(0, (await Run(Env("DEL", $"t{i}", pods4[i]), conf)).Code);
        }

        await AssertNothingLeft("t4", extra);
    }

    [Fact]
    public async Task ADD_replaces_a_stale_host_veth_and_refuses_a_taken_pod_interface()
    {
        // A host end left by a crashed ADD of this pod is removed, and the ADD goes on.
        var pod = NewPod();
        var host = LinuxDataplane.HostVethName(CniEnv.Parse(Env("ADD", "stale", pod)));
        TestNetns.Ip("-n", node.Name, "link", "add", host, "type", "veth", "peer", "name", "leftover");
        var (code, result) = await Run(Env("ADD", "stale", pod), Conf());
        Assert.True(code == 0, result.ToString());
        Assert.DoesNotContain("leftover", TestNetns.Ip("-n", node.Name, "-o", "link"), StringComparison.Ordinal);
        Assert.Equal(0, (await Run(Env("DEL", "stale", pod), Conf())).Code);
        await AssertNothingLeft("stale", pod);

        // An interface of the pod's name in its namespace is the caller's: an error, and nothing is left.
        var taken = NewPod();
        TestNetns.Ip("-n", taken.Name, "link", "add", "eth0", "type", "veth", "peer", "name", "theirs");
        var (bad, err) = await Run(Env("ADD", "taken", taken), Conf());
        Assert.Equal(1, bad);
        Assert.Equal(CniCode.DataplaneFailure, err.GetProperty("code").GetInt32());
        Assert.Contains("interface eth0 already exists in", err.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.Contains("eth0@theirs", TestNetns.Ip("-n", taken.Name, "-o", "link"), StringComparison.Ordinal);
        Assert.DoesNotContain("cali", TestNetns.Ip("-n", node.Name, "-o", "link"), StringComparison.Ordinal);
        Assert.Empty(await ipam.AddressesOfHandleAsync("k8s-pod-network.taken"));
    }

    [Fact]
    public async Task Host_local_delegation_gives_the_pod_a_host_route_and_DEL_releases_it()
    {
        var pod = NewPod();
        var dataDir = Path.Combine(stateDir, "host-local");
        var conf = $$$"""{"cniVersion":"1.0.0","name":"hl-net","type":"calicosharp","mtu":1400,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.79.0.0/24"}]],"dataDir":"{{{dataDir}}}"}}""";
        var (code, result) = await Run(Env("ADD", "hl1", pod), conf);
        Assert.True(code == 0, result.ToString());
        var ip = Address(result, AddressFamily.InterNetwork);
        Assert.StartsWith("10.79.0.", ip.ToString(), StringComparison.Ordinal);
        Assert.Contains($"{ip}/32", TestNetns.Ip("-n", pod.Name, "addr", "show", "eth0"), StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(dataDir, "hl-net", ip.ToString())));
        Assert.Equal(0, (await Run(Env("CHECK", "hl1", pod), WithPrev(conf, result))).Code);
        Assert.Equal(0, (await Run(Env("DEL", "hl1", pod), conf)).Code);
        Assert.False(File.Exists(Path.Combine(dataDir, "hl-net", ip.ToString())));
        Assert.DoesNotContain("cali", TestNetns.Ip("-n", node.Name, "-o", "link"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task STATUS_is_error_50_while_etcd_is_unreachable()
    {
        Assert.Equal(0, (await Run(Env("STATUS", "s", null), Conf())).Code);
        etcd.Stop();
        var (code, err) = await Run(Env("STATUS", "s", null), Conf()[..^1] + ",\"etcd_timeout\":1}");
        etcd.Launch();
        Assert.Equal(1, code);
        Assert.Equal(CniCode.NotAvailable, err.GetProperty("code").GetInt32());
        Assert.Contains("etcd", err.GetProperty("msg").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_reference_ptp_plugin_takes_its_address_from_calicosharp_ipam()
    {
        // CNI_PATH holds the reference plugins and calicosharp-ipam (the built one, through a wrapper).
        var cniPath = Path.Combine(stateDir, "cni-bin");
        Directory.CreateDirectory(cniPath);
        var wrapper = Path.Combine(cniPath, "calicosharp-ipam");
        await File.WriteAllTextAsync(wrapper, $"#!/bin/sh\nexec dotnet {RepoPaths.ProjectDll("cni/calicosharp-ipam", "calicosharp-ipam")} \"$@\"\n");
        File.SetUnixFileMode(wrapper, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var pod = NewPod();
        var conf = $$$"""{"cniVersion":"1.0.0","name":"ptp-net","type":"ptp","ipMasq":false,"ipam":{"type":"calicosharp-ipam","etcd_endpoints":"{{{etcd.UnixEndpoint}}}","nodename":"node1"},"etcd_endpoints":"{{{etcd.UnixEndpoint}}}","nodename":"node1"}""";
        var env = Env("ADD", "ptp1", pod);
        env["CNI_PATH"] = $"{cniPath}:/usr/lib/cni";
        var r = await ProcessRunner.RunAsync("ip", ["netns", "exec", node.Name, "/usr/lib/cni/ptp"], TimeSpan.FromSeconds(60), env.ToDictionary(k => k.Key, k => (string?)k.Value), conf);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var ip = Address(PluginHarness.Parse(Encoding.UTF8.GetBytes(r.Stdout)), AddressFamily.InterNetwork);
        Assert.True(IpNet.Parse("10.77.0.0/16").Contains(ip), ip.ToString());
        Assert.Equal("ptp-net.ptp1", (await ipam.LookupAsync(ip))!.HandleId);
        env["CNI_COMMAND"] = "DEL";
        r = await ProcessRunner.RunAsync("ip", ["netns", "exec", node.Name, "/usr/lib/cni/ptp"], TimeSpan.FromSeconds(60), env.ToDictionary(k => k.Key, k => (string?)k.Value), conf);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.False((await ipam.LookupAsync(ip))?.Allocated ?? false);
    }
}
