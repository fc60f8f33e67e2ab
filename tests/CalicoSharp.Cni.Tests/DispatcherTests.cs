using System.Net;
using System.Text;
using System.Text.Json;
using CalicoSharp.Cni;

namespace CalicoSharp.Cni.Tests;

/// <summary>The dispatcher without a process, root or etcd: injected env, stdin and stdout, fake IPAM and dataplane.</summary>
public sealed class DispatcherTests : IDisposable
{
    private sealed class FakeIpam : IIpamBackend
    {
        public List<string> Calls { get; } = [];

        public Exception? FailAdd { get; set; }

        public Task<CniResult> AddAsync(PluginContext ctx)
        {
            Calls.Add("ADD " + ctx.Node);
            return FailAdd is not null ? throw FailAdd : Task.FromResult(new CniResult { Ips = [new CniIp(IPAddress.Parse("10.244.1.7"), 32, null, null), new CniIp(IPAddress.Parse("fd00::7"), 128, null, null)] });
        }

        public Task DelAsync(PluginContext ctx)
        {
            Calls.Add("DEL");
            return Task.CompletedTask;
        }

        public Task CheckAsync(PluginContext ctx, CniResult prev)
        {
            Calls.Add("CHECK " + prev.Ips.Count);
            return Task.CompletedTask;
        }

        public Task GcAsync(PluginContext ctx, IReadOnlyList<(string ContainerId, string IfName)> valid)
        {
            Calls.Add("GC " + string.Join(",", valid.Select(v => v.ContainerId)));
            return Task.CompletedTask;
        }

        public Task StatusAsync(PluginContext ctx)
        {
            Calls.Add("STATUS");
            return Task.CompletedTask;
        }

        public void Dispose()
        {
        }
    }

    private sealed class FakeDataplane : IDataplane
    {
        public List<string> Calls { get; } = [];

        public IPreparedPod Prepare(PluginContext ctx, PodFamilies families, Action<string> afterStep)
        {
            Calls.Add("setup");
            afterStep("veth");
            return new FakePod(ctx);
        }

        private sealed class FakePod(PluginContext ctx) : IPreparedPod
        {
            public List<CniInterface> Complete(IReadOnlyList<CniIp> ips, Action<string> afterStep) =>
                [new CniInterface("calitest", "ee:ee:ee:ee:ee:ee", null), new CniInterface(ctx.Env.IfName, "02:00:00:00:00:01", ctx.Env.Netns)];

            public void Dispose()
            {
            }
        }

        public void Teardown(PluginContext ctx) => Calls.Add("teardown");

        public void Check(PluginContext ctx, CniResult prev) => Calls.Add("check");
    }

    private readonly FakeIpam ipam = new();
    private readonly FakeDataplane dataplane = new();

    public void Dispose() => ipam.Dispose();

    private static Dictionary<string, string> Env(string command, params (string K, string V)[] extra)
    {
        var env = new Dictionary<string, string>
        {
            ["CNI_COMMAND"] = command,
            ["CNI_CONTAINERID"] = "abc123",
            ["CNI_NETNS"] = "/var/run/netns/pod",
            ["CNI_IFNAME"] = "eth0",
            ["CNI_PATH"] = "/opt/cni/bin",
        };
        foreach (var (k, v) in extra)
        {
            if (v is null)
            {
                env.Remove(k);
            }
            else
            {
                env[k] = v;
            }
        }

        return env;
    }

    private static string Conf(string version = "1.1.0", string extra = "") =>
        $$"""{"cniVersion":"{{version}}","name":"k8s-pod-network","type":"calicosharp","nodename":"node1","ipam":{"type":"calicosharp-ipam","assign_ipv6":"true"}{{extra}}}""";

    private Task<(int Code, JsonElement Out)> Run(Dictionary<string, string> env, string stdin, PluginKind kind = PluginKind.Network, Action<string>? afterStep = null) =>
        PluginHarness.RunAsync(kind, env, stdin, new PluginOptions { Ipam = _ => ipam, Dataplane = () => dataplane, AfterStep = afterStep });

    [Theory]
    [InlineData(null, "CNI_COMMAND is not set")]
    [InlineData("BOGUS", "unknown CNI_COMMAND 'BOGUS'")]
    public async Task Bad_command_is_error_4(string? command, string message)
    {
        var env = Env("ADD");
        if (command is null)
        {
            env.Remove("CNI_COMMAND");
        }
        else
        {
            env["CNI_COMMAND"] = command;
        }

        var (code, o) = await Run(env, Conf());
        Assert.Equal(1, code);
        Assert.Equal(4, o.GetProperty("code").GetInt32());
        Assert.Equal(message, o.GetProperty("msg").GetString());
    }

