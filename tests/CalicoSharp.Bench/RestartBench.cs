using System.Globalization;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// Graceful restart as pods see it (issue 16, finding 6): in the lab (BIRD 2 as the ToR, AS per compute server, two
/// nodes), a pod on node2 pings a pod on node1 every 10 ms (2,000 pings) and streams numbered lines to it over TCP
/// for 20 s, while node1's bgpd is killed (SIGKILL: a crash) or stopped for a planned restart (SIGTERM), and started
/// again at once. Printed, never asserted (the lab test asserts 0 lost).
/// </summary>
internal static class RestartBench
{
    public static async Task RunAsync(TextWriter o)
    {
        string bin = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharp-bgpd");
        bool published = File.Exists(bin);
        o.WriteLine();
        o.WriteLine($"bgpd restart under traffic: node2's pod pings node1's pod every 10 ms and streams TCP while node1's bgpd restarts ({(published ? "NativeAOT binary" : "built dll: run make publish for the binary")})");
        o.WriteLine("| signal | pings sent | pings lost | TCP lines sent | TCP lines received in order | TCP connection | session back (s) | old kernel routes released (s) |");
        o.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (string signal in new[] { "KILL", "TERM" })
        {
            await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2, l =>
            {
                if (published)
                {
                    l.BgpdCommand = [bin];
                }
            }).ConfigureAwait(false);
            LabNode n1 = lab.Nodes[0], n2 = lab.Nodes[1];
            LabPod a = await lab.AddPodAsync(n1, "pod-a").ConfigureAwait(false);
            LabPod b = await lab.AddPodAsync(n2, "pod-b").ConfigureAwait(false);
            await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(n2).Contains($"{a.Block} via", StringComparison.Ordinal)
                && BgpLab.KernelRoutes(n1).Contains($"{b.Block} via", StringComparison.Ordinal), "both blocks on both nodes", 60, lab.Diagnostics).ConfigureAwait(false);
            RestartTrafficResult r = await RestartTraffic.RunAsync(lab, b, a, signal).ConfigureAwait(false);
            o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| SIG{signal} | {r.PingsSent} | {r.PingsLost} | {r.TcpLinesSent} | {r.TcpLinesReceived} | {(r.TcpUnbroken ? "unbroken" : $"broken (client exit {r.TcpClientExit})")} | {r.SessionBack.TotalSeconds:0.0} | {(r.StaleReleased is { } t ? t.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture) : "-")} |"));
        }
    }
}
