using System.Diagnostics;
using System.Globalization;
using CalicoSharp.Bench;

// make bench: prints figures, asserts nothing. Every figure is measured in this run, beside its
// reference where one runs here.
var sw = Stopwatch.StartNew();
Console.WriteLine($"CalicoSharp benchmarks, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores");
await IpamBench.RunAsync(Console.Out).ConfigureAwait(false);
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"benchmarks took {sw.Elapsed.TotalSeconds:0} s"));
