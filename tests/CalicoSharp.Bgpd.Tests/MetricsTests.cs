using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>What the metrics text says, rendered from a daemon without etcd or kernel. No root needed.</summary>
public class MetricsTests
{
    [Fact]
    public async Task Label_values_are_escaped_as_the_text_format_requires()
    {
        string dir = Directory.CreateTempSubdirectory("calicosharp-metrics-").FullName;
        try
        {
            string config = Path.Combine(dir, "bgpd.json");
            // The peer's name holds a backslash, a double quote and a newline (JSON escapes below).
            await File.WriteAllTextAsync(config, """
                {
                  "nodeName": "node1",
                  "ipv4Address": "127.0.0.1",
                  "listenAddress": "127.0.0.1",
                  "listenPort": 0,
                  "peers": [ { "name": "rack \\ \"a\"\nb", "peerIP": "127.0.0.2", "asNumber": 65001, "passive": true } ]
                }
                """);
            await using var d = new Daemon(new DaemonOptions { ConfigFile = config, Kernel = false }, (_, _) => { });
            await d.StartAsync();
            string text = await Metrics.RenderAsync(d);
            // Prometheus text exposition format: in label values, \ is \\, " is \" and a line feed is \n.
            Assert.Contains("calicosharp_bgp_peer_up{peer=\"127.0.0.2\",name=\"rack \\\\ \\\"a\\\"\\nb\"} 0\n", text, StringComparison.Ordinal);
            // Every sample stays on one line: no line is a fragment of a label value.
            Assert.All(text.Split('\n', StringSplitOptions.RemoveEmptyEntries),
                line => Assert.Matches("^(# (HELP|TYPE) [a-z_]+ .*|[a-z_]+(\\{.*\\})? -?[0-9.]+)$", line));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
