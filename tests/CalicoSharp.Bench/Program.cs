using System.Diagnostics;
using System.Globalization;
using CalicoSharp.Bench;

// make bench: prints figures, asserts nothing. Every figure is measured in this run, beside its
// reference where one runs here.
if (args.Length > 0 && args[0] == "cni-inner")
{
    return await CniBench.InnerAsync(args[1], args[2], args[3], Console.Out).ConfigureAwait(false);
}

var only = args.Length > 0 ? args[0] : "all";
var sw = Stopwatch.StartNew();
Console.WriteLine($"CalicoSharp benchmarks, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores");
if (only is "all" or "ipam")
{
    await IpamBench.RunAsync(Console.Out).ConfigureAwait(false);
}

if (only is "all" or "cni")
{
    await CniBench.RunAsync(Console.Out).ConfigureAwait(false);
}

if (only is "all" or "bgp")
{
    // bgp [prefixes [rounds]]: the relay of that many routes, then the footprint at rest with 1,000, beside BIRD's.
    int n = args.Length > 1 && only == "bgp" ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000;
    int rounds = args.Length > 2 && only == "bgp" ? int.Parse(args[2], CultureInfo.InvariantCulture) : 2;
    await BgpBench.RunAsync(Console.Out, n, rounds).ConfigureAwait(false);
}

if (only is "all" or "bgp" or "peer-memory")
{
    // What a peer sending routes the import policy refuses makes the speaker hold.
    await PeerMemoryBench.RunAsync(Console.Out, args.Length > 1 && only == "peer-memory" ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000).ConfigureAwait(false);
}

if (only is "all" or "bgpd")
{
    await BgpdBench.RunAsync(Console.Out, 40).ConfigureAwait(false);
}

if (only is "all" or "bgpd" or "restart")
{
    // Graceful restart: pods' traffic while a node's bgpd is killed and while it restarts on SIGTERM.
    await RestartBench.RunAsync(Console.Out).ConfigureAwait(false);
}

if (only is "all" or "bgpd" or "kernel")
{
    await KernelBench.RunAsync(Console.Out, 100_000).ConfigureAwait(false);
}

if (only is "all" or "bfd")
{
    // Failover after a silent link failure (p50/p99 over this many failures per setting) and the CPU of 100 sessions.
    await BfdBench.RunAsync(Console.Out, args.Length > 1 && only == "bfd" ? int.Parse(args[1], CultureInfo.InvariantCulture) : 20).ConfigureAwait(false);
}

if (only is "all" or "service-trace" or "service-rules")
{
    ServiceTraceBench.InProcess(Console.Out, 5);
}

if (only is "all" or "service-trace")
{
    await ServiceTraceBench.RunAsync(Console.Out, args.Length > 1 && only == "service-trace" ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5).ConfigureAwait(false);
}

if (only is "all" or "rpc")
{
    // rpc [requests [clients [streams per client]]]
    int Arg(int i, int fallback) => args.Length > i && only == "rpc" ? int.Parse(args[i], CultureInfo.InvariantCulture) : fallback;
    await RpcBench.RunAsync(Console.Out, Arg(1, 20_000), Arg(2, 100), Arg(3, 10)).ConfigureAwait(false);
}

Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"benchmarks took {sw.Elapsed.TotalSeconds:0} s"));
return 0;
