using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace CalicoSharp.Testing;

/// <summary>What the pods saw while a node's bgpd restarted.</summary>
public sealed record RestartTrafficResult(string Signal, int PingsSent, int PingsReceived, int TcpLinesSent, int TcpLinesReceived, int TcpClientExit,
    TimeSpan SessionBack, TimeSpan? StaleReleased)
{
    public int PingsLost => PingsSent - PingsReceived;

    /// <summary>Every line the client wrote arrived, and the client's connection ended normally.</summary>
    public bool TcpUnbroken => TcpClientExit == 0 && TcpLinesSent > 0 && TcpLinesReceived == TcpLinesSent;
}

/// <summary>
/// Graceful restart measured by what pods notice (issue 16, finding 6): one pod pings another every 10 ms and keeps
/// a TCP connection to it, writing a numbered line every 10 ms, while the bgpd of the node hosting the target is
/// stopped with a signal (KILL: a crash; TERM: a planned restart) and started again. The traffic crosses the ToR
/// (BIRD), so it needs the ToR to keep that node's routes and the node to keep its kernel routes.
/// </summary>
public static partial class RestartTraffic
{
    [GeneratedRegex(@"(\d+) packets transmitted, (\d+) received")]
    private static partial Regex PingSummary();

    public static async Task<RestartTrafficResult> RunAsync(BgpLab lab, LabPod from, LabPod to, string signal, int seconds = 20, int port = 7100)
    {
        ArgumentNullException.ThrowIfNull(lab);
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        LabNode node = to.Node;
        string p = port.ToString(CultureInfo.InvariantCulture);
        string s = seconds.ToString(CultureInfo.InvariantCulture);
        Task<ProcessResult> server = ProcessRunner.RunAsync("ip", ["netns", "exec", to.Netns.Name, "timeout", (seconds + 20).ToString(CultureInfo.InvariantCulture), "nc", "-l", "-N", to.Address, p],
            TimeSpan.FromSeconds(seconds + 30));
        await Task.Delay(300).ConfigureAwait(false);
        // The client numbers its lines and stops after the given time; nc -N ends the connection when they are written.
        string writer = $"end=$(( $(date +%s) + {s} )); i=0; while [ $(date +%s) -lt $end ]; do echo $i; i=$((i+1)); sleep 0.01; done; echo sent $i >&2";
        Task<ProcessResult> client = ProcessRunner.RunAsync("ip", ["netns", "exec", from.Netns.Name, "sh", "-c", $"({writer}) | nc -N -w 10 {to.Address} {p}"],
            TimeSpan.FromSeconds(seconds + 30));
        // A count, not a deadline: ping then waits for the last reply, so a packet in flight at the end is not "lost".
        string count = (seconds * 100).ToString(CultureInfo.InvariantCulture);
        Task<ProcessResult> ping = ProcessRunner.RunAsync("ip", ["netns", "exec", from.Netns.Name, "ping", "-q", "-i", "0.01", "-c", count, "-w", (seconds * 3).ToString(CultureInfo.InvariantCulture), to.Address],
            TimeSpan.FromSeconds((seconds * 3) + 10));

        await Task.Delay(TimeSpan.FromSeconds(3)).ConfigureAwait(false);
        var sw = Stopwatch.StartNew();
        BgpLab.StopBgpd(node, signal);
        int logMark = File.ReadAllText(node.LogFile).Length;
        lab.StartBgpd(node);
        await BgpLab.WaitAsync(() => lab.Bird!.Birdc($"show protocols node{node.Index}").Contains("Established", StringComparison.Ordinal)
            && File.ReadAllText(node.LogFile)[logMark..].Contains("established", StringComparison.Ordinal), "the session back", 30, lab.Diagnostics).ConfigureAwait(false);
        TimeSpan back = sw.Elapsed;
        // The kernel routes the old run left, released once the peers have sent End-of-RIB (none left: never).
        TimeSpan? released = null;
        while (released is null && sw.Elapsed < back + TimeSpan.FromSeconds(20))
        {
            if (File.ReadAllText(node.LogFile)[logMark..].Contains("has sent End-of-RIB", StringComparison.Ordinal))
            {
                released = sw.Elapsed;
            }
            await Task.Delay(50).ConfigureAwait(false);
        }

        ProcessResult pinged = await ping.ConfigureAwait(false);
        ProcessResult sent = await client.ConfigureAwait(false);
        ProcessResult got = await server.ConfigureAwait(false);
        Match m = PingSummary().Match(pinged.Stdout);
        if (!m.Success)
        {
            throw new InvalidOperationException($"ping printed no summary: {pinged.Stdout} {pinged.Stderr}");
        }
        Match n = Regex.Match(sent.Stderr, @"sent (\d+)");
        int linesSent = n.Success ? int.Parse(n.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
        string[] lines = got.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        // Every line, in order: a broken connection loses the tail, a new one would start again at 0.
        bool inOrder = lines.Select((l, i) => l == i.ToString(CultureInfo.InvariantCulture)).All(x => x);
        return new RestartTrafficResult(signal, int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
            linesSent, inOrder ? lines.Length : -1, sent.ExitCode, back, released);
    }
}
