using System.Text;
using CalicoSharp.Bgp.Bfd;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>Calico Enterprise's BFDConfiguration read from etcd: good records apply, each bad one is reported by its
/// key and reason and skipped; which peers get BFD, and with which timers.</summary>
public sealed class BfdConfigTests : IDisposable
{
    private const string Prefix = "/calico/resources/v3/projectcalico.org/bfdconfigurations/";
    private readonly MemoryKvStore store = new();

    public void Dispose() => store.Dispose();

    private void Put(string name, string spec) => store.Put(Prefix + name, Encoding.UTF8.GetBytes(
        "{\"kind\":\"BFDConfiguration\",\"apiVersion\":\"projectcalico.org/v3\",\"metadata\":{\"name\":\"" + name + "\"},\"spec\":" + spec.Replace('\'', '"') + "}"));

    private Task<ClusterSnapshot> ReadAsync() => new EtcdClusterSource(store, "node1").ReadAsync(CancellationToken.None);

    [Fact]
    public async Task Calico_enterprise_sample_reads_with_its_timers()
    {
        Put("default", "{'nodeSelector':'all()','interfaces':[{'matchPattern':'*','minimumRecvInterval':'10ms','minimumSendInterval':'100ms','idleSendInterval':'1m','multiplier':5}]}");
        ClusterSnapshot c = await ReadAsync();
        Assert.Empty(c.Problems);
        BfdInterface i = Assert.Single(Assert.Single(c.BfdConfigurations).Interfaces);
        Assert.Equal("*", i.MatchPattern);
        Assert.Equal(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1), 5), i.Timers);
    }

    [Fact]
    public async Task Missing_fields_take_calico_enterprises_defaults()
    {
        Put("default", "{'interfaces':[{'matchPattern':'eth0'}]}");
        ClusterSnapshot c = await ReadAsync();
        Assert.Equal(BfdTimers.Default, c.BfdConfigurations[0].Interfaces[0].Timers);
        Assert.True(c.BfdConfigurations[0].SelectsNode(new Dictionary<string, string>()));
    }

    [Theory]
    [InlineData("{'interfaces':[{'matchPattern':'*','idleSendInterval':'500ms'}]}", "interfaces[0].idleSendInterval 500ms: must be at least 1s (RFC 5880 §6.8.3")]
    [InlineData("{'interfaces':[{'matchPattern':'*','multiplier':0}]}", "interfaces[0].multiplier: 0 (must be 1-255)")]
    [InlineData("{'interfaces':[{'matchPattern':'*','multiplier':300}]}", "interfaces[0].multiplier: 300 (must be 1-255)")]
    [InlineData("{'interfaces':[{'minimumSendInterval':'100ms'}]}", "interfaces[0]: matchPattern is missing")]
    [InlineData("{'interfaces':[{'matchPattern':'*','minimumSendInterval':100}]}", "interfaces[0].minimumSendInterval: not a duration string")]
    [InlineData("{'interfaces':[{'matchPattern':'*','minimumRecvInterval':'fast'}]}", "interfaces[0].minimumRecvInterval: 'fast' is not a duration")]
    [InlineData("{'interfaces':[{'matchPattern':'*','minimumRecvInterval':'0s'}]}", "interfaces[0].minimumRecvInterval 0ms: must be between 1ms")]
    [InlineData("{'nodeSelector':'rack ==','interfaces':[]}", "nodeSelector 'rack =='")]
    [InlineData("{'interfaces':{}}", "interfaces: not a list")]
    public async Task A_bad_record_is_reported_by_key_and_reason_and_the_others_apply(string spec, string reason)
    {
        Put("bad", spec);
        Put("good", "{'interfaces':[{'matchPattern':'*'}]}");
        ClusterSnapshot c = await ReadAsync();
        ResourceProblem p = Assert.Single(c.Problems);
        Assert.Equal(Prefix + "bad", p.Key);
        Assert.Contains(reason, p.Reason, StringComparison.Ordinal);
        Assert.Equal("good", Assert.Single(c.BfdConfigurations).Name);
    }

    private static BfdConfigResource Config(string name, string? selector, params (string Pattern, int Ms)[] interfaces) =>
        new(name, selector is null ? null : Selector.Parse(selector), selector,
            [.. interfaces.Select(i => new BfdInterface(i.Pattern, BfdTimers.Default with { MinTx = TimeSpan.FromMilliseconds(i.Ms) }))]);

    [Fact]
    public void Which_peers_get_bfd_and_with_which_timers()
    {
        var rack1 = new Dictionary<string, string> { ["rack"] = "r1" };
        BfdConfigResource[] configs = [Config("b", "rack == 'r1'", ("eth*", 300)), Config("a", "rack == 'r2'", ("*", 100)), Config("c", null, ("ens3", 50))];
        Assert.Equal(300, BfdPeers.Resolve(null, "eth1", configs, rack1)!.Value.Timers.MinTx.TotalMilliseconds);
        Assert.Contains("bfdconfiguration b, interface eth1", BfdPeers.Resolve(null, "eth1", configs, rack1)!.Value.Source, StringComparison.Ordinal);
        // "a" comes first by name but does not select this node; "c" matches ens3 only.
        Assert.Equal(50, BfdPeers.Resolve(null, "ens3", configs, rack1)!.Value.Timers.MinTx.TotalMilliseconds);
        Assert.Null(BfdPeers.Resolve(null, "wlan0", configs, rack1));
        Assert.Null(BfdPeers.Resolve(null, null, configs, rack1));
        // The file's switch: off wins over etcd, on without a matching record takes the defaults.
        Assert.Null(BfdPeers.Resolve(false, "eth1", configs, rack1));
        Assert.Equal(BfdTimers.Default, BfdPeers.Resolve(true, "wlan0", configs, rack1)!.Value.Timers);
        Assert.Equal(300, BfdPeers.Resolve(true, "eth1", configs, rack1)!.Value.Timers.MinTx.TotalMilliseconds);
    }

    [Theory]
    [InlineData("*", "eth0", true)]
    [InlineData("eth*", "eth0", true)]
    [InlineData("eth*", "veth0", false)]
    [InlineData("eth0", "eth0", true)]
    [InlineData("eth0", "eth01", false)]
    [InlineData("cali*x", "cali12x", true)]
    [InlineData("cali*x", "cali12y", false)]
    public void Match_patterns_are_names_prefixes_or_stars(string pattern, string name, bool matches)
    {
        Assert.Equal(matches, new BfdInterface(pattern, BfdTimers.Default).Matches(name));
    }

    [Fact]
    public void The_config_file_takes_a_per_peer_bfd_switch()
    {
        DaemonConfig c = DaemonConfig.Parse("""{"peers":[{"peerIP":"10.0.0.1","asNumber":65001,"bfd":true},{"peerIP":"10.0.0.2","asNumber":65001,"bfd":false},{"peerIP":"10.0.0.3","asNumber":65001}]}""");
        Assert.Equal([true, false, null], c.Peers.Select(p => p.Bfd));
    }
}