    [Theory]
    [InlineData("ADD", "CNI_CONTAINERID", null, "CNI_CONTAINERID is not set")]
    [InlineData("ADD", "CNI_NETNS", null, "CNI_NETNS is not set")]
    [InlineData("ADD", "CNI_IFNAME", null, "CNI_IFNAME is not set")]
    [InlineData("DEL", "CNI_IFNAME", null, "CNI_IFNAME is not set")]
    [InlineData("ADD", "CNI_CONTAINERID", "-bad/id", "invalid CNI_CONTAINERID '-bad/id'")]
    [InlineData("ADD", "CNI_IFNAME", "much-too-long-ifname", "invalid CNI_IFNAME 'much-too-long-ifname'")]
    [InlineData("ADD", "CNI_ARGS", "K8S_POD_NAME", "CNI_ARGS entry 'K8S_POD_NAME' is not KEY=VALUE")]
    public async Task Missing_or_malformed_variables_are_error_4(string command, string name, string? value, string message)
    {
        var (code, o) = await Run(Env(command, (name, value!)), Conf());
        Assert.Equal(1, code);
        Assert.Equal(4, o.GetProperty("code").GetInt32());
        Assert.Equal(message, o.GetProperty("msg").GetString());
        Assert.Equal("1.1.0", o.GetProperty("cniVersion").GetString());
        Assert.Empty(ipam.Calls);
    }

    [Fact]
    public async Task DEL_without_netns_is_fine()
    {
        var (code, _) = await Run(Env("DEL", ("CNI_NETNS", null!)), Conf());
        Assert.Equal(0, code);
        Assert.Equal(["teardown"], dataplane.Calls);
        Assert.Equal(["DEL"], ipam.Calls);
    }

