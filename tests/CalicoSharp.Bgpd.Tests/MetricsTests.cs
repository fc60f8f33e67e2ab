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

    [Fact]
    public async Task Process_cpu_memory_and_gc_figures_are_exposed_and_move()
    {
        string dir = Directory.CreateTempSubdirectory("calicosharp-metrics-").FullName;
        try
        {
            string config = Path.Combine(dir, "bgpd.json");
            await File.WriteAllTextAsync(config, """
                { "nodeName": "node1", "ipv4Address": "127.0.0.1", "listenAddress": "127.0.0.1", "listenPort": 0, "peers": [] }
                """);
            await using var d = new Daemon(new DaemonOptions { ConfigFile = config, Kernel = false }, (_, _) => { });
            await d.StartAsync();
            Dictionary<string, double> before = Samples(await Metrics.RenderAsync(d));
            // Work the scrape must see: allocations, a full collection, CPU.
            var keep = new List<byte[]>();
            for (int i = 0; i < 64; i++)
            {
                keep.Add(new byte[64 * 1024]);
            }
            GC.KeepAlive(keep);
            GC.Collect(2, GCCollectionMode.Forced, blocking: true);
            Dictionary<string, double> after = Samples(await Metrics.RenderAsync(d));

            Assert.True(after["process_cpu_seconds_total"] > 0);
            Assert.True(after["process_resident_memory_bytes"] > 1024 * 1024, "RSS of a running .NET process is more than 1 MiB");
            Assert.True(after["dotnet_gc_heap_size_bytes"] > 0);
            Assert.True(after["dotnet_gc_allocated_bytes_total"] - before["dotnet_gc_allocated_bytes_total"] >= 64 * 64 * 1024,
                "the 4 MiB allocated between the scrapes show in the allocated bytes");
            for (int g = 0; g <= 2; g++)
            {
                string key = $"dotnet_gc_collections_total{{generation=\"{g}\"}}";
                Assert.True(after[key] > before[key], $"the forced full collection counts in generation {g}");
            }
            string text = await Metrics.RenderAsync(d);
            Assert.Contains("# TYPE process_cpu_seconds_total counter\n", text, StringComparison.Ordinal);
            Assert.Contains("# TYPE process_resident_memory_bytes gauge\n", text, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static Dictionary<string, double> Samples(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries)
        .Where(l => !l.StartsWith('#'))
        .ToDictionary(l => l[..l.LastIndexOf(' ')], l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
}
