using System.Net;
using System.Text;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>bgpd following a datastore whose records are broken in every way found in the field: each bad record
/// is reported by its key and skipped, everything else applies, the loop keeps following, and a refused reload
/// changes nothing. The daemon runs against the in-memory store with no kernel; peers are on loopback
/// addresses (nothing leaves this machine).</summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification = "xunit disposes the fields through IAsyncLifetime.DisposeAsync")]
public sealed class DaemonConfigTests : IAsyncLifetime
{
    private const string Peers = "/calico/resources/v3/projectcalico.org/bgppeers/";
    private readonly MemoryKvStore store = new();
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-daemon-").FullName;
    private readonly List<string> logLines = [];
    private Daemon? daemon;

    public Task InitializeAsync() => Task.CompletedTask;

    // IAsyncLifetime, not IAsyncDisposable: xunit 2 never calls DisposeAsync() of IAsyncDisposable on a test class, so
    // every daemon and temp directory stayed behind.
    public async Task DisposeAsync()
    {
        if (daemon is not null)
        {
            await daemon.DisposeAsync();
        }
        store.Dispose();
        Directory.Delete(dir, true);
    }

    private void Put(string key, string json) => store.Put(key, Encoding.UTF8.GetBytes(json));

    /// <summary>A bgppeers record as Calico writes it; the spec's members in JSON with ' for ".</summary>
    private void PutPeer(string name, string spec) =>
        Put(Peers + name, "{\"kind\":\"BGPPeer\",\"apiVersion\":\"projectcalico.org/v3\",\"metadata\":{\"name\":\"" + name + "\"},\"spec\":{" + spec.Replace('\'', '"') + "}}");