    [Theory]
    [InlineData("not json", 6, "not valid JSON")]
    [InlineData("[1,2]", 6, "not a JSON object")]
    [InlineData("""{"name":"n","type":"calicosharp","ipam":{"type":"x"}}""", 7, "cniVersion is missing")]
    [InlineData("""{"cniVersion":"0.2.0","name":"n","type":"calicosharp","ipam":{"type":"x"}}""", 1, "CNI version 0.2.0 is not supported")]
    [InlineData("""{"cniVersion":"1.0.0","type":"calicosharp","ipam":{"type":"x"}}""", 7, "name is missing")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp"}""", 7, "the ipam section is missing")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp","mtu":20,"ipam":{"type":"x"}}""", 7, "mtu 20 is not a number from 68 to 65535")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp","ipam":{"type":"calicosharp-ipam","assign_ipv4":"maybe"}}""", 7, "ipam.assign_ipv4 must be true or false")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp","ipam":{"type":"calicosharp-ipam","assign_ipv4":false}}""", 7, "assign_ipv4 and assign_ipv6 are both false")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp","ipam":{"type":"calicosharp-ipam","ipv4_pools":"p"}}""", 7, "ipam.ipv4_pools must be a list")]
    [InlineData("""{"cniVersion":"1.0.0","name":"n","type":"calicosharp","ipam":{"type":"../../bin/sh"}}""", 7, "is not a plugin name")]
    public async Task Bad_config_is_a_decoding_version_or_config_error(string stdin, int expected, string message)
    {
        var (code, o) = await Run(Env("ADD"), stdin);
        Assert.Equal(1, code);
        Assert.Equal(expected, o.GetProperty("code").GetInt32());
        Assert.Contains(message, o.GetProperty("msg").GetString()! + (o.TryGetProperty("details", out var d) ? d.GetString() : string.Empty), StringComparison.Ordinal);
        Assert.Empty(ipam.Calls);
    }

    [Theory]
    [MemberData(nameof(PluginHarness.Versions), MemberType = typeof(PluginHarness))]
    public async Task ADD_result_has_the_shape_of_the_asked_version(string version)
    {
        var (code, o) = await Run(Env("ADD", ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1")), Conf(version));
        Assert.Equal(0, code);
        Assert.Equal(version, o.GetProperty("cniVersion").GetString());
        var ips = o.GetProperty("ips").EnumerateArray().ToList();
        Assert.Equal("10.244.1.7/32", ips[0].GetProperty("address").GetString());
        Assert.Equal("fd00::7/128", ips[1].GetProperty("address").GetString());
        Assert.Equal(1, ips[0].GetProperty("interface").GetInt32());
        bool legacy = version.StartsWith("0.", StringComparison.Ordinal);
        Assert.Equal(legacy, ips[0].TryGetProperty("version", out var v));
        if (legacy)
        {
            Assert.Equal("4", v.GetString());
            Assert.Equal("6", ips[1].GetProperty("version").GetString());
        }

        Assert.Equal("/var/run/netns/pod", o.GetProperty("interfaces")[1].GetProperty("sandbox").GetString());
        Assert.Equal("169.254.1.1", o.GetProperty("routes")[0].GetProperty("gw").GetString());
        Assert.Equal(JsonValueKind.Object, o.GetProperty("dns").ValueKind);
        Assert.Equal(["ADD node1"], ipam.Calls);
    }

    [Fact]
    public async Task A_failed_dataplane_step_undoes_the_dataplane_and_the_ipam()
    {
        var (code, o) = await Run(Env("ADD"), Conf(), afterStep: s => throw new CniException(CniCode.DataplaneFailure, $"injected after {s}"));
        Assert.Equal(1, code);
        Assert.Equal(102, o.GetProperty("code").GetInt32());
        Assert.Equal("injected after ipam", o.GetProperty("msg").GetString());
        Assert.Equal(["teardown"], dataplane.Calls);
        Assert.Equal(["ADD node1", "DEL"], ipam.Calls);
    }

    [Fact]
    public async Task Ipam_errors_keep_their_codes()
    {
        ipam.FailAdd = new CniException(CniCode.PoolExhausted, "no free IPv4 address for node node1 in pools p (10.0.0.0/24)");
        var (code, o) = await Run(Env("ADD"), Conf());
        Assert.Equal(1, code);
        Assert.Equal(100, o.GetProperty("code").GetInt32());
        Assert.Empty(dataplane.Calls);
    }

    [Theory]
    [InlineData("CHECK", "0.3.1", false)]
    [InlineData("CHECK", "0.4.0", true)]
    [InlineData("GC", "1.0.0", false)]
    [InlineData("GC", "1.1.0", true)]
    [InlineData("STATUS", "1.0.0", false)]
    [InlineData("STATUS", "1.1.0", true)]
    public async Task Commands_are_gated_by_version(string command, string version, bool allowed)
    {
        var prev = ""","prevResult":{"ips":[{"address":"10.244.1.7/32"}]},"cni.dev/valid-attachments":[{"containerID":"abc123","ifname":"eth0"}]""";
        var (code, o) = await Run(Env(command), Conf(version, prev));
        Assert.Equal(allowed ? 0 : 1, code);
        if (!allowed)
        {
            Assert.Equal(1, o.GetProperty("code").GetInt32());
            Assert.Contains($"{command} is not defined for CNI version {version}", o.GetProperty("msg").GetString(), StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task CHECK_without_prevResult_is_a_config_error()
    {
        var (code, o) = await Run(Env("CHECK"), Conf());
        Assert.Equal(1, code);
        Assert.Equal(7, o.GetProperty("code").GetInt32());
    }

    [Theory]
    [InlineData("cni.dev/valid-attachments")]
    [InlineData("cni.dev/attachments")]
    public async Task GC_passes_the_valid_attachments(string key)
    {
        var (code, _) = await Run(Env("GC"), Conf("1.1.0", $$""","{{key}}":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"eth0"}]"""));
        Assert.Equal(0, code);
        Assert.Equal(["GC c1,c2"], ipam.Calls);
    }

    [Fact]
    public async Task GC_without_attachments_releases_nothing()
    {
        var (code, _) = await Run(Env("GC"), Conf("1.1.0"));
        Assert.Equal(0, code);
        Assert.Empty(ipam.Calls);
    }

    [Fact]
    public async Task VERSION_lists_the_supported_versions()
    {
        var (code, o) = await Run(new Dictionary<string, string> { ["CNI_COMMAND"] = "VERSION" }, """{"cniVersion":"0.4.0"}""");
        Assert.Equal(0, code);
        Assert.Equal("0.4.0", o.GetProperty("cniVersion").GetString());
        Assert.Equal(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"], o.GetProperty("supportedVersions").EnumerateArray().Select(x => x.GetString()));
    }

    [Fact]
    public async Task The_ipam_plugin_returns_addresses_without_interfaces()
    {
        var (code, o) = await Run(Env("ADD"), Conf("1.0.0"), PluginKind.Ipam);
        Assert.Equal(0, code);
        Assert.False(o.TryGetProperty("interfaces", out _));
        Assert.Equal(2, o.GetProperty("ips").GetArrayLength());
        Assert.Empty(dataplane.Calls);
    }

    [Fact]
    public void Host_veth_names_follow_calico()
    {
        var env = CniEnv.Parse(Env("ADD", ("CNI_ARGS", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx")));
        // printf 'default.nginx' | sha1sum: "cali" + its first 11 hex digits.
        Assert.Equal("calic440f455693", LinuxDataplane.HostVethName(env));
        Assert.Equal("caliabc123", LinuxDataplane.HostVethName(CniEnv.Parse(Env("ADD"))));
    }
}
