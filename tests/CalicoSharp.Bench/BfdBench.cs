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
/// bgpd spends on 100 BFD sessions at 100 ms.
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
    /// Two bgpd with <paramref name="sessions"/> BFD sessions between them at <paramref name="ms"/> ms: node1 and the
    /// ToR's namespace each get that many more addresses on their link; each bgpd has a file peer with
    /// <c>bfd: true</c> for each of the other's addresses, from its own address of the same index (BFDConfiguration
    /// from etcd for node1's bgpd, the file's default timers — 100 ms send — for the other). CPU of each over 20 s
    /// once every session is Up.
    /// </summary>
    private static async Task CpuAsync(TextWriter o, int sessions, int ms, string[]? command)
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 1, l =>
        {
            if (command is not null)
            {
                l.BgpdCommand = command;
            }
        }, startBgpd: false).ConfigureAwait(false);
        LabNode n1 = lab.Nodes[0];
        string torIf = $"{lab.Prefix}t1", nodeIf = $"{lab.Prefix}n1";
        for (int i = 1; i <= sessions; i++)
        {
            TestNetns.Ip("-n", n1.Netns.Name, "addr", "add", $"10.99.1.{i}/16", "dev", nodeIf);
            TestNetns.Ip("-n", lab.Tor.Name, "addr", "add", $"10.99.2.{i}/16", "dev", torIf);
        }
        await lab.PutAsync(BfdLab.ConfigurationKey, BfdLab.Configuration(ms)).ConfigureAwait(false);
        // The far bgpd shares the ToR's namespace with BIRD, which holds port 179.
        string Peers(string to, string from, uint asn) => (to == "10.99.1" ? "{\"listenPort\":1179," : "{") + "\"peers\":[" + string.Join(",", Enumerable.Range(1, sessions).Select(i =>
            $$"""{"name":"bfd{{i}}","peerIP":"{{to}}.{{i}}","asNumber":{{asn}},"sourceAddress":"{{from}}.{{i}}","bfd":true}""")) + "]}";
        string config1 = Path.Combine(lab.Directory, "bgpd-bfd1.json"), config2 = Path.Combine(lab.Directory, "bgpd-bfd2.json");
        await File.WriteAllTextAsync(config1, Peers("10.99.2", "10.99.1", 65100)).ConfigureAwait(false);
        await File.WriteAllTextAsync(config2, Peers("10.99.1", "10.99.2", n1.As)).ConfigureAwait(false);
        lab.StartBgpd(n1, "--config", config1);
        string socket2 = Path.Combine(lab.Directory, "bgpd-far.sock");
        using BgpdProcess far = BgpdProcess.Start(["ip", "netns", "exec", lab.Tor.Name, .. (command ?? ["dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd")])],
            ["--node-name", "far", "--ipv4-address", "10.99.2.1/16", "--as", "65100", "--config", config2, "--no-kernel", "--api-socket", socket2,
             "--state-dir", Path.Combine(lab.Directory, "state-far"), "--log-level", "warning"], socket2);
        async Task<int> UpAsync(string socket)
        {
            ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", socket, "-o", "json").ConfigureAwait(false);
            if (r.ExitCode != 0)
            {
                return 0;
            }
            using var d = System.Text.Json.JsonDocument.Parse(r.Stdout);
            return d.RootElement.GetProperty("peers").EnumerateArray().Count(p => p.TryGetProperty("bfd", out var b) && b.GetProperty("state").GetString() == "Up");
        }
        var wait = Stopwatch.StartNew();
        while (await UpAsync(n1.ApiSocket).ConfigureAwait(false) < sessions || await UpAsync(socket2).ConfigureAwait(false) < sessions)
        {
            if (wait.Elapsed > TimeSpan.FromSeconds(90))
            {
                throw new TimeoutException($"BFD sessions Up after 90 s: node1 {await UpAsync(n1.ApiSocket).ConfigureAwait(false)}, far {await UpAsync(socket2).ConfigureAwait(false)} of {sessions}\n{lab.Diagnostics()}");
            }
            await Task.Delay(500).ConfigureAwait(false);
        }
        await Task.Delay(3000).ConfigureAwait(false);
        int bgpd = n1.Bgpd!.Id;
        int farPid = int.Parse(TestNetns.Ip("netns", "pids", lab.Tor.Name).Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .First(p => File.ReadAllText($"/proc/{p.Trim()}/cmdline").Contains("far", StringComparison.Ordinal)).Trim(), CultureInfo.InvariantCulture);
        double c0 = BfdLab.CpuSeconds(bgpd), f0 = BfdLab.CpuSeconds(farPid);
        var sw = Stopwatch.StartNew();
        await Task.Delay(TimeSpan.FromSeconds(20)).ConfigureAwait(false);
        double secs = sw.Elapsed.TotalSeconds;
        double c = (BfdLab.CpuSeconds(bgpd) - c0) / secs, f = (BfdLab.CpuSeconds(farPid) - f0) / secs;
        int stillUp = await UpAsync(n1.ApiSocket).ConfigureAwait(false);
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"CPU with {sessions} BFD sessions at {ms} ms between two bgpd ({stillUp} Up after {secs:0} s; {sessions * 1000 / ms} packets/s each way): node1's bgpd {c * 100:0.0} % of one core, the other {f * 100:0.0} %"));
        string status = File.ReadAllText($"/proc/{bgpd}/status");
        o.WriteLine($"  node1's bgpd: threads {status.Split('\n').First(l => l.StartsWith("Threads:", StringComparison.Ordinal)).Split(':')[1].Trim()}, {status.Split('\n').First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal)).Trim()}");
    }
}
