using System.Diagnostics;
using System.Globalization;
using System.Net;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// BFD in the lab (bgpd, BIRD 2 as the ToR): failover time from a silent link failure (iptables drops both ways on
/// the ToR's end of node1's link) to the routes leaving the kernels on both far sides — the ToR's routes leaving
/// node1's kernel (bgpd detected it) and node1's block leaving node2's kernel (BIRD detected it and withdrew it) — at
/// 300 ms × 3 and 100 ms × 3, against the hold timer at the lab's settings (9 s, no BFD) in the same run; and the CPU
/// bgpd and BIRD each spend on 100 BFD sessions at 100 ms between them.
/// </summary>
internal static class BfdBench
{
    public static async Task RunAsync(TextWriter o, int failures)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        string[]? command = File.Exists(bin) ? [bin] : null;
        o.WriteLine();
        o.WriteLine($"BFD failover: silent link failure (iptables DROP both ways on the ToR's end, no interface event) -> routes out of the far kernels; bgpd {(command is null ? "(built dll through dotnet)" : "NativeAOT")}, BIRD 2 as the ToR");
        foreach ((int ms, int mult, int n) in failures == 0 ? [] : new[] { (300, 3, failures), (100, 3, failures), (0, 0, Math.Max(1, failures / 7)) })
        {
            await FailoverAsync(o, ms, mult, n, command).ConfigureAwait(false);
        }
        await CpuAsync(o, 100, 100, command).ConfigureAwait(false);
    }

    private static async Task FailoverAsync(TextWriter o, int ms, int multiplier, int failures, string[]? command)
    {
        bool bfd = ms > 0;
        await using BgpLab lab = await BfdLab.StartAsync(2, bfd, bfd ? ms : 100, bfd ? multiplier : 3, l =>
        {
            if (command is not null)
            {
                l.BgpdCommand = command;
            }
        }).ConfigureAwait(false);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        using NetNs ns1 = NetNs.Open(n1.Netns.Path);
        using NetNs ns2 = NetNs.Open(n2.Netns.Path);
        using RtNetlink nl1 = RtNetlink.Open(ns1);
        using RtNetlink nl2 = RtNetlink.Open(ns2);
        IPAddress to2 = IPAddress.Parse(BfdLab.BlockOf(n2).Split('/')[0]);
        IPAddress to1 = IPAddress.Parse(BfdLab.BlockOf(n1).Split('/')[0]);
        bool Has(RtNetlink nl, IPAddress a) => nl.GetRoute(a, fibMatch: true) is { Protocol: 81 };
        var nodeSide = new List<double>();
        var torSide = new List<double>();
        TimeSpan limit = bfd ? TimeSpan.FromSeconds(10) : TimeSpan.FromSeconds(20);
        int lost = 0;
        for (int i = 0; i < failures; i++)
        {
            BfdLab.CutSilently(lab, n1, true);
            var sw = Stopwatch.StartNew();
            double? a = null, b = null;
            while (sw.Elapsed < limit && (a is null || b is null))
            {
                if (a is null && !Has(nl1, to2))
                {
                    a = sw.Elapsed.TotalMilliseconds;
                }
                if (b is null && !Has(nl2, to1))
                {
                    b = sw.Elapsed.TotalMilliseconds;
                }
                await Task.Delay(1).ConfigureAwait(false);
            }
            BfdLab.CutSilently(lab, n1, false);
            if (a is { } x)
            {
                nodeSide.Add(x);
            }
            if (b is { } y)
            {
                torSide.Add(y);
            }
            lost += a is null || b is null ? 1 : 0;
            // Back to the start: both blocks in both kernels, BFD Up again.
            await BgpLab.WaitAsync(() => Has(nl1, to2) && Has(nl2, to1) && (!bfd || BfdLab.BirdUp(lab, n1)), "recovery", 180, lab.Diagnostics).ConfigureAwait(false);
            await Task.Delay(500).ConfigureAwait(false);
        }
        string what = bfd ? $"BFD {ms} ms x {multiplier} (detection {ms * multiplier} ms)" : "no BFD, hold timer 9 s (the lab's BIRD: hold 9, keepalive 3)";
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what}, {failures} failures:"));
        o.WriteLine($"  ToR's routes out of node1's kernel (bgpd detects): {Summary(nodeSide, failures, limit)}");
        o.WriteLine($"  node1's block out of node2's kernel (BIRD detects, withdraws): {Summary(torSide, failures, limit)}");
        if (lost > 0)
        {
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {lost} failure(s) not routed around on both sides within {limit.TotalSeconds:0} s"));
        }
    }

    private static string Summary(List<double> samples, int failures, TimeSpan limit)
    {
        if (samples.Count == 0)
        {
            return string.Create(CultureInfo.InvariantCulture, $"never within {limit.TotalSeconds:0} s ({failures} tries)");
        }
        samples.Sort();
        double P(double q) => samples[Math.Min(samples.Count - 1, (int)Math.Ceiling(q * samples.Count) - 1)];
        return string.Create(CultureInfo.InvariantCulture, $"p50 {P(0.5):0} ms, p99 {P(0.99):0} ms, min {samples[0]:0} ms ({samples.Count} of {failures})");
    }

    /// <summary>
    /// bgpd and BIRD 2 with <paramref name="sessions"/> BFD sessions between them at <paramref name="ms"/> ms × 3, in
    /// the same run: node1 and the ToR each get one more address per session, pair <c>i</c> on its own /24
    /// (10.99.i.1 on node1, 10.99.i.2 on the ToR) so that each side sends from the address the other expects; each
    /// side has a BGP session with <c>bfd on</c> per pair (bgpd: file peers with <c>"bfd": true</c> and the
    /// BFDConfiguration's timers; BIRD: <c>protocol bgp … bfd on</c> and <c>protocol bfd</c> at the same intervals).
    /// CPU of each over 20 s once every session is Up on both sides.
    /// </summary>
    private static async Task CpuAsync(TextWriter o, int sessions, int ms, string[]? command)
    {
        const int multiplier = 3;
        uint asn = 0;
        string BirdPeers(uint nodeAs) => string.Concat(Enumerable.Range(1, sessions).Select(i => string.Create(CultureInfo.InvariantCulture,
            $"protocol bgp bfd{i} {{ local as {BgpLab.TorAsPerCompute}; neighbor 10.99.{i}.1 as {nodeAs}; source address 10.99.{i}.2; hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 2; ipv4 {{ import none; export none; }}; bfd on; }}\n")));
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 1, l =>
        {
            if (command is not null)
            {
                l.BgpdCommand = command;
            }
            l.TorExtra = BfdLab.BirdBfd(ms, multiplier);
            l.TorPeerExtra = _ => "bfd on;";
        }, startBgpd: false).ConfigureAwait(false);
        LabNode n1 = lab.Nodes[0];
        asn = n1.As;
        string torIf = $"{lab.Prefix}t1", nodeIf = $"{lab.Prefix}n1";
        for (int i = 1; i <= sessions; i++)
        {
            TestNetns.Ip("-n", n1.Netns.Name, "addr", "add", $"10.99.{i}.1/24", "dev", nodeIf);
            TestNetns.Ip("-n", lab.Tor.Name, "addr", "add", $"10.99.{i}.2/24", "dev", torIf);
        }
        lab.Bird!.Reconfigure(lab.TorConfig() + BirdPeers(asn));
        await lab.PutAsync(BfdLab.ConfigurationKey, BfdLab.Configuration(ms, multiplier)).ConfigureAwait(false);
        string config = Path.Combine(lab.Directory, "bgpd-bfd.json");
        await File.WriteAllTextAsync(config, "{\"peers\":[" + string.Join(",", Enumerable.Range(1, sessions).Select(i =>
            $$"""{"name":"bfd{{i}}","peerIP":"10.99.{{i}}.2","asNumber":{{BgpLab.TorAsPerCompute}},"sourceAddress":"10.99.{{i}}.1","bfd":true}""")) + "]}").ConfigureAwait(false);
        lab.StartBgpd(n1, "--config", config, "--log-level", "warning");
        async Task<int> BgpdUpAsync()
        {
            ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n1.ApiSocket, "-o", "json").ConfigureAwait(false);
            if (r.ExitCode != 0)
            {
                return 0;
            }
            using var d = System.Text.Json.JsonDocument.Parse(r.Stdout);
            return d.RootElement.GetProperty("peers").EnumerateArray().Count(p => p.TryGetProperty("bfd", out var b) && b.GetProperty("state").GetString() == "Up");
        }
        int BirdUp() => lab.Bird.Birdc("show bfd sessions").Split('\n').Count(l => l.StartsWith("10.99.", StringComparison.Ordinal) && l.Contains(" Up ", StringComparison.Ordinal));
        var wait = Stopwatch.StartNew();
        while (await BgpdUpAsync().ConfigureAwait(false) < sessions || BirdUp() < sessions)
        {
            if (wait.Elapsed > TimeSpan.FromSeconds(120))
            {
                throw new TimeoutException($"BFD sessions Up after 120 s: bgpd {await BgpdUpAsync().ConfigureAwait(false)}, BIRD {BirdUp()} of {sessions}\n{lab.Bird.Birdc("show bfd sessions")}\n{lab.Diagnostics()}");
            }
            await Task.Delay(500).ConfigureAwait(false);
        }
        await Task.Delay(3000).ConfigureAwait(false);
        int bgpd = n1.Bgpd!.Id, bird = lab.Bird.Pid;
        double c0 = BfdLab.CpuSeconds(bgpd), b0 = BfdLab.CpuSeconds(bird);
        var sw = Stopwatch.StartNew();
        await Task.Delay(TimeSpan.FromSeconds(20)).ConfigureAwait(false);
        double secs = sw.Elapsed.TotalSeconds;
        double c = (BfdLab.CpuSeconds(bgpd) - c0) / secs, b = (BfdLab.CpuSeconds(bird) - b0) / secs;
        int bgpdUp = await BgpdUpAsync().ConfigureAwait(false), birdUp = BirdUp();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"CPU with {sessions} BFD sessions at {ms} ms x {multiplier} between bgpd (node1) and BIRD 2 (the ToR), each pair on its own /24, 20 s once all are Up ({sessions * 1000 / ms} packets/s each way; Up at the end: bgpd {bgpdUp}, BIRD {birdUp}):"));
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"  bgpd {c * 100:0.0} % of one core, BIRD {b * 100:0.0} % (bgpd/BIRD {(b > 0 ? c / b : double.NaN):0.00}x); load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}"));
        string status = File.ReadAllText($"/proc/{bgpd}/status");
        o.WriteLine($"  bgpd: threads {status.Split('\n').First(l => l.StartsWith("Threads:", StringComparison.Ordinal)).Split(':')[1].Trim()}, {status.Split('\n').First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Trim()}");
    }
}
