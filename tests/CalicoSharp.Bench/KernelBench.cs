using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// Kernel programming: a tester peer announces N IPv4 /24s (next hop on the shared link) to the speaker,
/// which installs them in its namespace's kernel. Time from the first UPDATE sent to the last route in
/// the kernel, calicosharp-bgpd against BIRD 2's kernel protocol, in the same run.
/// </summary>
internal static class KernelBench
{
    private const string Speaker = "10.254.0.1";
    private const string Tester = "10.254.0.2";

    public static async Task RunAsync(TextWriter o, int prefixes)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kernel programming: {prefixes:N0} learned IPv4 /24s installed in the speaker's kernel (first UPDATE sent -> last route present)"));
        byte[] updates = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse(Tester), 0x0B000000, prefixes, 10);
        IPAddress last = new(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(0x0B000000u + ((uint)(prefixes - 1) << 8)));
        var rows = new List<(string Name, double Seconds, int Routes)>();
        for (int round = 0; round < 2; round++)
        {
            rows.Add(await RunOneAsync("bird (kernel protocol)", 12, updates, last, ns => SpeakerProcesses.StartBird(ns, $$"""
                router id {{Speaker}};
                protocol device { scan time 1; }
                protocol kernel { ipv4 { import none; export all; }; }
                protocol bgp tester { local {{Speaker}} as 65000; neighbor {{Tester}} as 65001; passive on; ipv4 { import all; export none; }; }
                """)).ConfigureAwait(false));
            rows.Add(await RunOneAsync("calicosharp-bgpd", 81, updates, last, ns => StartOurs(ns, bin)).ConfigureAwait(false));
        }
        o.WriteLine("| speaker | time (s) | routes in the kernel |");
        o.WriteLine("|---|---|---|");
        foreach ((string name, double s, int n) in rows)
        {
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {name} | {s:0.00} | {n:N0} |"));
        }
        double b = rows.Where(r => r.Name.StartsWith("bird", StringComparison.Ordinal)).Min(r => r.Seconds);
        double c = rows.Where(r => !r.Name.StartsWith("bird", StringComparison.Ordinal)).Min(r => r.Seconds);
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"best of 2: calicosharp-bgpd/BIRD {c / b:0.00}x (aim: at most 1x)"));
    }

    private static SpeakerProcesses.IRunning StartOurs(string ns, string bin) => SpeakerProcesses.StartBgpd(ns, bin, $$"""
        { "routerId": "{{Speaker}}", "asNumber": 65000, "ipv4Address": "{{Speaker}}/24", "listenAddress": "{{Speaker}}",
          "import": "all", "peers": [ { "peerIP": "{{Tester}}", "asNumber": 65001, "passive": true } ] }
        """, kernel: true);

    private static async Task<(string, double, int)> RunOneAsync(string name, byte protocol, byte[] updates, IPAddress last, Func<string, SpeakerProcesses.IRunning> start)
    {
        string lab = TestNetns.NewLabPrefix();
        using TestNetns ns = TestNetns.Create(lab + "-kp");
        using TestNetns peer = TestNetns.Create(lab + "-kt");
        TestNetns.Ip("link", "add", lab + "a", "netns", ns.Name, "type", "veth", "peer", "name", lab + "b", "netns", peer.Name);
        TestNetns.Ip("-n", ns.Name, "addr", "add", Speaker + "/24", "dev", lab + "a");
        TestNetns.Ip("-n", peer.Name, "addr", "add", Tester + "/24", "dev", lab + "b");
        TestNetns.Ip("-n", ns.Name, "link", "set", lab + "a", "up");
        TestNetns.Ip("-n", peer.Name, "link", "set", lab + "b", "up");
        using NetNs speakerNs = NetNs.Open(ns.Path);
        using NetNs testerNs = NetNs.Open(peer.Path);
        using SpeakerProcesses.IRunning speaker = start(ns.Name);
        var ep = new IPEndPoint(IPAddress.Parse(Speaker), 179);
        BgpTester tester = await SpeakerProcesses.ConnectTesterAsync(ep, Tester, 65001,
            f => testerNs.Run(() => new Socket(f, SocketType.Stream, ProtocolType.Tcp))).ConfigureAwait(false);
        var sw = Stopwatch.StartNew();
        await using (tester.ConfigureAwait(false))
        {
            await Task.Delay(500).ConfigureAwait(false);
            using RtNetlink nl = RtNetlink.Open(speakerNs);
            sw.Restart();
            await tester.SendAsync(updates).ConfigureAwait(false);
            while (nl.GetRoute(last, fibMatch: true) is not { Protocol: var p } || p != protocol)
            {
                if (sw.Elapsed > TimeSpan.FromMinutes(3))
                {
                    throw new TimeoutException($"{name}: the last route never reached the kernel");
                }
                await Task.Delay(5).ConfigureAwait(false);
            }
            double seconds = sw.Elapsed.TotalSeconds;
            int count = nl.ListRoutes(AddressFamily.InterNetwork).Count(r => r.Protocol == protocol);
            return (name, seconds, count);
        }
    }
}
