using System.Diagnostics;
using System.Globalization;
using System.Text;
using CalicoSharp.Ipam;

// One node's allocating process, for the storm test and the benchmarks: each node is its own OS
// process with its own etcd client, as on a real cluster.
//   IpamLoad <endpoints> <node> <allocations> <release-percent> <seed> [start-at-unix-ms]
// Allocates one IPv4 address per handle, releasing a random earlier handle after an allocation with
// the given probability. Prints "held <ip> <handle>" per address still held, then
// "stats <ops> <elapsed-ms> <first-alloc-us> <lat-us,...>" (per-allocation latencies).
if (args.Length < 5)
{
    Console.Error.WriteLine("usage: IpamLoad <endpoints> <node> <allocations> <release-percent> <seed> [start-at-unix-ms]");
    return 2;
}

var endpoints = EtcdOptions.ParseEndpoints(args[0]);
string node = args[1];
int count = int.Parse(args[2], CultureInfo.InvariantCulture);
int releasePercent = int.Parse(args[3], CultureInfo.InvariantCulture);
var rng = new Random(int.Parse(args[4], CultureInfo.InvariantCulture));
using var ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = endpoints, Timeout = TimeSpan.FromSeconds(20) }),
    new IpamClientOptions { Timeout = TimeSpan.FromSeconds(20), MaxAttempts = 64 });

// Warm the connection so that start-up is not measured.
await ipam.GetConfigAsync().ConfigureAwait(false);
if (args.Length > 5)
{
    var startAt = DateTimeOffset.FromUnixTimeMilliseconds(long.Parse(args[5], CultureInfo.InvariantCulture));
    var wait = startAt - DateTimeOffset.UtcNow;
    if (wait > TimeSpan.Zero)
    {
        await Task.Delay(wait).ConfigureAwait(false);
    }
}

var held = new List<(string Handle, string Ip)>();
var latencies = new List<long>(count);
var total = Stopwatch.StartNew();
for (int i = 0; i < count; i++)
{
    string handle = $"load.{node}.{args[4]}.{i}";
    var t = Stopwatch.GetTimestamp();
    var got = await ipam.AutoAssignAsync(new AutoAssignRequest
    {
        HandleId = handle,
        Node = node,
        Num4 = 1,
        Attributes = new Dictionary<string, string> { ["namespace"] = "load", ["pod"] = $"{node}-{i}" },
    }).ConfigureAwait(false);
    latencies.Add((long)Stopwatch.GetElapsedTime(t).TotalMicroseconds);
    held.Add((handle, got[0].Address.ToString()));
    if (held.Count > 1 && rng.Next(100) < releasePercent)
    {
        int victim = rng.Next(held.Count);
        await ipam.ReleaseByHandleAsync(held[victim].Handle).ConfigureAwait(false);
        held.RemoveAt(victim);
    }
}

var elapsed = total.Elapsed;
var sb = new StringBuilder();
foreach (var (h, ip) in held)
{
    sb.Append("held ").Append(ip).Append(' ').Append(h).Append('\n');
}

sb.Append(CultureInfo.InvariantCulture, $"stats {count} {elapsed.TotalMilliseconds:0.###} {latencies[0]} {string.Join(',', latencies)}\n");
Console.Out.Write(sb.ToString());
return 0;
