using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>
/// BFD (RFC 5880/5881/5882) between bgpd and BIRD 2 as the ToR (<c>protocol bfd</c>, <c>bfd on</c>): both ends bring
/// the session up; each detects the other's death within the detection time and takes BGP down, where the hold
/// timer (9 s in the lab) would take far longer; a link that dies silently is routed around on both sides.
/// </summary>
[Trait("Category", "Privileged")]
public class BfdLabTests
{
    private static Task<BgpLab> StartAsync(int nodes, bool bfd) => BfdLab.StartAsync(nodes, bfd);

    private static bool HasRouteTo(LabNode n, LabNode other, BgpLab lab) => lab.Nodes.Contains(other) && BfdLab.HasRouteTo(n, other);

    internal static async Task<JsonElement> NodeStatusAsync(LabNode n)
    {
        ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n.ApiSocket, "-o", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var d = JsonDocument.Parse(r.Stdout);
        return d.RootElement.Clone();
    }

    internal static async Task WaitBfdUpAsync(BgpLab lab, LabNode n)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n.ApiSocket, "-o", "json");
            using JsonDocument? d = r.ExitCode == 0 ? JsonDocument.Parse(r.Stdout) : null; // null: bgpd not answering yet
            bool ours = d is not null && d.RootElement.GetProperty("peers").EnumerateArray().Any(p => p.TryGetProperty("bfd", out JsonElement b) && b.GetProperty("state").GetString() == "Up");
            bool birds = BfdLab.BirdUp(lab, n);
            if (ours && birds)
            {
                return;
            }
            if (sw.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new TimeoutException($"BFD between {n.Name} and the ToR not Up (bgpd: {ours}, BIRD: {birds})\n{lab.Bird!.Birdc("show bfd sessions")}\n{lab.Diagnostics()}");
            }
            await Task.Delay(100);
        }
    }

    /// <summary>How long until <paramref name="gone"/> holds, checked every 10 ms; null after <paramref name="limit"/>.</summary>
    internal static async Task<TimeSpan?> TimeUntilAsync(Func<bool> gone, TimeSpan limit)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < limit)
        {
            if (gone())
            {
                return sw.Elapsed;
            }
            await Task.Delay(10);
        }
        return null;
    }

    private static void Signal(int pid, string signal)
    {
        using Process k = Process.Start("kill", ["-" + signal, pid.ToString(CultureInfo.InvariantCulture)])!;
        k.WaitForExit();
    }

    [Fact]
    public async Task Bfd_comes_up_with_bird_and_node_status_shows_its_state_and_timers()
    {
        await using BgpLab lab = await StartAsync(1, bfd: true);
        LabNode n1 = lab.Nodes[0];
        await WaitBfdUpAsync(lab, n1);
        JsonElement b = (await NodeStatusAsync(n1)).GetProperty("peers")[0].GetProperty("bfd");
        Assert.Equal("Up", b.GetProperty("remoteState").GetString());
        Assert.Equal(100, b.GetProperty("minTxMs").GetDouble());
        Assert.Equal(3, b.GetProperty("multiplier").GetInt32());
        // Agreed with BIRD (100 ms × 3 both ways): a packet every 100 ms, down after 300 ms of silence.
        Assert.Equal(100, b.GetProperty("txIntervalMs").GetDouble());
        Assert.Equal(300, b.GetProperty("detectionTimeMs").GetDouble());
        Assert.Contains("bfdconfiguration default", b.GetProperty("source").GetString(), StringComparison.Ordinal);
        ProcessResult text = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n1.ApiSocket);
        Assert.Contains("BFD PEER", text.Stdout, StringComparison.Ordinal);
        Assert.Contains("100 ms/100 ms/1000 ms × 3", text.Stdout, StringComparison.Ordinal);
        // Live change: 300 ms × 3 reaches the running session by a Poll Sequence; BGP stays up, BFD stays Up.
        long upBefore = b.GetProperty("upTransitions").GetInt64();
        string sinceBgp = (await NodeStatusAsync(n1)).GetProperty("peers")[0].GetProperty("since").GetString()!;
        await lab.PutAsync(BfdLab.ConfigurationKey, BfdLab.Configuration(300));
        await BgpLab.WaitAsync(() =>
        {
            JsonElement p = NodeStatusAsync(n1).GetAwaiter().GetResult().GetProperty("peers")[0];
            return p.GetProperty("bfd").GetProperty("minTxMs").GetDouble() == 300 && p.GetProperty("bfd").GetProperty("txIntervalMs").GetDouble() == 300;
        }, "the new timers in force", 15, lab.Diagnostics);
        JsonElement after = (await NodeStatusAsync(n1)).GetProperty("peers")[0];
        Assert.Equal("Established", after.GetProperty("state").GetString());
        Assert.Equal(sinceBgp, after.GetProperty("since").GetString());
        Assert.Equal("Up", after.GetProperty("bfd").GetProperty("state").GetString());
        Assert.Equal(upBefore, after.GetProperty("bfd").GetProperty("upTransitions").GetInt64());
    }

    [Fact]
    public async Task Bfd_comes_up_over_ipv6_too_and_each_family_has_its_session()
    {
        await using BgpLab lab = await BfdLab.StartAsync(1, bfd: true, configure: l => l.Ipv6 = true);
        LabNode n1 = lab.Nodes[0];
        string Sessions() => lab.Bird!.Birdc("show bfd sessions");
        await BgpLab.WaitAsync(() => Sessions().Split('\n').Any(l => l.StartsWith(n1.Address6 + " ", StringComparison.Ordinal) && l.Contains(" Up ", StringComparison.Ordinal)),
            "BIRD's IPv6 BFD session Up", 30, () => Sessions() + lab.Diagnostics());
        JsonElement peers = (await NodeStatusAsync(n1)).GetProperty("peers");
        JsonElement v6 = peers.EnumerateArray().Single(p => p.GetProperty("address").GetString() == n1.TorAddress6);
        Assert.Equal("Up", v6.GetProperty("bfd").GetProperty("state").GetString());
        Assert.Equal(2, peers.EnumerateArray().Count(p => p.TryGetProperty("bfd", out JsonElement b) && b.GetProperty("state").GetString() == "Up"));
    }

    [Fact]
    public async Task Bird_detects_a_frozen_node_and_withdraws_its_block_long_before_the_hold_timer()
    {
        await using BgpLab lab = await StartAsync(2, bfd: true);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        // node1's bgpd freezes: no BFD, no keepalives, but its TCP connection stays open (the hold timer would need 9 s).
        Signal(n1.Bgpd!.Id, "STOP");
        try
        {
            TimeSpan? t = await TimeUntilAsync(() => !HasRouteTo(n2, n1, lab), TimeSpan.FromSeconds(8));
            Assert.True(t is not null && t < TimeSpan.FromSeconds(3), $"node1's block left node2's kernel after {t?.TotalMilliseconds ?? -1:0} ms\n{lab.Bird!.Birdc("show bfd sessions")}\n{lab.Diagnostics()}");
            Assert.Contains("BFD session down", lab.Bird!.Birdc($"show protocols all node{n1.Index}"), StringComparison.Ordinal);
        }
        finally
        {
            Signal(n1.Bgpd!.Id, "CONT");
        }
        // Back: BFD and BGP come up again and the block returns.
        await BgpLab.WaitAsync(() => HasRouteTo(n2, n1, lab), "node1's block back on node2", 60, lab.Diagnostics);
    }

    [Fact]
    public async Task Bgpd_detects_a_frozen_tor_and_takes_its_routes_out_of_the_kernel()
    {
        await using BgpLab lab = await StartAsync(2, bfd: true);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        await WaitBfdUpAsync(lab, n1); // bgpd's side Up too, on the agreed 100 ms timers
        Signal(lab.Bird!.Pid, "STOP");
        TimeSpan? t;
        try
        {
            t = await TimeUntilAsync(() => !HasRouteTo(n1, n2, lab), TimeSpan.FromSeconds(8));
        }
        finally
        {
            Signal(lab.Bird!.Pid, "CONT");
        }
        Assert.True(t is not null && t < TimeSpan.FromSeconds(3), $"node2's block left node1's kernel after {t?.TotalMilliseconds ?? -1:0} ms\n{lab.Diagnostics()}");
        // The line is written once the session is closed, which can be a moment after the kernel lost the routes.
        const string Expected = "BFD session down (no packet for the detection time (300ms)): BGP session taken down";
        await BgpLab.WaitAsync(() => File.ReadAllText(n1.LogFile).Contains(Expected, StringComparison.Ordinal), "bgpd's log to say BFD took BGP down", 5,
            () => string.Join('\n', File.ReadAllLines(n1.LogFile).Where(l => l.Contains("BFD", StringComparison.Ordinal))));
        await BgpLab.WaitAsync(() => HasRouteTo(n1, n2, lab), "node2's block back on node1", 60, lab.Diagnostics);
    }

    [Fact]
    public async Task A_silent_link_failure_is_routed_around_on_both_sides_within_the_detection_time()
    {
        await using BgpLab lab = await StartAsync(2, bfd: true);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        BfdLab.CutSilently(lab, n1, true);
        try
        {
            Task<TimeSpan?> nodeSide = TimeUntilAsync(() => !HasRouteTo(n1, n2, lab), TimeSpan.FromSeconds(8));
            Task<TimeSpan?> torSide = TimeUntilAsync(() => !HasRouteTo(n2, n1, lab), TimeSpan.FromSeconds(8));
            TimeSpan? a = await nodeSide, b = await torSide;
            Assert.True(a is not null && a < TimeSpan.FromSeconds(2), $"bgpd withdrew the ToR's routes after {a?.TotalMilliseconds ?? -1:0} ms\n{lab.Diagnostics()}");
            Assert.True(b is not null && b < TimeSpan.FromSeconds(2), $"the ToR withdrew node1's block after {b?.TotalMilliseconds ?? -1:0} ms\n{lab.Diagnostics()}");
        }
        finally
        {
            BfdLab.CutSilently(lab, n1, false);
        }
        await BgpLab.WaitAsync(() => HasRouteTo(n1, n2, lab) && HasRouteTo(n2, n1, lab), "both blocks back", 60, lab.Diagnostics);
    }

    [Fact]
    public async Task Without_bfd_the_same_silent_failure_waits_for_the_hold_timer()
    {
        await using BgpLab lab = await StartAsync(2, bfd: false);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        BfdLab.CutSilently(lab, n1, true);
        try
        {
            var sw = Stopwatch.StartNew();
            // Nothing notices for seconds: the routes stay, pointing into the dead link.
            TimeSpan? a = await TimeUntilAsync(() => !HasRouteTo(n1, n2, lab), TimeSpan.FromSeconds(5));
            Assert.True(a is null, $"routes left after {a?.TotalMilliseconds ?? -1:0} ms, without BFD");
            // Only the hold timer (9 s in the lab) ends the session, and as a graceful-restart helper bgpd then keeps
            // the ToR's routes as stale (RFC 4724): BFD is what takes them out at once.
            await BgpLab.WaitAsync(() => File.ReadAllText(n1.LogFile).Contains("hold timer expired", StringComparison.Ordinal), "the hold timer", 15, lab.Diagnostics);
            Assert.InRange(sw.Elapsed, TimeSpan.FromSeconds(7), TimeSpan.FromSeconds(15));
            Assert.True(HasRouteTo(n1, n2, lab), "the ToR's routes are kept as stale after the hold timer");
        }
        finally
        {
            BfdLab.CutSilently(lab, n1, false);
        }
    }
}
