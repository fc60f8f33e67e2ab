using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// What bgpd costs beside BIRD 2, measured with the same harness in the same run (issue 21):
/// <list type="bullet">
/// <item>Relay: a tester peer sends N IPv4 /24s (10 per UPDATE, each UPDATE its own AS_PATH) to the speaker, which
/// re-advertises them to a second tester peer; first UPDATE sent to last prefix received, the speaker's CPU
/// seconds and peak RSS, and for bgpd the bytes it allocated per UPDATE received and its collections.</item>
/// <item>At rest: two peers and 1,000 routes, bgpd as deployed (control API and metrics on, each queried once); its
/// resident memory once settled, and of what pages it is made (from /proc/PID/smaps).</item>
/// </list>
/// Each speaker runs alone in its own network namespace. bgpd runs with its control API and metrics on in every
/// run: the same binary and configuration a node runs. <c>BENCH_BGPD_&lt;NAME&gt;=value</c> in the environment
/// sets <c>&lt;NAME&gt;=value</c> for bgpd only (e.g. <c>BENCH_BGPD_DOTNET_GCConserveMemory=5</c>), to try the
/// runtime's settings without a rebuild.
/// </summary>
internal static class BgpBench
{
    private const string Speaker = "10.255.0.1";
    private const string SenderIp = "10.255.0.2";
    private const string ReceiverIp = "10.255.0.3";
    private const string Metrics = Speaker + ":9091";
    private const int AtRestRoutes = 1000;

