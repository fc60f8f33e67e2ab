using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>IPAM against a local etcd (on tmpfs): warm-block latency, concurrent nodes as separate
/// processes, first allocation among 10,000 blocks; and a per-pod process comparison with the
/// reference host-local IPAM plugin.</summary>
internal static class IpamBench
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static async Task RunAsync(TextWriter o)
    {
        using var etcd = EtcdServer.Start();
        using var ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint] }));
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.0.0.0/10", Name = "bench" });
        o.WriteLine($"etcd {etcd.Endpoint} (data on tmpfs)");

        // 1. Warm block: assign + release on one node, in one process.
        await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "warm", Node = "warm-node", Num4 = 1 });
        var assign = new List<double>();
        var release = new List<double>();
        for (int i = 0; i < 1000; i++)
        {
            var t = Stopwatch.GetTimestamp();
            await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = $"w{i}", Node = "warm-node", Num4 = 1 });
            assign.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
            t = Stopwatch.GetTimestamp();
            await ipam.ReleaseByHandleAsync($"w{i}");
            release.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }

        o.WriteLine($"warm auto-assign (1000x): p50 {P(assign, 50):0.00} ms, p99 {P(assign, 99):0.00} ms");
        o.WriteLine($"release by handle (1000x): p50 {P(release, 50):0.00} ms, p99 {P(release, 99):0.00} ms");

        // 2. Throughput: N nodes, each its own process and client, allocating at once.
        // The workers run NativeAOT (make bench publishes them), as the per-pod processes they stand for do.
        var aot = Path.Combine(RepoPaths.Root, "out", "bench", "CalicoSharp.IpamLoad");
        var dll = File.Exists(aot) ? null : RepoPaths.ProjectDll("tests/CalicoSharp.IpamLoad", "CalicoSharp.IpamLoad");
        o.WriteLine(dll is null ? "workers: NativeAOT" : "workers: JIT (out/bench not published)");
        foreach (var (nodes, per, sameNode) in new[] { (1, 1000, false), (10, 200, false), (50, 60, false), (20, 20, true) })
        {
            long start = DateTimeOffset.UtcNow.AddSeconds(nodes >= 20 ? 12 : 5).ToUnixTimeMilliseconds();
            var runs = Enumerable.Range(0, nodes).Select(n =>
            {
                string[] args = [etcd.Endpoint, sameNode ? "one-node" : $"tp{nodes}-{n}", per.ToString(Inv), "0", n.ToString(Inv), start.ToString(Inv)];
                return dll is null ? ProcessRunner.RunAsync(aot, args, TimeSpan.FromMinutes(5)) : ProcessRunner.RunDllAsync(dll, args, TimeSpan.FromMinutes(5));
            }).ToList();
            var results = await Task.WhenAll(runs);
            var bad = results.FirstOrDefault(r => r.ExitCode != 0);
            if (bad is not null)
            {
                o.WriteLine($"throughput {nodes} nodes: a worker failed: {bad.Stderr.Trim()}");
                continue;
            }

            double maxMs = results.Select(r => double.Parse(Stats(r).Split(' ')[2], Inv)).Max();
            var lats = results.SelectMany(r => Stats(r).Split(' ')[4].Split(',').Select(x => double.Parse(x, Inv) / 1000)).ToList();
            var what = sameNode ? $"{nodes} processes on ONE node" : $"{nodes,2} node process(es)";
            o.WriteLine($"throughput {what} x {per} allocations: {nodes * per / (maxMs / 1000):0} allocations/s (per allocation p50 {P(lats, 50):0.00} ms, p99 {P(lats, 99):0.00} ms)");
        }

        // 3. First allocation on a new node when 10,000 blocks exist.
        await FillBlocksAsync(ipam.Store, 10_000);
        var first = new List<double>();
        for (int i = 0; i < 20; i++)
        {
            var t = Stopwatch.GetTimestamp();
            await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = $"new{i}", Node = $"fresh-node-{i}", Num4 = 1 });
            first.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }

        o.WriteLine($"first allocation on a new node, 10,000+ blocks exist (20 nodes): p50 {P(first, 50):0.00} ms, max {first.Max():0.00} ms");

        // 4. Per pod as a process: our AOT CLI against the reference host-local IPAM plugin.
        await ProcessComparisonAsync(o, etcd.Endpoint);
    }

    private static async Task FillBlocksAsync(IKvStore store, int count)
    {
        var pool = IpNet.Parse("10.0.0.0/10");
        var now = DateTimeOffset.UtcNow.AddHours(-1);
        for (int i = 0; i < count; i += 50)
        {
            var ops = new List<KvOp>();
            for (int j = i; j < Math.Min(count, i + 50); j++)
            {
                var cidr = pool.Subnet(26, (UInt128)(j * 6 + 1));
                var block = BlockLogic.Create(cidr, $"filler-{j % 500}", now);
                BlockLogic.Allocate(block, 10, $"filler.{j}", null);
                ops.Add(KvOp.Put(Keys.Block(cidr), RecordJson.Encode(block)));
                ops.Add(KvOp.Put(Keys.Affinity($"filler-{j % 500}", cidr), RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Confirmed })));
            }

            await store.TxnAsync([], ops, default);
        }
    }

    private static async Task ProcessComparisonAsync(TextWriter o, string endpoint)
    {
        var ctl = Path.Combine(RepoPaths.Root, "out", "bin", "calicosharpctl");
        const string hostLocal = "/usr/lib/cni/host-local";
        if (!File.Exists(ctl) || !File.Exists(hostLocal))
        {
            o.WriteLine($"per-pod process comparison skipped: needs {ctl} (make publish) and {hostLocal}");
            return;
        }

        const int n = 50;
        var ours = new List<double>();
        for (int i = 0; i < n; i++)
        {
            var t = Stopwatch.GetTimestamp();
            await Must(ProcessRunner.RunAsync(ctl, ["--etcd-endpoints", endpoint, "ipam", "assign", "--node", "proc-node", "--handle", $"p{i}"], TimeSpan.FromSeconds(30)));
            await Must(ProcessRunner.RunAsync(ctl, ["--etcd-endpoints", endpoint, "ipam", "release", "--handle", $"p{i}"], TimeSpan.FromSeconds(30)));
            ours.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }

        var dataDir = Directory.CreateTempSubdirectory("calicosharp-bench-hl-").FullName;
        var reference = new List<double>();
        try
        {
            var conf = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["cniVersion"] = "1.0.0",
                ["name"] = "bench",
                ["type"] = "host-local",
                ["ipam"] = new Dictionary<string, object> { ["type"] = "host-local", ["subnet"] = "10.99.0.0/16", ["dataDir"] = dataDir },
            }, BenchJson.Default.DictionaryStringObject);
            for (int i = 0; i < n; i++)
            {
                var t = Stopwatch.GetTimestamp();
                foreach (var cmd in new[] { "ADD", "DEL" })
                {
                    await Must(ProcessRunner.RunAsync(hostLocal, [], TimeSpan.FromSeconds(30), new Dictionary<string, string?>
                    {
                        ["CNI_COMMAND"] = cmd,
                        ["CNI_CONTAINERID"] = $"c{i}",
                        ["CNI_NETNS"] = "/var/run/netns/none",
                        ["CNI_IFNAME"] = "eth0",
                        ["CNI_PATH"] = "/usr/lib/cni",
                    }, conf));
                }

                reference.Add(Stopwatch.GetElapsedTime(t).TotalMilliseconds);
            }
        }
        finally
        {
            Directory.Delete(dataDir, true);
        }

        o.WriteLine($"per pod, as processes (assign+release, {n}x): calicosharpctl (AOT, etcd) p50 {P(ours, 50):0.0} ms; host-local (reference, local files) p50 {P(reference, 50):0.0} ms; ratio {P(ours, 50) / P(reference, 50):0.00}");
    }

    private static async Task Must(Task<ProcessResult> run)
    {
        var r = await run;
        if (r.ExitCode != 0)
        {
            throw new InvalidOperationException($"exit {r.ExitCode}: {r.Stdout}{r.Stderr}");
        }
    }

    private static string Stats(ProcessResult r) => r.Stdout.Split('\n').Single(l => l.StartsWith("stats ", StringComparison.Ordinal));

    private static double P(List<double> values, int percentile)
    {
        var s = values.Order().ToList();
        return s[Math.Clamp((int)Math.Ceiling(percentile / 100.0 * s.Count) - 1, 0, s.Count - 1)];
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, object>))]
internal sealed partial class BenchJson : System.Text.Json.Serialization.JsonSerializerContext;
