using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// Route-server throughput: a tester peer sends N IPv4 /24s (10 per UPDATE, each UPDATE its own AS_PATH)
/// to the speaker, which re-advertises them to a second tester peer. Measured: first UPDATE sent to last
/// prefix received, the speaker's CPU seconds and peak RSS. The same harness runs calicosharp-bgpd and
/// BIRD 2, each alone in its own network namespace, in the same run.
/// </summary>
internal static class BgpBench
{
    private const string Speaker = "10.255.0.1";
    private const string SenderIp = "10.255.0.2";
    private const string ReceiverIp = "10.255.0.3";

    public static async Task RunAsync(TextWriter o, int prefixes)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        if (!File.Exists(bin))
        {
            o.WriteLine($"bgp: {bin} missing (make bench publishes it)");
            return;
        }
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"BGP route server: {prefixes:N0} IPv4 /24s, 10 per UPDATE, each UPDATE its own AS_PATH; sender -> speaker -> receiver over a veth pair between two namespaces"));
        byte[] updates = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse(SenderIp), 0x0B000000, prefixes, 10);
        var ours = new List<Result>();
        var bird = new List<Result>();
        for (int round = 0; round < 2; round++)
        {
            bird.Add(await RunOneAsync("bird", updates, prefixes, ns => StartBird(ns)).ConfigureAwait(false));
            // The footprint run is bgpd as deployed: control API and metrics on, and both asked once.
            ours.Add(await RunOneAsync("calicosharp-bgpd", updates, prefixes, ns => StartOurs(ns, bin, prefixes < 100_000)).ConfigureAwait(false));
        }
        o.WriteLine("| speaker | time (s) | CPU (s) | peak RSS (MiB) |");
        o.WriteLine("|---|---|---|---|");
        foreach (Result r in bird.Concat(ours))
        {
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Seconds:0.00} | {r.Cpu:0.00} | {r.PeakRssMiB:0} |"));
        }
        Result b = Best(bird);
        Result c = Best(ours);
        o.WriteLine(prefixes >= 100_000
            ? string.Create(CultureInfo.InvariantCulture, $"best of 2: calicosharp-bgpd/BIRD time {c.Seconds / b.Seconds:0.00}x, CPU {c.Cpu / b.Cpu:0.00}x, peak RSS {c.PeakRssMiB / b.PeakRssMiB:0.00}x (aim: at most 1x)")
            : string.Create(CultureInfo.InvariantCulture, $"footprint: calicosharp-bgpd peak RSS {c.PeakRssMiB:0.0} MiB (control API and metrics on, each queried), BIRD {b.PeakRssMiB:0.0} MiB (aim: under 20 MiB)"));
    }

    private static Result Best(List<Result> rs) => rs.OrderBy(r => r.Seconds).First();

    private sealed record Result(string Name, double Seconds, double Cpu, double PeakRssMiB);

    private static SpeakerProcesses.IRunning StartBird(string ns) => SpeakerProcesses.StartBird(ns, $$"""
        router id {{Speaker}};
        protocol device { scan time 1; }
        protocol bgp sender { local {{Speaker}} as 65000; neighbor {{SenderIp}} as 65001; passive on; ipv4 { import all; export all; }; }
        protocol bgp receiver { local {{Speaker}} as 65000; neighbor {{ReceiverIp}} as 65002; passive on; ipv4 { import all; export all; }; }
        """);

    private static SpeakerProcesses.IRunning StartOurs(string ns, string bin, bool api) => SpeakerProcesses.StartBgpd(ns, bin, metricsAddress: api ? Speaker + ":9091" : null, configJson: $$"""
        {
          "routerId": "{{Speaker}}", "asNumber": 65000, "listenAddress": "{{Speaker}}", "import": "all",
          "peers": [
            { "peerIP": "{{SenderIp}}", "asNumber": 65001, "passive": true },
            { "peerIP": "{{ReceiverIp}}", "asNumber": 65002, "passive": true }
          ]
        }
        """);

    private static async Task<Result> RunOneAsync(string name, byte[] updates, int prefixes, Func<string, SpeakerProcesses.IRunning> start)
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
        double cpu0 = CpuSeconds(speaker.Pid);
        receiver.Mark();
        Task<TimeSpan> done = receiver.WhenAnnounced(prefixes);
        await sender.SendAsync(updates).ConfigureAwait(false);
        TimeSpan took = await done.WaitAsync(TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        double cpu = CpuSeconds(speaker.Pid) - cpu0;
        if (speaker.ApiSocket is { } socket)
        {
            await QueryApiAsync(ns.Name, socket).ConfigureAwait(false);
        }

        double rss = PeakRssKiB(speaker.Pid) / 1024.0;
        return new Result(name, took.TotalSeconds, cpu, rss);
    }

    /// <summary>What an operator's tools ask: node status and the routes over the socket, a Prometheus scrape.</summary>
    private static async Task QueryApiAsync(string ns, string socket)
    {
        await using var client = new CalicoSharp.Rpc.GrpcClient(new CalicoSharp.Rpc.GrpcEndpoint("unix", "localhost", 0, socket), new CalicoSharp.Rpc.GrpcClientOptions { MaxReceiveMessageSize = 1 << 30 });
        var api = new CalicoSharp.Proto.Bgpd.BgpdClient(client.CreateCallInvoker());
        await api.GetStatusAsync(new CalicoSharp.Proto.StatusRequest(), deadline: DateTime.UtcNow.AddSeconds(10)).ResponseAsync.ConfigureAwait(false);
        await api.ListRoutesAsync(new CalicoSharp.Proto.RoutesRequest(), deadline: DateTime.UtcNow.AddSeconds(10)).ResponseAsync.ConfigureAwait(false);
        ProcessResult scrape = await ProcessRunner.RunAsync("ip", ["netns", "exec", ns, "curl", "-sf", $"http://{Speaker}:9091/metrics"], TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        if (scrape.ExitCode != 0 || !scrape.Stdout.Contains("calicosharp_bgp_sessions", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"metrics scrape failed: {scrape.Stderr}");
        }
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
