using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgp.Tests;

/// <summary>
/// Two namespaces joined by a veth pair: BIRD 2 in one, our speaker (its sockets opened in the other) in
/// this process. Everything is removed on Dispose, pass or fail.
/// </summary>
internal sealed class BirdLab : IAsyncDisposable
{
    public const string BirdV4 = "172.31.250.1";
    public const string UsV4 = "172.31.250.2";
    public const string BirdV6 = "fd77:250::1";
    public const string UsV6 = "fd77:250::2";

    private readonly TestNetns _torNs;
    private readonly TestNetns _usNs;
    private readonly NetNs _us;

    public BirdLab(uint birdAs, uint ourAs, ushort hold = 6)
    {
        string lab = TestNetns.NewLabPrefix();
        _torNs = TestNetns.Create(lab + "-tor");
        try
        {
            _usNs = TestNetns.Create(lab + "-us");
            TestNetns.Ip("link", "add", lab + "a", "netns", _torNs.Name, "type", "veth", "peer", "name", lab + "b", "netns", _usNs.Name);
            TestNetns.Ip("-n", _torNs.Name, "addr", "add", BirdV4 + "/30", "dev", lab + "a");
            TestNetns.Ip("-n", _torNs.Name, "addr", "add", BirdV6 + "/64", "dev", lab + "a", "nodad");
            TestNetns.Ip("-n", _usNs.Name, "addr", "add", UsV4 + "/30", "dev", lab + "b");
            TestNetns.Ip("-n", _usNs.Name, "addr", "add", UsV6 + "/64", "dev", lab + "b", "nodad");
            TestNetns.Ip("-n", _torNs.Name, "link", "set", lab + "a", "up");
            TestNetns.Ip("-n", _usNs.Name, "link", "set", lab + "b", "up");
            _us = NetNs.Open(_usNs.Path);
            bool ibgp = birdAs == ourAs;
            Bird = BirdProcess.Start(_torNs.Name, $$"""
                log "{dir}/bird.log" all;
                router id {{BirdV4}};
                protocol device { scan time 1; }
                protocol direct { ipv4; ipv6; }
                protocol static s4 { ipv4; route 10.201.0.0/24 blackhole; route 10.201.1.0/24 blackhole; }
                protocol static s6 { ipv6; route fd77:201::/64 blackhole; }
                protocol bgp speaker {
                  local {{BirdV4}} as {{birdAs}};
                  neighbor {{UsV4}} as {{ourAs}};
                  hold time {{hold}}; keepalive time {{Math.Max(1, hold / 3)}}; connect retry time 1; connect delay time 1; error wait time 1, 2;
                  graceful restart on;
                  {{(ibgp ? "direct;" : "")}}
                  ipv4 { import all; export all; {{(ibgp ? "next hop self;" : "")}} };
                  ipv6 { import all; export all; next hop address {{BirdV6}}; };
                }
                """);
            Logs = new System.Collections.Concurrent.ConcurrentQueue<string>();
            Speaker = new BgpSpeaker(new SpeakerConfig
            {
                LocalAs = ourAs,
                RouterId = SpeakerConfig.ParseRouterId(UsV4),
                Log = (l, m) => Logs.Enqueue($"{l}: {m}"),
            });
            Speaker.SocketFactory = family => _us.Run(() => new Socket(family, SocketType.Stream, ProtocolType.Tcp));
            Speaker.Listen(new IPEndPoint(IPAddress.Any, 179));
            Peer = Speaker.InvokeAsync(() => Speaker.AddPeer(new PeerConfig
            {
                Address = IPAddress.Parse(BirdV4),
                RemoteAs = birdAs,
                LocalAddress = IPAddress.Parse(UsV4),
                LocalAddressOtherFamily = IPAddress.Parse(UsV6),
                HoldTime = hold,
                ConnectRetry = TimeSpan.FromSeconds(1),
                ConnectRetryMax = TimeSpan.FromSeconds(2),
            })).GetAwaiter().GetResult();
        }
        catch
        {
            DisposeAsync().AsTask().GetAwaiter().GetResult();
            throw;
        }
    }