    public static async Task RunAsync(TextWriter o, int prefixes, int rounds)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        if (!File.Exists(bin))
        {
            o.WriteLine($"bgp: {bin} missing (make bench publishes it)");
            return;
        }
        Dictionary<string, string> tunables = Tunables();
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"BGP route server, bgpd beside BIRD 2: {prefixes:N0} IPv4 /24s relayed, 10 per UPDATE, each UPDATE its own AS_PATH; sender -> speaker -> receiver over a veth pair between two namespaces; {rounds} round(s), load average {LoadAverage()}"));
        if (tunables.Count > 0)
        {
            o.WriteLine($"bgpd environment: {string.Join(" ", tunables.Select(kv => $"{kv.Key}={kv.Value}"))}");
        }
        byte[] updates = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse(SenderIp), 0x0B000000, prefixes, 10);
        var relay = new List<(Result Bird, Result Ours)>();
        for (int round = 0; round < rounds; round++)
        {
            Result b = await RunOneAsync("bird", updates, prefixes, atRest: false, ns => StartBird(ns)).ConfigureAwait(false);
            Result c = await RunOneAsync("calicosharp-bgpd", updates, prefixes, atRest: false, ns => StartOurs(ns, bin, tunables)).ConfigureAwait(false);
            relay.Add((b, c));
        }
        o.WriteLine("| round | speaker | wall (s) | CPU (s) | peak RSS (MiB) | allocated per UPDATE (B) | GCs gen0/1/2 |");
        o.WriteLine("|---|---|---|---|---|---|---|");
        for (int i = 0; i < relay.Count; i++)
        {
            foreach (Result r in new[] { relay[i].Bird, relay[i].Ours })
            {
                o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {i + 1} | {r.Name} | {r.Seconds:0.00} | {r.Cpu:0.00} | {r.PeakRssMiB:0.0} | {(r.Gc is { } g ? (g.Allocated / (prefixes / 10.0)).ToString("0", CultureInfo.InvariantCulture) : "-")} | {(r.Gc is { } h ? $"{h.Gen0}/{h.Gen1}/{h.Gen2}" : "-")} |"));
            }
        }
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bgpd/BIRD per round: wall {Ratios(relay, r => r.Seconds)}, CPU {Ratios(relay, r => r.Cpu)}, peak RSS {Ratios(relay, r => r.PeakRssMiB)} (aim: at most 1x each)"));

        byte[] few = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse(SenderIp), 0x0B000000, AtRestRoutes, 10);
        var rest = new List<(Result Bird, Result Ours)>();
        for (int round = 0; round < rounds; round++)
        {
            Result b = await RunOneAsync("bird", few, AtRestRoutes, atRest: true, ns => StartBird(ns)).ConfigureAwait(false);
            Result c = await RunOneAsync("calicosharp-bgpd", few, AtRestRoutes, atRest: true, ns => StartOurs(ns, bin, tunables)).ConfigureAwait(false);
            rest.Add((b, c));
        }
        o.WriteLine();
        o.WriteLine($"At rest: 2 peers, {AtRestRoutes:N0} routes; bgpd with the control API and metrics on, each queried once; RSS 2 s after the last route, from /proc/PID/smaps");
        o.WriteLine("| round | speaker | RSS (MiB) | peak RSS (MiB) | binary's file pages (code, read-only data) | binary's zero-filled data (.bss; NativeAOT: runtime data rehydrated at start) | shared libraries | other anonymous (GC heap, malloc, stacks) | GC heap (live after the last GC) |");
        o.WriteLine("|---|---|---|---|---|---|---|---|---|");
        for (int i = 0; i < rest.Count; i++)
        {
            foreach (Result r in new[] { rest[i].Bird, rest[i].Ours })
            {
                Smaps m = r.Smaps!;
                o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {i + 1} | {r.Name} | {m.Rss:0.0} | {r.PeakRssMiB:0.0} | {m.Binary:0.0} | {m.BinaryBss:0.0} | {m.Libraries:0.0} | {m.Anonymous:0.0} | {(r.GcHeapMiB is { } h ? h.ToString("0.0", CultureInfo.InvariantCulture) : "-")} |"));
            }
        }
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bgpd/BIRD per round: RSS at rest {Ratios(rest, r => r.Smaps!.Rss)}, peak {Ratios(rest, r => r.PeakRssMiB)} (aim: at most 2x)"));
    }

    private static string Ratios(List<(Result Bird, Result Ours)> runs, Func<Result, double> f) =>
        string.Join("/", runs.Select(r => (f(r.Ours) / f(r.Bird)).ToString("0.00", CultureInfo.InvariantCulture))) + "x";

    private static string LoadAverage() => string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3));

    /// <summary>BENCH_BGPD_&lt;NAME&gt;=value: &lt;NAME&gt;=value in bgpd's environment.</summary>
    private static Dictionary<string, string> Tunables()
    {
        const string prefix = "BENCH_BGPD_";
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (System.Collections.DictionaryEntry e in Environment.GetEnvironmentVariables())
        {
            if (e.Key is string k && k.StartsWith(prefix, StringComparison.Ordinal) && k.Length > prefix.Length)
            {
                result[k[prefix.Length..]] = e.Value as string ?? "";
            }
        }
        return result;
    }

    private sealed record GcFigures(long Allocated, long Gen0, long Gen1, long Gen2);

    private sealed record Smaps(double Rss, double Binary, double BinaryBss, double Libraries, double Anonymous);

    private sealed record Result(string Name, double Seconds, double Cpu, double PeakRssMiB, GcFigures? Gc, Smaps? Smaps, double? GcHeapMiB);

    private static SpeakerProcesses.IRunning StartBird(string ns) => SpeakerProcesses.StartBird(ns, $$"""
        router id {{Speaker}};
        protocol device { scan time 1; }
        protocol bgp sender { local {{Speaker}} as 65000; neighbor {{SenderIp}} as 65001; passive on; ipv4 { import all; export all; }; }
        protocol bgp receiver { local {{Speaker}} as 65000; neighbor {{ReceiverIp}} as 65002; passive on; ipv4 { import all; export all; }; }
        """);

    private static SpeakerProcesses.IRunning StartOurs(string ns, string bin, Dictionary<string, string> environment) => SpeakerProcesses.StartBgpd(ns, bin, metricsAddress: Metrics, environment: environment, configJson: $$"""
        {
          "routerId": "{{Speaker}}", "asNumber": 65000, "listenAddress": "{{Speaker}}", "import": "all",
          "peers": [
            { "peerIP": "{{SenderIp}}", "asNumber": 65001, "passive": true },
            { "peerIP": "{{ReceiverIp}}", "asNumber": 65002, "passive": true }
          ]
        }
        """);

    private static async Task<Result> RunOneAsync(string name, byte[] updates, int prefixes, bool atRest, Func<string, SpeakerProcesses.IRunning> start)
    {
        string lab = TestNetns.NewLabPrefix();
        using TestNetns ns = TestNetns.Create(lab + "-rs");
        using TestNetns peers = TestNetns.Create(lab + "-peers");
        TestNetns.Ip("link", "add", lab + "a", "netns", ns.Name, "type", "veth", "peer", "name", lab + "b", "netns", peers.Name);
        TestNetns.Ip("-n", ns.Name, "addr", "add", Speaker + "/24", "dev", lab + "a");
        TestNetns.Ip("-n", peers.Name, "addr", "add", SenderIp + "/24", "dev", lab + "b");
        TestNetns.Ip("-n", peers.Name, "addr", "add", ReceiverIp + "/24", "dev", lab + "b");
        TestNetns.Ip("-n", ns.Name, "link", "set", lab + "a", "up");
        TestNetns.Ip("-n", peers.Name, "link", "set", lab + "b", "up");
        using NetNs handle = NetNs.Open(peers.Path);
        using SpeakerProcesses.IRunning speaker = start(ns.Name);
        Func<AddressFamily, Socket> factory = f => handle.Run(() => new Socket(f, SocketType.Stream, ProtocolType.Tcp));
        var ep = new IPEndPoint(IPAddress.Parse(Speaker), 179);
        await using BgpTester receiver = await SpeakerProcesses.ConnectTesterAsync(ep, ReceiverIp, 65002, factory).ConfigureAwait(false);
        await using BgpTester sender = await SpeakerProcesses.ConnectTesterAsync(ep, SenderIp, 65001, factory).ConfigureAwait(false);
        await Task.Delay(500).ConfigureAwait(false);
        Dictionary<string, double>? before = speaker.ApiSocket is null ? null : await ScrapeAsync(ns.Name).ConfigureAwait(false);
        double cpu0 = CpuSeconds(speaker.Pid);
        receiver.Mark();
        Task<TimeSpan> done = receiver.WhenAnnounced(prefixes);
        await sender.SendAsync(updates).ConfigureAwait(false);
        TimeSpan took = await done.WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        double cpu = CpuSeconds(speaker.Pid) - cpu0;
        GcFigures? gc = null;
        double? gcHeap = null;
        if (before is not null)
        {
            Dictionary<string, double> after = await ScrapeAsync(ns.Name).ConfigureAwait(false);
            double Delta(string key) => after[key] - before[key];
            gc = new GcFigures((long)Delta("dotnet_gc_allocated_bytes_total"), (long)Delta("dotnet_gc_collections_total{generation=\"0\"}"),
                (long)Delta("dotnet_gc_collections_total{generation=\"1\"}"), (long)Delta("dotnet_gc_collections_total{generation=\"2\"}"));
        }
        Smaps? smaps = null;
        if (atRest)
        {
            if (speaker.ApiSocket is { } socket)
            {
                await QueryApiAsync(socket).ConfigureAwait(false);
            }
            await Task.Delay(2000).ConfigureAwait(false);
            smaps = ReadSmaps(speaker.Pid);
            if (speaker.ApiSocket is not null)
            {
                gcHeap = (await ScrapeAsync(ns.Name).ConfigureAwait(false))["dotnet_gc_heap_size_bytes"] / 1048576.0;
            }
        }

        double rss = PeakRssKiB(speaker.Pid) / 1024.0;
        return new Result(name, took.TotalSeconds, cpu, rss, gc, smaps, gcHeap);
    }

    /// <summary>What an operator's tools ask: node status and the routes over the socket.</summary>
    private static async Task QueryApiAsync(string socket)
    {
        await using var client = new CalicoSharp.Rpc.GrpcClient(new CalicoSharp.Rpc.GrpcEndpoint("unix", "localhost", 0, socket), new CalicoSharp.Rpc.GrpcClientOptions { MaxReceiveMessageSize = 1 << 30 });
        var api = new CalicoSharp.Proto.Bgpd.BgpdClient(client.CreateCallInvoker());
        await api.GetStatusAsync(new CalicoSharp.Proto.StatusRequest(), deadline: DateTime.UtcNow.AddSeconds(10)).ResponseAsync.ConfigureAwait(false);
        await api.ListRoutesAsync(new CalicoSharp.Proto.RoutesRequest(), deadline: DateTime.UtcNow.AddSeconds(10)).ResponseAsync.ConfigureAwait(false);
    }

    /// <summary>A Prometheus scrape of bgpd, as sample name (with labels) → value.</summary>
    private static async Task<Dictionary<string, double>> ScrapeAsync(string ns)
    {
        ProcessResult scrape = await ProcessRunner.RunAsync("ip", ["netns", "exec", ns, "curl", "-sf", $"http://{Metrics}/metrics"], TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        if (scrape.ExitCode != 0 || !scrape.Stdout.Contains("calicosharp_bgp_sessions", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"metrics scrape failed: {scrape.Stderr}");
        }
        var samples = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (string line in scrape.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int space = line.LastIndexOf(' ');
            if (!line.StartsWith('#') && space > 0)
            {
                samples[line[..space]] = double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
            }
        }
        return samples;
    }

    /// <summary>Resident pages by kind of mapping: the executable's own file, its .bss (the anonymous mapping that
    /// directly follows its last file mapping), other files (shared libraries), other anonymous memory.</summary>
    private static Smaps ReadSmaps(int pid)
    {
        string exe = File.ResolveLinkTarget($"/proc/{pid}/exe", returnFinalTarget: true)?.FullName ?? "";
        long binary = 0, bss = 0, libraries = 0, anonymous = 0;
        string? path = null;
        bool isBss = false;
        ulong exeEnd = 0;
        foreach (string line in File.ReadLines($"/proc/{pid}/smaps"))
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length >= 5 && f[0].Contains('-', StringComparison.Ordinal) && !f[0].EndsWith(':'))
            {
                // A mapping's header line: address range, perms, offset, device, inode, [path].
                path = f.Length >= 6 ? string.Join(' ', f[5..]) : null;
                string[] range = f[0].Split('-');
                ulong start = ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                isBss = path is null && start == exeEnd;
                if (path == exe)
                {
                    exeEnd = ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                }
            }
            else if (f.Length >= 2 && f[0] == "Rss:")
            {
                long kib = long.Parse(f[1], CultureInfo.InvariantCulture);
                if (path is not null && path == exe)
                {
                    binary += kib;
                }
                else if (isBss)
                {
                    bss += kib;
                }
                else if (path is not null && path.StartsWith('/'))
                {
                    libraries += kib;
                }
                else
                {
                    anonymous += kib;
                }
            }
        }
        return new Smaps((binary + bss + libraries + anonymous) / 1024.0, binary / 1024.0, bss / 1024.0, libraries / 1024.0, anonymous / 1024.0);
    }

    private static double CpuSeconds(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name; clock ticks of 1/100 s.
        return (long.Parse(f[11], CultureInfo.InvariantCulture) + long.Parse(f[12], CultureInfo.InvariantCulture)) / 100.0;
    }

    private static long PeakRssKiB(int pid)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }
        return 0;
    }
}