    /// <summary>The default bgpconfiguration; <paramref name="extra"/> adds members to its spec (JSON with ' for ").</summary>
    private void PutConfig(string extra = "", uint asNumber = 64512, int listenPort = 0) =>
        Put("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            """{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":"""
            + $"{asNumber},\"nodeToNodeMeshEnabled\":false,\"listenPort\":{listenPort}" + (extra.Length > 0 ? "," + extra.Replace('\'', '"') : "") + "}}");

    private void PutPool(string name, string cidr, bool disableBgpExport = false) =>
        Put("/calico/resources/v3/projectcalico.org/ippools/" + name,
            "{\"kind\":\"IPPool\",\"apiVersion\":\"projectcalico.org/v3\",\"metadata\":{\"name\":\"" + name + "\"},\"spec\":{\"cidr\":\"" + cidr + "\""
            + (disableBgpExport ? ",\"disableBGPExport\":true" : "") + "}}");

    /// <summary>A block confirmed affine to node1.</summary>
    private void PutBlock(string cidr) => Put($"/calico/ipam/v2/host/node1/ipv4/block/{cidr.Replace('/', '-')}", """{"state":"confirmed","deleted":false}""");

    private Task<PathAttributes?> LocalAttributesAsync(string prefix) =>
        daemon!.Speaker.InvokeAsync(() => daemon.Speaker.Rib.Find(Prefix.Parse(prefix))?.Best is { IsLocal: true } p ? p.Attributes : null);

    /// <summary>Starts node1's daemon; with <paramref name="table"/>, it programs that kernel table (else none), on
    /// <paramref name="time"/> (else the system clock).</summary>
    private async Task<Daemon> StartAsync(string? configFile = null, int? peerMaxPrefixes = null, string configExtra = "", IRouteTable? table = null, TimeProvider? time = null,
        string? ipv4 = "127.0.0.1/8", TimeSpan? reconcile = null)
    {
        PutConfig(configExtra);
        daemon = new Daemon(new DaemonOptions
        {
            NodeName = "node1",
            Ipv4Address = ipv4,
            Store = store,
            Kernel = table is not null,
            RouteTable = table,
            Time = time,
            ConfigFile = configFile,
            PeerMaxPrefixes = peerMaxPrefixes,
            PollInterval = TimeSpan.FromMilliseconds(50),
            ReconcileInterval = reconcile ?? TimeSpan.FromSeconds(10),
            StateDirectory = dir,
        }, (level, line) =>
        {
            lock (logLines)
            {
                logLines.Add($"{level} {line}");
            }
        });
        await daemon.StartAsync();
        return daemon;
    }

    private static async Task Until(Func<Task<bool>> condition, string what, double seconds = 10)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting until " + what);
            await Task.Delay(20);
        }
    }

    private Task<PeerConfig?> PeerAsync(string address) => daemon!.Speaker.InvokeAsync(() => daemon.Speaker.FindPeer(IPAddress.Parse(address))?.Config);

    private Task<IReadOnlyList<ResourceProblem>> ProblemsAsync() => daemon!.Speaker.InvokeAsync(() => daemon.Problems);

    [Fact]
    public async Task Blocks_of_a_pool_with_disableBGPExport_are_not_advertised_and_the_flag_applies_live()
    {
        PutPool("default", "10.244.0.0/16");
        PutPool("private", "10.245.0.0/16", disableBgpExport: true);
        PutBlock("10.244.1.0/26");
        PutBlock("10.245.1.0/26");
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        await StartAsync();
        await using BgpTester tor = await BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, daemon!.ListenEndpoint!.Port), IPAddress.Parse("127.0.0.10"), 65010);
        await Until(() => Task.FromResult(tor.Announced >= 1), "the exported block");
        await Task.Delay(500);
        Assert.Equal(1, tor.Announced);
        // Still this node's block: originated (its blackhole is installed), only not advertised.
        Assert.NotNull(await daemon.Speaker.InvokeAsync(() => daemon.Speaker.Rib.Find(Prefix.Parse("10.245.1.0/26"))?.Best));
        lock (logLines)
        {
            Assert.Contains(logLines, l => l.Contains("ippool 10.245.0.0/16: disableBGPExport", StringComparison.Ordinal));
        }

        // Live, with no session reset: the flag off announces the block, on again withdraws it.
        PutPool("private", "10.245.0.0/16");
        await Until(() => Task.FromResult(tor.Announced >= 2), "the block announced once the flag is off");
        PutPool("private", "10.245.0.0/16", disableBgpExport: true);
        await Until(() => Task.FromResult(tor.Withdrawn >= 1), "the block withdrawn once the flag is on again");
        Assert.False(tor.Closed);
    }

    [Fact]
    public async Task Communities_of_prefixAdvertisements_go_on_the_advertised_blocks_and_apply_live()
    {
        PutPool("default", "10.244.0.0/16");
        PutBlock("10.244.1.0/26");
        PutBlock("10.246.1.0/26");
        const string Communities = "'communities':[{'name':'rack','value':'65010:100'},{'name':'big','value':'65010:1:2'}]";
        await StartAsync(configExtra: Communities + ",'prefixAdvertisements':["
            + "{'cidr':'10.244.0.0/16','communities':['rack','65010:7']},"
            + "{'cidr':'10.244.1.0/26','communities':['big','rack']},"
            + "{'cidr':'10.246.0.0/16','communities':['no-such-name']}]");
        await Until(async () => await LocalAttributesAsync("10.244.1.0/26") is { Communities.Length: > 0 }, "the block with its communities");
        PathAttributes a = (await LocalAttributesAsync("10.244.1.0/26"))!;
        Assert.Equal([(65010u << 16) | 100, (65010u << 16) | 7], a.Communities);
        Assert.Equal([new LargeCommunity(65010, 1, 2)], a.LargeCommunities);
        // The entry naming an unknown community is reported and left out; its block goes out plain.
        Assert.Empty((await LocalAttributesAsync("10.246.1.0/26"))?.Communities ?? [1u]);
        Assert.Contains("'no-such-name' is neither a name from communities nor a value", (await ProblemsAsync()).Single().Reason, StringComparison.Ordinal);

        // A changed value applies at the next read, to what is already announced.
        PutConfig(Communities.Replace("65010:100", "65010:200", StringComparison.Ordinal) + ",'prefixAdvertisements':[{'cidr':'10.244.0.0/16','communities':['rack']}]");
        await Until(async () => (await LocalAttributesAsync("10.244.1.0/26"))?.Communities is [0xFDF200C8u], "the new community");
        Assert.Empty((await LocalAttributesAsync("10.244.1.0/26"))!.LargeCommunities);
        Assert.Empty(await ProblemsAsync());
    }

    [Theory]
    [InlineData("65010:100", true)]
    [InlineData("65535:65535", true)]
    [InlineData("4200000000:1:2", true)]
    [InlineData("65536:1", false)]
    [InlineData("1:2:3:4", false)]
    [InlineData("-1:5", false)]
    [InlineData("rack", false)]
    [InlineData("", false)]
    public void Community_values_are_checked(string value, bool ok)
    {
        var pa = new PrefixAdvertisement("10.0.0.0/8", [value]);
        if (ok)
        {
            CommunityRule r = CommunityRule.Resolve(pa, new Dictionary<string, string>());
            Assert.Equal(1, r.Standard.Length + r.Large.Length);
        }
        else
        {
            ConfigException e = Assert.Throws<ConfigException>(() => CommunityRule.Resolve(pa, new Dictionary<string, string>()));
            Assert.Contains($"community '{value}'", e.Message, StringComparison.Ordinal);
        }
    }

    private static int FreePort()
    {
        var l = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    private bool Logged(string text)
    {
        lock (logLines)
        {
            return logLines.Exists(l => l.Contains(text, StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task Listen_port_as_number_router_id_and_cluster_id_apply_live_resetting_only_the_sessions_that_need_it()
    {
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        string file = Path.Combine(dir, "bgpd.json");
        File.WriteAllText(file, """{"routerId":"127.0.0.1"}""");
        await StartAsync(file);
        int port1 = daemon!.ListenEndpoint!.Port;
        Task<BgpTester> Tor(int port) => BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), IPAddress.Parse("127.0.0.10"), 65010);
        await using BgpTester first = await Tor(port1);

        // listenPort: bgpd listens on the new port at once, the established session stays.
        int port2 = FreePort();
        PutConfig(listenPort: port2);
        await Until(() => Task.FromResult(daemon.ListenEndpoint!.Port == port2), "the new listen port");
        using (var probe = new System.Net.Sockets.TcpClient())
        {
            await probe.ConnectAsync(IPAddress.Loopback, port2);
        }
        await Assert.ThrowsAnyAsync<System.Net.Sockets.SocketException>(async () =>
        {
            using var old = new System.Net.Sockets.TcpClient();
            await old.ConnectAsync(IPAddress.Loopback, port1);
        });
        Assert.False(first.Closed);
        Assert.True(Logged($"now listening on [::]:{port2}"));

        // asNumber: it is in the OPEN, so the session is reset with Cease / Other Configuration Change.
        PutConfig(asNumber: 64513, listenPort: port2);
        await Until(() => Task.FromResult(first.Closed), "the session reset by the AS change");
        Assert.Equal((ErrorCode.Cease, Subcode.OtherConfigurationChange), (first.Notification!.Code, first.Notification.Subcode));
        Assert.Equal(64513u, daemon.LocalAs);
        Assert.True(Logged("AS 64512 -> 64513: resetting 1 sessions (tor)"));

        // The route reflector cluster id is in no OPEN: nothing resets.
        await using BgpTester second = await Tor(port2);
        Put("/calico/resources/v3/projectcalico.org/nodes/node1",
            """{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node1"},"spec":{"bgp":{"ipv4Address":"127.0.0.1/8","routeReflectorClusterID":"1.2.3.4"}}}""");
        await Until(() => Task.FromResult(Logged("route reflector cluster id none -> 1.2.3.4: no session needs a reset")), "the cluster id applied");
        await Task.Delay(300);
        Assert.False(second.Closed);

        // routerId (the file, reloaded): in every OPEN, so the session resets.
        File.WriteAllText(file, """{"routerId":"127.0.0.2"}""");
        await daemon.ReloadAsync();
        await Until(() => Task.FromResult(second.Closed), "the session reset by the router id change");
        Assert.True(Logged("router id 127.0.0.1 -> 127.0.0.2: resetting 1 sessions (tor)"));
        Assert.Equal(SpeakerConfig.ParseRouterId("127.0.0.2"), daemon.Speaker.Config.RouterId);

        // A bad router id in a reload is refused whole.
        File.WriteAllText(file, """{"routerId":"banana"}""");
        ConfigException e = await Assert.ThrowsAsync<ConfigException>(daemon.ReloadAsync);
        Assert.Contains("routerId: router id 'banana' is not an IPv4 address", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_new_max_restart_time_applies_without_a_session_reset_and_a_new_keepalive_time_resets_only_that_peer()
    {
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010,'maxRestartTime':'45s'");
        PutPeer("other", "'peerIP':'127.0.0.11','asNumber':65011");
        await StartAsync();
        var at = new IPEndPoint(IPAddress.Loopback, daemon!.ListenEndpoint!.Port);
        await using BgpTester tor = await BgpTester.ConnectAsync(at, IPAddress.Parse("127.0.0.10"), 65010);
        await using BgpTester other = await BgpTester.ConnectAsync(at, IPAddress.Parse("127.0.0.11"), 65011);
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010,'maxRestartTime':'30s'");
        await Until(async () => (await PeerAsync("127.0.0.10"))?.MaxRestartTime == TimeSpan.FromSeconds(30), "the new cap");
        Assert.True(Logged("peer tor: maxRestartTime 45 s, not a route reflector client, next hop self off -> maxRestartTime 30 s, not a route reflector client, next hop self off, applied without a session reset"));
        await Task.Delay(300);
        Assert.False(tor.Closed);
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010,'maxRestartTime':'30s','keepaliveTime':'20s'");
        await Until(() => Task.FromResult(tor.Closed), "the reset for the new keepalive time");
        Assert.False(other.Closed);
    }

    [Fact]
    public async Task After_a_restart_old_kernel_routes_stay_until_the_restart_time_ends_on_the_daemons_clock()
    {
        var table = new FakeRouteTable();
        table.Routes["10.244.9.0/26"] = FakeRouteTable.Ours("10.244.9.0/26", "10.0.0.9");
        var clock = new Microsoft.Extensions.Time.Testing.FakeTimeProvider(DateTimeOffset.UtcNow);
        // A peer that never comes up, so no End-of-RIB ever releases the old routes: only the restart time does.
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        await StartAsync(table: table, time: clock);
        Assert.True(daemon!.Speaker.Config.Restarting);
        Assert.True(daemon.Kernel!.KeepingStale);
        clock.Advance(TimeSpan.FromSeconds(120) - TimeSpan.FromTicks(1));
        await Task.Delay(300); // several polls
        lock (table.Routes)
        {
            Assert.True(table.Routes.ContainsKey("10.244.9.0/26"));
        }
        clock.Advance(TimeSpan.FromTicks(1));
        await Until(() => Task.FromResult(!daemon.Kernel.KeepingStale), "the restart time over");
        await Until(() =>
        {
            lock (table.Routes)
            {
                return Task.FromResult(!table.Routes.ContainsKey("10.244.9.0/26"));
            }
        }, "the old route removed");
        Assert.True(Logged("kernel: restart time over, removing routes no peer sent again (IPv4)"));
    }

    [Fact]
    public async Task A_bgppeers_max_restart_time_caps_how_long_its_routes_are_kept()
    {
        PutPeer("capped", "'peerIP':'127.0.0.31','asNumber':65031,'maxRestartTime':'45s'");
        PutPeer("uncapped", "'peerIP':'127.0.0.32','asNumber':65032");
        PutPeer("bad-restart", "'peerIP':'127.0.0.33','asNumber':65033,'maxRestartTime':'soon'");
        await StartAsync();
        Assert.Equal(TimeSpan.FromSeconds(45), (await PeerAsync("127.0.0.31"))?.MaxRestartTime);
        Assert.Null((await PeerAsync("127.0.0.32"))?.MaxRestartTime);
        Assert.Null(await PeerAsync("127.0.0.33"));
        Assert.Contains("maxRestartTime: 'soon' is not a duration", (await ProblemsAsync()).Single(p => p.Key == Peers + "bad-restart").Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_bad_record_is_reported_by_its_key_and_skipped_and_the_rest_applies()
    {
        PutPeer("with-port", "'peerIP':'127.0.0.9:1790','asNumber':65009");
        PutPeer("v6-with-port", "'peerIP':'[::1]:1791','asNumber':65011");
        PutPeer("banana", "'peerIP':'127.0.0.21','asNumber':65021,'keepaliveTime':'banana'");
        PutPeer("bad-selector", "'peerIP':'127.0.0.22','asNumber':65022,'nodeSelector':'rack == '");
        PutPeer("keepalive-too-long", "'peerIP':'127.0.0.24','asNumber':65024,'keepaliveTime':'100000s'");
        PutPeer("ttl", "'peerIP':'127.0.0.25','asNumber':65025,'ttlSecurity':300");
        PutPeer("long-password", $"'peerIP':'127.0.0.26','asNumber':65026,'password':'{new string('é', 50)}'");
        PutPeer("no-as", "'peerIP':'127.0.0.27'");
        PutPeer("bad-ip", "'peerIP':'127.0.0.256','asNumber':65028");
        Put(Peers + "not-json", "{\"spec\":");
        Put(Peers + "a-string", "\"hello\"");
        Put(Peers + "spec-is-a-number", """{"spec":7}""");
        Put("/calico/resources/v3/projectcalico.org/ippools/bad", """{"spec":{"cidr":"10.0.0.0/99"}}""");
        PutPeer("good", "'peerIP':'127.0.0.10','asNumber':65010");

        await StartAsync();

        var withPort = await PeerAsync("127.0.0.9");
        Assert.NotNull(withPort);
        Assert.Equal(1790, withPort.Port);
        Assert.Equal(1791, (await PeerAsync("::1"))?.Port);
        Assert.Equal(179, (await PeerAsync("127.0.0.10"))?.Port);
        var problems = (await ProblemsAsync()).ToDictionary(p => p.Key, p => p.Reason);
        Assert.Contains("'banana' is not a duration", problems[Peers + "banana"], StringComparison.Ordinal);
        Assert.Contains("rack == ", problems[Peers + "bad-selector"], StringComparison.Ordinal);
        Assert.Contains("must be 0-65535 s", problems[Peers + "keepalive-too-long"], StringComparison.Ordinal);
        Assert.Contains("ttlSecurity 300", problems[Peers + "ttl"], StringComparison.Ordinal);
        Assert.Contains("at most 80 bytes", problems[Peers + "long-password"], StringComparison.Ordinal);
        Assert.Contains("without asNumber", problems[Peers + "no-as"], StringComparison.Ordinal);
        Assert.Contains("not an IP address", problems[Peers + "bad-ip"], StringComparison.Ordinal);
        Assert.StartsWith("not JSON", problems[Peers + "not-json"], StringComparison.Ordinal);
        Assert.Contains("not a JSON object", problems[Peers + "a-string"], StringComparison.Ordinal);
        Assert.Contains("without spec", problems[Peers + "spec-is-a-number"], StringComparison.Ordinal);
        Assert.Contains("10.0.0.0/99", problems["/calico/resources/v3/projectcalico.org/ippools/bad"], StringComparison.Ordinal);
        Assert.Equal(11, problems.Count);
        foreach (string addr in new[] { "127.0.0.21", "127.0.0.22", "127.0.0.24", "127.0.0.25", "127.0.0.26", "127.0.0.27" })
        {
            Assert.Null(await PeerAsync(addr));
        }

        // Each is logged once, with its key, however often the loop applies.
        await Task.Delay(300);
        lock (logLines)
        {
            Assert.Single(logLines, l => l.Contains(Peers + "banana", StringComparison.Ordinal));
        }

        // The loop still follows etcd: a new peer applies, a fixed record applies and leaves the list.
        PutPeer("later", "'peerIP':'127.0.0.11','asNumber':65012");
        PutPeer("banana", "'peerIP':'127.0.0.21','asNumber':65021,'keepaliveTime':'20s'");
        await Until(async () => await PeerAsync("127.0.0.11") is not null, "the later peer is configured");
        await Until(async () => (await PeerAsync("127.0.0.21"))?.KeepaliveTime == 20, "the fixed peer is configured");
        Assert.DoesNotContain(await ProblemsAsync(), p => p.Key == Peers + "banana");
    }

    [Fact]
    public async Task A_bgppeers_sourceAddress_None_leaves_the_source_to_the_kernel_and_UseNodeIP_binds_the_node_address()
    {
        // Calico's two values; without the field the node's address is the source, as with "UseNodeIP".
        PutPeer("none", "'peerIP':'127.0.0.31','asNumber':65031,'sourceAddress':'None'");
        PutPeer("node-ip", "'peerIP':'127.0.0.32','asNumber':65032,'sourceAddress':'UseNodeIP'");
        PutPeer("default", "'peerIP':'127.0.0.33','asNumber':65033");
        PutPeer("nonsense", "'peerIP':'127.0.0.34','asNumber':65034,'sourceAddress':'Sometimes'");

        await StartAsync();

        PeerConfig? none = await PeerAsync("127.0.0.31");
        Assert.NotNull(none);
        Assert.Null(none.LocalAddress);
        Assert.Equal(IPAddress.Loopback, (await PeerAsync("127.0.0.32"))?.LocalAddress);
        Assert.Equal(IPAddress.Loopback, (await PeerAsync("127.0.0.33"))?.LocalAddress);
        Assert.Null(await PeerAsync("127.0.0.34"));
        Assert.Contains("'Sometimes' is not an IP address", (await ProblemsAsync()).Single(p => p.Key == Peers + "nonsense").Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_reload_keeps_the_running_configuration()
    {
        string file = Path.Combine(dir, "bgpd.json");
        await File.WriteAllTextAsync(file, """{"peers":[{"peerIP":"127.0.0.12","asNumber":65012,"keepaliveTime":"30s"}]}""");
        await StartAsync(file);
        Assert.Equal((ushort)30, (await PeerAsync("127.0.0.12"))?.KeepaliveTime);

        await File.WriteAllTextAsync(file, """{"peers":[{"peerIP":"127.0.0.13","asNumber":65013},{"peerIP":"127.0.0.12","asNumber":65012,"keepaliveTime":"banana"}]}""");
        var e = await Assert.ThrowsAsync<ConfigException>(daemon!.ReloadAsync);
        Assert.Contains("'banana' is not a duration", e.Message, StringComparison.Ordinal);
        Assert.Equal((ushort)30, (await PeerAsync("127.0.0.12"))?.KeepaliveTime);
        Assert.Null(await PeerAsync("127.0.0.13"));

        // The loop goes on applying the old file (not the refused one) with etcd's changes.
        PutPeer("from-etcd", "'peerIP':'127.0.0.14','asNumber':65014");
        await Until(async () => await PeerAsync("127.0.0.14") is not null, "etcd's peer is configured");
        Assert.Null(await PeerAsync("127.0.0.13"));

        // RFC 4271 §4.2: a hold time of 1 or 2 s is refused too.
        await File.WriteAllTextAsync(file, """{"peers":[{"peerIP":"127.0.0.12","asNumber":65012,"holdTime":"2s"}]}""");
        e = await Assert.ThrowsAsync<ConfigException>(daemon.ReloadAsync);
        Assert.Contains("hold time 2", e.Message, StringComparison.Ordinal);
        Assert.Equal((ushort)30, (await PeerAsync("127.0.0.12"))?.KeepaliveTime);

        await File.WriteAllTextAsync(file, """{"peers":[{"peerIP":"127.0.0.12","asNumber":65012,"keepaliveTime":"10s"}]}""");
        await daemon.ReloadAsync();
        Assert.Equal((ushort)10, (await PeerAsync("127.0.0.12"))?.KeepaliveTime);
    }

    [Fact]
    public async Task A_changed_password_reconfigures_the_peer()
    {
        PutPeer("secret", "'peerIP':'127.0.0.15','asNumber':65015,'password':'old-secret'");
        await StartAsync();
        Assert.Equal("old-secret", (await PeerAsync("127.0.0.15"))?.Password);
        PutPeer("secret", "'peerIP':'127.0.0.15','asNumber':65015,'password':'new-secret'");
        await Until(async () => (await PeerAsync("127.0.0.15"))?.Password == "new-secret", "the new password is in use");
    }

    [Theory]
    [InlineData(null, null, DaemonOptions.DefaultPeerMaxPrefixes)]
    [InlineData(50, null, 50)]
    [InlineData(50, 300, 300)]
    [InlineData(50, 0, null)]
    [InlineData(0, null, null)]
    public async Task Peers_from_etcd_get_a_prefix_limit_and_file_peers_keep_their_own(int? inFile, int? flag, int? expected)
    {
        string file = Path.Combine(dir, "bgpd.json");
        string limit = inFile is { } n ? $"\"peerMaxPrefixes\":{n}," : "";
        await File.WriteAllTextAsync(file, "{" + limit + "\"peers\":[{\"peerIP\":\"127.0.0.40\",\"asNumber\":65040},{\"peerIP\":\"127.0.0.41\",\"asNumber\":65041,\"maxPrefixes\":7}]}");
        PutPeer("from-etcd", "'peerIP':'127.0.0.42','asNumber':65042");
        await StartAsync(file, flag);
        Assert.Equal(expected, (await PeerAsync("127.0.0.42"))?.MaxPrefixes);
        Assert.Null((await PeerAsync("127.0.0.40"))?.MaxPrefixes);
        Assert.Equal(7, (await PeerAsync("127.0.0.41"))?.MaxPrefixes);
    }

    [Fact]
    public async Task A_peer_from_etcd_past_the_default_limit_is_closed_with_cease_maximum_prefixes()
    {
        foreach (string pool in new[] { "10.0.0.0/8", "11.0.0.0/8" })
        {
            Put("/calico/resources/v3/projectcalico.org/ippools/" + pool.Replace('/', '-'),
                """{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"p"},"spec":{"cidr":""" + $"\"{pool}\"}}}}");
        }
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        await StartAsync();
        await using BgpTester tor = await BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, daemon!.ListenEndpoint!.Port), IPAddress.Parse("127.0.0.10"), 65010);
        Task<long> Accepted() => daemon.Speaker.InvokeAsync(() => daemon.Speaker.FindPeer(IPAddress.Parse("127.0.0.10"))!.PrefixesAccepted);

        // 5,000 /24s outside the pools are refused and do not count; then exactly the limit inside them.
        await tor.SendAsync(BgpTester.PrepareAnnouncements(65010, IPAddress.Parse("127.0.0.10"), 0x0C000000, 5_000, 100));
        await tor.SendAsync(BgpTester.PrepareAnnouncements(65010, IPAddress.Parse("127.0.0.10"), 0x0A000000, DaemonOptions.DefaultPeerMaxPrefixes, 100));
        await Until(async () => await Accepted() == DaemonOptions.DefaultPeerMaxPrefixes, "the limit's worth of routes accepted", 60);
        Assert.Null(tor.Notification);
        Assert.Equal(5_000, await daemon.Speaker.InvokeAsync(() => daemon.Speaker.FindPeer(IPAddress.Parse("127.0.0.10"))!.PrefixesRefused));

        // One more (11.200.0.0/24): Cease / Maximum Number of Prefixes Reached with AFI 1, SAFI 1 and the bound (RFC 4486 §4).
        await tor.SendAsync(BgpTester.PrepareAnnouncements(65010, IPAddress.Parse("127.0.0.10"), 0x0BC80000, 1, 1));
        await Until(() => Task.FromResult(tor.Notification is not null), "the NOTIFICATION");
        NotificationMessage n = tor.Notification!;
        Assert.Equal((ErrorCode.Cease, Subcode.MaximumPrefixesReached), (n.Code, n.Subcode));
        Assert.Equal(new byte[] { 0, 1, 1, 0x00, 0x01, 0x86, 0xA0 }, n.Data.ToArray());
        await Until(async () => await Accepted() == 0, "the peer's routes to go");
        lock (logLines)
        {
            Assert.Contains(logLines, l => l.Contains("100001 prefixes accepted, more than the limit of 100000: closing the session", StringComparison.Ordinal));
        }
    }

    [Theory]
    [InlineData("10.0.0.1", "10.0.0.1", null)]
    [InlineData("10.0.0.1:1790", "10.0.0.1", 1790)]
    [InlineData("fd00::1", "fd00::1", null)]
    [InlineData("[fd00::1]:1790", "fd00::1", 1790)]
    [InlineData("10.0.0.1/32", "10.0.0.1", null)]
    public void Calicos_peerIP_forms(string text, string address, int? port)
    {
        var (a, p) = DaemonConfig.ParsePeerAddress(text, "peerIP");
        Assert.Equal(IPAddress.Parse(address), a);
        Assert.Equal(port, p);
    }

    [Theory]
    [InlineData("10.0.0.1:0")]
    [InlineData("10.0.0.1:70000")]
    [InlineData("peer.example")]
    [InlineData("10.0.0.1:")]
    public void Bad_peerIP_forms_are_refused_with_the_text(string text)
    {
        var e = Assert.Throws<ConfigException>(() => DaemonConfig.ParsePeerAddress(text, "peerIP"));
        Assert.Contains($"'{text}'", e.Message, StringComparison.Ordinal);
    }

    private const string Node1 = "/calico/resources/v3/projectcalico.org/nodes/node1";

    /// <summary>node1's nodes record; <paramref name="bgp"/> is the bgp section's members (JSON with ' for "), null:
    /// no bgp section at all.</summary>
    private void PutNode(string? bgp) =>
        Put(Node1, "{\"kind\":\"Node\",\"apiVersion\":\"projectcalico.org/v3\",\"metadata\":{\"name\":\"node1\"},\"spec\":{"
            + (bgp is null ? "" : "\"bgp\":{" + bgp.Replace('\'', '"') + "}") + "}}");

    private Task<IPAddress?> NodeAddressAsync() => daemon!.Speaker.InvokeAsync(() => daemon.Ipv4);

    [Fact]
    public async Task Without_a_flag_the_node_address_comes_from_the_node_record_and_a_change_moves_the_sessions()
    {
        PutNode("'ipv4Address':'127.0.0.1/8'");
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        await StartAsync(ipv4: null);
        Assert.Equal(IPAddress.Parse("127.0.0.1"), daemon!.Ipv4);
        Assert.Equal($"etcd {Node1} spec.bgp.ipv4Address", daemon.Ipv4Source);
        Assert.Equal(SpeakerConfig.ParseRouterId("127.0.0.1"), daemon.Speaker.Config.RouterId);
        Assert.Equal(IPAddress.Parse("127.0.0.1"), (await PeerAsync("127.0.0.10"))!.LocalAddress);
        await using BgpTester tor = await BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, daemon.ListenEndpoint!.Port), IPAddress.Parse("127.0.0.10"), 65010);

        // The record changes: router id and the session's source address follow, the session is reset (its OPEN
        // carries the router id), and the log says what and why.
        PutNode("'ipv4Address':'127.0.0.2/8'");
        await Until(async () => Equals(await NodeAddressAsync(), IPAddress.Parse("127.0.0.2")), "the new address from the record");
        await Until(() => Task.FromResult(tor.Closed), "the session reset by the new address");
        Assert.Equal(SpeakerConfig.ParseRouterId("127.0.0.2"), daemon.Speaker.Config.RouterId);
        Assert.Equal(IPAddress.Parse("127.0.0.2"), (await PeerAsync("127.0.0.10"))!.LocalAddress);
        Assert.True(Logged("BGP IPv4 address 127.0.0.1 -> 127.0.0.2 (from etcd"));
        Assert.True(Logged("router id 127.0.0.1 -> 127.0.0.2: resetting 1 sessions (tor)"));

        // A bare address (no prefix length) is taken as it is.
        PutNode("'ipv4Address':'127.0.0.3'");
        await Until(async () => Equals(await NodeAddressAsync(), IPAddress.Parse("127.0.0.3")), "the bare address");

        // Unreadable, empty, missing, no bgp section: the address in use stays, the record is reported by its key.
        foreach ((string? bgp, string reason) in new[]
        {
            ("'ipv4Address':'banana/24'", "spec.bgp.ipv4Address: 'banana/24' is not an IPv4 address"),
            ("'ipv4Address':'fd00::3/64'", "spec.bgp.ipv4Address: 'fd00::3/64' is not an IPv4 address"),
            ("'ipv4Address':'127.0.0.4/33'", "spec.bgp.ipv4Address: '127.0.0.4/33' is not an IPv4 address"),
            ("'ipv4Address':''", "spec.bgp.ipv4Address is empty: keeping this node's IPv4 address 127.0.0.3"),
            ("'asNumber':64512", "spec.bgp.ipv4Address is missing: keeping this node's IPv4 address 127.0.0.3"),
            (null, "spec.bgp.ipv4Address is missing: keeping this node's IPv4 address 127.0.0.3"),
        })
        {
            PutNode(bgp);
            await Until(async () => (await ProblemsAsync()).Any(p => p.Key == Node1 && p.Reason.Contains(reason, StringComparison.Ordinal)), "the record reported: " + reason);
            Assert.Equal(IPAddress.Parse("127.0.0.3"), await NodeAddressAsync());
        }
        PutNode("'ipv4Address':'127.0.0.3/8'");
        await Until(async () => !(await ProblemsAsync()).Any(p => p.Key == Node1), "the record no longer reported");
        Assert.True(Logged($"etcd {Node1}: no longer skipped"));
    }

    [Fact]
    public async Task Another_nodes_unreadable_address_is_reported_under_its_key_and_gets_no_session()
    {
        PutPeer("all-nodes", "'peerSelector':'all()'");
        Put("/calico/resources/v3/projectcalico.org/nodes/node2",
            """{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node2"},"spec":{"bgp":{"ipv4Address":"banana"}}}""");
        await StartAsync();
        await Until(async () => (await ProblemsAsync()).Any(p => p.Key.EndsWith("/nodes/node2", StringComparison.Ordinal)
            && p.Reason == "spec.bgp.ipv4Address: 'banana' is not an IPv4 address (Calico writes it with its subnet's length, e.g. 10.0.0.5/24); no session to node node2 over IPv4 until it is fixed"),
            "node2's record reported");
        Assert.Empty(await daemon!.Speaker.InvokeAsync(() => daemon.Speaker.Peers.ToList()));
        Put("/calico/resources/v3/projectcalico.org/nodes/node2",
            """{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node2"},"spec":{"bgp":{"ipv4Address":"127.0.0.22/8"}}}""");
        await Until(async () => await PeerAsync("127.0.0.22") is not null, "the session to node2 once its address is fixed");
    }

    [Fact]
    public async Task A_flag_wins_over_the_config_file_which_wins_over_the_node_record()
    {
        PutNode("'ipv4Address':'127.0.0.6/8','ipv6Address':'fd00::6/64','asNumber':64999");
        string file = Path.Combine(dir, "bgpd.json");
        File.WriteAllText(file, """{"ipv4Address":"127.0.0.5/8"}""");
        await StartAsync(file, ipv4: "127.0.0.1/8");
        Assert.Equal(IPAddress.Parse("127.0.0.1"), daemon!.Ipv4);
        Assert.Equal("--ipv4-address", daemon.Ipv4Source);
        // Published for the mesh and the CLI; what the flag does not give (IPv6 address, AS) stays in the record.
        string record = Encoding.UTF8.GetString((await store.GetAsync(Node1, default))!.Value);
        Assert.Contains("\"ipv4Address\":\"127.0.0.1/8\"", record, StringComparison.Ordinal);
        Assert.Contains("\"ipv6Address\":\"fd00::6/64\"", record, StringComparison.Ordinal);
        Assert.Contains("\"asNumber\":64999", record, StringComparison.Ordinal);
        Assert.Equal(IPAddress.Parse("fd00::6"), daemon.Ipv6);
        // A record changed under a flag: said once, not followed.
        PutNode("'ipv4Address':'127.0.0.7/8'");
        await Until(() => Task.FromResult(Logged("spec.bgp.ipv4Address 127.0.0.7/8 is not used: --ipv4-address (127.0.0.1) wins")), "the override noted");
        Assert.Equal(IPAddress.Parse("127.0.0.1"), await NodeAddressAsync());
        await daemon.DisposeAsync();

        // Without the flag, the file's wins over the record.
        daemon = null;
        await StartAsync(file, ipv4: null);
        Assert.Equal(IPAddress.Parse("127.0.0.5"), daemon!.Ipv4);
        Assert.Equal("the config file's ipv4Address", daemon.Ipv4Source);
        // A reload with another address uses it and publishes it in the record, as at start.
        File.WriteAllText(file, """{"ipv4Address":"127.0.0.8/8"}""");
        await daemon.ReloadAsync();
        Assert.Equal(IPAddress.Parse("127.0.0.8"), await NodeAddressAsync());
        Assert.Contains("\"ipv4Address\":\"127.0.0.8/8\"", Encoding.UTF8.GetString((await store.GetAsync(Node1, default))!.Value), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null, "has no spec.bgp.ipv4Address")]
    [InlineData("", "has no spec.bgp.ipv4Address")]
    [InlineData("'ipv6Address':'fd00::1/64'", "has no spec.bgp.ipv4Address")]
    [InlineData("'ipv4Address':''", "has no spec.bgp.ipv4Address")]
    [InlineData("'ipv4Address':'10.0.0.5/abc'", "spec.bgp.ipv4Address: '10.0.0.5/abc' is not an IPv4 address (Calico writes it with its subnet's length, e.g. 10.0.0.5/24)")]
    public async Task Without_any_IPv4_address_bgpd_does_not_start_and_says_where_to_give_one(string? bgp, string reason)
    {
        if (bgp is not null)
        {
            PutNode(bgp.Length == 0 ? null : bgp);
        }
        ConfigException e = await Assert.ThrowsAsync<ConfigException>(() => StartAsync(ipv4: null));
        Assert.Contains("node node1 has no BGP IPv4 address (its router id)", e.Message, StringComparison.Ordinal);
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
        Assert.Contains($"give --ipv4-address, ipv4Address in the config file, spec.bgp.ipv4Address in etcd {Node1}, or routerId", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("10.0.0.5/24", true, "10.0.0.5")]
    [InlineData("10.0.0.5", true, "10.0.0.5")]
    [InlineData(" 10.0.0.5/32 ", true, "10.0.0.5")]
    [InlineData("fd00::5/64", false, "fd00::5")]
    [InlineData("fd00::5", false, "fd00::5")]
    [InlineData("", true, null)]
    [InlineData(null, false, null)]
    public void Node_address_forms_Calico_writes(string? text, bool v4, string? address)
    {
        IPAddress? a = DaemonConfig.ParseNodeAddress(text, v4 ? System.Net.Sockets.AddressFamily.InterNetwork : System.Net.Sockets.AddressFamily.InterNetworkV6, "ipv4Address");
        Assert.Equal(address is null ? null : IPAddress.Parse(address), a);
    }

    [Theory]
    [InlineData("10.0.0.5/33", true)]
    [InlineData("10.0.0.5/", true)]
    [InlineData("10.0.0.5/-1", true)]
    [InlineData("fd00::5/64", true)]
    [InlineData("10.0.0.5/24", false)]
    [InlineData("fd00::5/129", false)]
    [InlineData("fe80::1%eth0/64", false)]
    [InlineData("node1.example", true)]
    public void Bad_node_addresses_are_refused_with_the_text(string text, bool v4)
    {
        var e = Assert.Throws<ConfigException>(() => DaemonConfig.ParseNodeAddress(text, v4 ? System.Net.Sockets.AddressFamily.InterNetwork : System.Net.Sockets.AddressFamily.InterNetworkV6, "ipv4Address"));
        Assert.Contains($"'{text}'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_netlink_error_during_the_reconcile_is_logged_and_the_daemon_keeps_following_etcd()
    {
        var table = new FakeRouteTable();
        await StartAsync(table: table, reconcile: TimeSpan.FromMilliseconds(100));
        table.Broken = true;
        await Until(() => Task.FromResult(Logged("kernel routes failed: NetlinkException")), "the reconcile's failure logged");
        long errors = await daemon!.Speaker.InvokeAsync(() => daemon.ApplyErrors);
        Assert.True(errors > 0);
        // The loop lives on: a bgppeer put into etcd now is still applied.
        PutPeer("late", "'peerIP':'127.0.0.16','asNumber':65016");
        await Until(async () => await PeerAsync("127.0.0.16") is not null, "the bgppeer put while the kernel fails");
        table.Broken = false;
        await Until(() => Task.FromResult(Logged("kernel routes: working again")), "the reconcile working again");
        lock (logLines)
        {
            Assert.Single(logLines, l => l.Contains("kernel routes failed", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task Service_ranges_are_advertised_never_blackholed_refused_from_peers_checked_and_applied_live()
    {
        PutPool("default", "10.244.0.0/16");
        PutPeer("tor", "'peerIP':'127.0.0.10','asNumber':65010");
        var table = new FakeRouteTable();
        const string ranges = "'serviceClusterIPs':[{'cidr':'10.96.0.0/16'}],'serviceLoadBalancerIPs':[{'cidr':'fd00:96::/112'}]";
        await StartAsync(configExtra: ranges + ",'serviceExternalIPs':[{'cidr':'172.30.250.0/24'},{'cidr':'10.0.0.1/8'},{'ip':'x'}]", table: table);
        Assert.Equal([("10.96.0.0/16", "serviceClusterIPs"), ("172.30.250.0/24", "serviceExternalIPs"), ("fd00:96::/112", "serviceLoadBalancerIPs")],
            daemon!.ServiceAdvertised.Select(r => (r.Prefix.ToString(), r.Kind)));
        IReadOnlyList<ResourceProblem> problems = await ProblemsAsync();
        Assert.Contains(problems, p => p.Reason.Contains("serviceExternalIPs", StringComparison.Ordinal) && p.Reason.Contains("10.0.0.1/8", StringComparison.Ordinal));
        Assert.True(await daemon.Speaker.InvokeAsync(() => daemon.Speaker.Rib.Find(Prefix.Parse("10.96.0.0/16"))?.Best is { IsLocal: true }));
        lock (table.Routes)
        {
            // Advertised only: kube-proxy's rules take the traffic before routing; a blackhole would break the node's own connections.
            Assert.DoesNotContain(table.Routes.Keys, k => k.StartsWith("10.96.", StringComparison.Ordinal) || k.StartsWith("172.30.250.", StringComparison.Ordinal));
        }
        await using BgpTester tor = await BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, daemon.ListenEndpoint!.Port), IPAddress.Parse("127.0.0.10"), 65010);
        await Until(() => Task.FromResult(tor.Announced >= 2), "the IPv4 service ranges at the peer");

        // Another node's advertisement of a service range, passed on by the fabric: refused and counted, even inside a pool.
        await tor.SendAsync(BgpTester.PrepareAnnouncements(65010, IPAddress.Parse("127.0.0.10"), (10u << 24) | (96u << 16) | (1u << 8), 1, 1));
        await Until(() => Task.FromResult(daemon.ServiceRoutesRefused >= 1), "the refusal");
        Assert.Null(await daemon.Speaker.InvokeAsync(() => daemon.Speaker.Rib.Find(Prefix.Parse("10.96.1.0/24"))?.Best));

        // Live: the external range goes, the session stays.
        PutConfig(ranges);
        await Until(() => Task.FromResult(daemon.ServiceAdvertised.Count == 2 && tor.Withdrawn >= 1), "the external range withdrawn");
        Assert.False(tor.Closed);

        // A node labelled to stay out of external load balancers advertises no range.
        Put("/calico/resources/v3/projectcalico.org/nodes/node1",
            """{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node1","labels":{"node.kubernetes.io/exclude-from-external-load-balancers":"true"}},"spec":{"bgp":{"ipv4Address":"127.0.0.1/8"}}}""");
        await Until(() => Task.FromResult(daemon.ServiceAdvertised.Count == 0 && tor.Withdrawn >= 2), "every range withdrawn");
        lock (logLines)
        {
            Assert.Contains(logLines, l => l.Contains("exclude-from-external-load-balancers=true: it advertises no service range", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void A_config_file_with_a_bad_service_range_is_refused()
    {
        string file = Path.Combine(dir, "bad-service.json");
        File.WriteAllText(file, """{"nodeName":"node1","ipv4Address":"127.0.0.1","serviceClusterIPs":[{"cidr":"10.96.0.1/12"}]}""");
        var e = Assert.Throws<ConfigException>(() => new Daemon(new DaemonOptions { ConfigFile = file, Kernel = false }, (_, _) => { }));
        Assert.Contains("serviceClusterIPs", e.Message, StringComparison.Ordinal);
        Assert.Contains("10.96.0.1/12", e.Message, StringComparison.Ordinal);
    }
}
