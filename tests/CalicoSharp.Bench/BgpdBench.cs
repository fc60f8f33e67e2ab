using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Ipam;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// bgpd in the lab (NativeAOT binary, BIRD 2 as the ToR, AS per compute server): convergence from a block
/// claim on node1 to the route in node2's kernel, and bgpd's footprint.
/// </summary>
internal static class BgpdBench
{
    public static async Task RunAsync(TextWriter o, int claims)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bgpd convergence: {claims} block claims on node1 (a pool of /32 blocks: every address claims a block) -> route in node2's kernel via the BIRD ToR"));
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2, l => l.BgpdCommand = [bin]).ConfigureAwait(false);
        await lab.Ipam.AddPoolAsync(new PoolRequest { Cidr = "10.250.0.0/16", Name = "bench-32", BlockSize = 32 }).ConfigureAwait(false);
        await lab.Ipam.ConfigureAsync(strictAffinity: null, maxBlocksPerHost: claims + 10).ConfigureAwait(false);
        LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
        await BgpLab.WaitAsync(() => lab.Bird!.Birdc("show protocols").Split('\n').Count(l => l.Contains("Established", StringComparison.Ordinal)) == 2, "sessions", 60, lab.Diagnostics).ConfigureAwait(false);
        await Task.Delay(2000).ConfigureAwait(false);
        using NetNs ns2 = NetNs.Open(n2.Netns.Path);
        using RtNetlink nl = RtNetlink.Open(ns2);
        var samples = new List<double>();
        // Claim -1 warms up this process (JIT of the IPAM client: ~140 ms, not bgpd's time) and is not counted.
        for (int i = -1; i < claims; i++)
        {
            var sw = Stopwatch.StartNew();
            IReadOnlyList<AssignedAddress> got = await lab.Ipam.AutoAssignAsync(new AutoAssignRequest
            {
                Node = n1.Name,
                HandleId = $"bench-{i}",
                Num4 = 1,
                Ipv4Pools = ["bench-32"],
            }).ConfigureAwait(false);
            IPAddress a = got[0].Address;
            while (true)
            {
                Route? r = nl.GetRoute(a, fibMatch: true);
                if (r is { Protocol: 81 } && r.PrefixLength == 32)
                {
                    break;
                }
                if (sw.Elapsed > TimeSpan.FromSeconds(10))
                {
                    throw new TimeoutException($"{a} never reached node2's kernel\n{lab.Diagnostics()}");
                }
                await Task.Delay(1).ConfigureAwait(false);
            }
            if (i >= 0)
            {
                samples.Add(sw.Elapsed.TotalMilliseconds);
            }
        }
        string slowest = string.Join(", ", samples.Select((ms, i) => (ms, i)).OrderByDescending(x => x.ms).Take(3).Select(x => string.Create(CultureInfo.InvariantCulture, $"claim {x.i}: {x.ms:0.0} ms")));
        samples.Sort();
        o.WriteLine($"slowest: {slowest}");
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"convergence: p50 {samples[samples.Count / 2]:0.0} ms, p99 {samples[Math.Min(samples.Count - 1, (int)(samples.Count * 0.99))]:0.0} ms, max {samples[^1]:0.0} ms (aim: under 100 ms)"));
        string status = File.ReadAllText($"/proc/{n1.Bgpd!.Id}/status");
        string hwm = status.Split('\n').First(l => l.StartsWith("VmHWM:", StringComparison.Ordinal));
        string rss = status.Split('\n').First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        o.WriteLine($"bgpd on node1 after the run ({claims + 1} routes, 1 peer, control API and metrics on): {hwm.Trim()}, {rss.Trim()}");
    }
}
