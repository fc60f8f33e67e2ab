using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgp.Tests;

/// <summary>One peer's slowness must not stall the others (real TCP on loopback).</summary>
public class SlowPeerTests
{
    [Fact]
    public async Task Frozen_receiver_does_not_stall_the_others_and_is_dropped_by_its_hold_timer()
    {
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        await using var speaker = new BgpSpeaker(new SpeakerConfig
        {
            LocalAs = 65000,
            RouterId = SpeakerConfig.ParseRouterId("127.0.0.1"),
            Log = (l, m) => log.Enqueue($"{l}: {m}"),
        });
        IPEndPoint ep = speaker.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        await speaker.InvokeAsync(() =>
        {
            foreach ((string addr, uint asn) in new[] { ("127.0.0.2", 65001u), ("127.0.0.3", 65002u), ("127.0.0.4", 65003u) })
            {
                speaker.AddPeer(new PeerConfig { Address = IPAddress.Parse(addr), RemoteAs = asn, Passive = true, HoldTime = 3, LocalAddress = IPAddress.Loopback });
            }
        });
        await using BgpTester frozen = await BgpTester.ConnectAsync(ep, IPAddress.Parse("127.0.0.4"), 65003, hold: 3);
        frozen.Freeze();
        await using BgpTester fast = await BgpTester.ConnectAsync(ep, IPAddress.Parse("127.0.0.3"), 65002, hold: 90);
        await using BgpTester sender = await BgpTester.ConnectAsync(ep, IPAddress.Parse("127.0.0.2"), 65001, hold: 90);
        const int n = 100_000;
        byte[] updates = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse("127.0.0.2"), 0x0B000000, n, 10);
        fast.Mark();
        Task<TimeSpan> all = fast.WhenAnnounced(n);
        await sender.SendAsync(updates);
        TimeSpan took;
        try
        {
            took = await all.WaitAsync(TimeSpan.FromSeconds(60));
        }
        catch (TimeoutException)
        {
            string state = await speaker.InvokeAsync(() => string.Join("; ", speaker.Peers.Select(p =>
                $"{p.Config.Address} {p.State} adv={p.PrefixesAdvertised} acc={p.PrefixesAccepted} pending={p.Pending.Count} waiting={p.WaitingForDrain} queued={p.Connection?.QueuedBytes}")));
            throw new TimeoutException($"fast peer got {fast.Announced} of {n}; {state}\n{string.Join("\n", log)}");
        }
        Assert.InRange(took.TotalSeconds, 0, 60);
        // The frozen peer sends no keepalives: its hold timer (3 s) ends it, with its queue bounded meanwhile.
        BgpPeer stuck = speaker.Peers.Single(p => p.Config.Address.Equals(IPAddress.Parse("127.0.0.4")));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (stuck.State == SessionState.Established && sw.Elapsed < TimeSpan.FromSeconds(15))
        {
            await Task.Delay(50);
        }
        Assert.NotEqual(SessionState.Established, stuck.State);
        Assert.Contains(log, l => l.Contains("127.0.0.4", StringComparison.Ordinal) && l.Contains("hold timer expired", StringComparison.Ordinal));
        Assert.Equal(n, await speaker.InvokeAsync(() => speaker.Rib.Count));
    }
}