    public BirdProcess Bird { get; } = null!;

    public BgpSpeaker Speaker { get; } = null!;

    public BgpPeer Peer { get; } = null!;

    public System.Collections.Concurrent.ConcurrentQueue<string> Logs { get; } = null!;

    public string Diagnostics => $"our log:\n{string.Join("\n", Logs ?? [])}\nbird log:\n{Bird?.Log}";

    public async Task Until(Func<bool> condition, string what, double seconds = 20)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (sw.Elapsed.TotalSeconds > seconds)
            {
                throw new TimeoutException($"waited {seconds} s for {what}\n{Diagnostics}");
            }
            await Task.Delay(50);
        }
    }

    public Task<T> OnLoop<T>(Func<T> f) => Speaker.InvokeAsync(f);

    public async Task<PathAttributes?> OurRoute(string prefix) =>
        await Speaker.InvokeAsync(() => Speaker.Rib.Find(Prefix.Parse(prefix))?.Best?.Attributes);

    /// <summary>BIRD's routes from our speaker, in both tables.</summary>
    public string BirdRoutes() => Bird.Birdc("show route protocol speaker") + Bird.Birdc("show route table master6 protocol speaker");

    public async ValueTask DisposeAsync()
    {
        // Everything goes even when one part fails (a speaker bug must not leave BIRD and namespaces behind).
        try
        {
            if (Speaker is not null)
            {
                await Speaker.DisposeAsync();
            }
        }
        finally
        {
            Bird?.Dispose();
            _us?.Dispose();
            _usNs?.Dispose();
            _torNs.Dispose();
        }
    }
}

[Trait("Category", "Privileged")]
public class BirdInteropTests
{
    private static async Task Originate(BirdLab lab)
    {
        await lab.Speaker.InvokeAsync(() =>
        {
            lab.Speaker.Rib.Originate(Prefix.Parse("10.244.1.0/26"));
            lab.Speaker.Rib.Originate(Prefix.Parse("fd77:244::/122"));
        });
    }

    [Theory]
    [InlineData(65000u, 65001u)]
    [InlineData(65001u, 65001u)]
    public async Task Sessions_come_up_and_routes_flow_both_ways_and_are_withdrawn(uint birdAs, uint ourAs)
    {
        await using var lab = new BirdLab(birdAs, ourAs);
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session");
        await Originate(lab);
        // BIRD's static routes reach us, IPv4 and IPv6.
        await lab.Until(() => lab.OurRoute("10.201.1.0/24").Result is not null && lab.OurRoute("fd77:201::/64").Result is not null, "BIRD's routes");
        PathAttributes v4 = (await lab.OurRoute("10.201.0.0/24"))!;
        Assert.Equal(Prefix.Parse(BirdLab.BirdV4 + "/32"), v4.NextHop);
        Assert.Equal(birdAs == ourAs ? AsPath.Empty : AsPath.Sequence(birdAs), v4.AsPath);
        Assert.Equal(Prefix.Parse(BirdLab.BirdV6 + "/128"), (await lab.OurRoute("fd77:201::/64"))!.NextHop);
        // Ours reach BIRD.
        await lab.Until(() => lab.BirdRoutes() is var r && r.Contains("10.244.1.0/26", StringComparison.Ordinal) && r.Contains("fd77:244::/122", StringComparison.Ordinal), "our routes in BIRD");
        string detail = lab.Bird.Birdc("show route 10.244.1.0/26 all");
        Assert.Contains(birdAs == ourAs ? "BGP.as_path: \n" : $"BGP.as_path: {ourAs}", detail + "\n", StringComparison.Ordinal);
        Assert.Contains($"BGP.next_hop: {BirdLab.UsV4}", detail, StringComparison.Ordinal);
        // Withdrawals both ways.
        await lab.Speaker.InvokeAsync(() => lab.Speaker.Rib.WithdrawLocal(Prefix.Parse("10.244.1.0/26")));
        await lab.Until(() => !lab.BirdRoutes().Contains("10.244.1.0/26", StringComparison.Ordinal), "our withdrawal in BIRD");
        lab.Bird.Birdc("disable s4");
        await lab.Until(() => lab.OurRoute("10.201.0.0/24").Result is null, "BIRD's withdrawal");
        Assert.NotNull(await lab.OurRoute("fd77:201::/64"));
    }

    [Fact]
    public async Task Bird_restarted_comes_back_with_its_routes()
    {
        await using var lab = new BirdLab(65000, 65001);
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session");
        await Originate(lab);
        await lab.Until(() => lab.OurRoute("10.201.0.0/24").Result is not null, "BIRD's routes");
        lab.Bird.Stop();
        // BIRD's shutdown is a Cease: a planned stop, its routes go at once.
        await lab.Until(() => lab.Peer.State != SessionState.Established, "the session to close");
        await lab.Until(() => lab.OurRoute("10.201.0.0/24").Result is null, "BIRD's routes to go");
        Assert.Contains("NOTIFICATION", lab.Peer.LastError, StringComparison.Ordinal);
        lab.Bird.Launch();
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session again", 30);
        await lab.Until(() => lab.OurRoute("10.201.0.0/24").Result is not null, "BIRD's routes again");
        await lab.Until(() => lab.BirdRoutes().Contains("10.244.1.0/26", StringComparison.Ordinal), "our routes in the new BIRD");
    }

    [Fact]
    public async Task Frozen_bird_is_dropped_by_the_hold_timer()
    {
        await using var lab = new BirdLab(65000, 65001, hold: 3);
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session");
        await lab.Until(() => lab.OurRoute("10.201.0.0/24").Result is not null, "BIRD's routes");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        lab.Bird.Freeze();
        try
        {
            await lab.Until(() => lab.Peer.State != SessionState.Established, "the hold timer", 10);
            Assert.InRange(sw.Elapsed.TotalSeconds, 1.5, 6);
            Assert.Contains("hold timer expired", lab.Peer.LastError, StringComparison.Ordinal);
            // Graceful restart: BIRD may be restarting, so its routes stay, marked stale.
            Assert.True((await lab.Speaker.InvokeAsync(() => lab.Speaker.Rib.Find(Prefix.Parse("10.201.0.0/24"))?.Best))?.Stale);
        }
        finally
        {
            lab.Bird.Thaw();
        }
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session after thaw", 30);
        await lab.Until(() => !lab.Peer.RoutesStale, "stale routes refreshed by End-of-RIB");
        Assert.False((await lab.Speaker.InvokeAsync(() => lab.Speaker.Rib.Find(Prefix.Parse("10.201.0.0/24"))?.Best))?.Stale);
    }

    [Fact]
    public async Task Route_refresh_works_in_both_directions()
    {
        await using var lab = new BirdLab(65000, 65001);
        await lab.Until(() => lab.Peer.State == SessionState.Established, "the session");
        await Originate(lab);
        await lab.Until(() => lab.OurRoute("10.201.1.0/24").Result is not null, "BIRD's routes");
        await lab.Until(() => lab.BirdRoutes().Contains("10.244.1.0/26", StringComparison.Ordinal), "our routes in BIRD");
        long sent = lab.Peer.UpdatesSent;
        // BIRD asks us (ROUTE-REFRESH) and we send our table again.
        lab.Bird.Birdc("reload in speaker");
        await lab.Until(() => lab.Peer.UpdatesSent > sent, "our answer to BIRD's refresh");
        long received = lab.Peer.UpdatesReceived;
        Assert.True(await lab.Speaker.InvokeAsync(() => lab.Peer.RequestRefresh(Afi.IPv4)));
        await lab.Until(() => lab.Peer.UpdatesReceived > received, "BIRD's answer to our refresh");
        Assert.Equal(SessionState.Established, lab.Peer.State);
    }
}
