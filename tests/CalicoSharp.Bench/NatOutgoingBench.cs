using System.Diagnostics;
using System.Globalization;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// ippools natOutgoing: the time bgpd takes to replace its nftables table (inet calicosharp, one atomic nft -f
/// transaction) for 50 IPv4 pools, each change turning natOutgoing of one pool on or off; in a namespace of its own.
/// </summary>
internal static class NatOutgoingBench
{
    public static void Run(TextWriter o, int changes)
    {
        const int pools = 50;
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"natOutgoing: nftables table replaced for {pools} pools, {changes} changes (nft -f in a namespace, through ip netns exec)"));
        using TestNetns ns = TestNetns.Create(TestNetns.NewLabPrefix() + "-nat");
        var table = new NatOutgoingTable((level, line) =>
        {
            if (level >= BgpLogLevel.Error)
            {
                o.WriteLine(line);
            }
        }, script => NatOutgoingTable.RunNft(script, ns.Name));
        bool[] nat = [.. Enumerable.Range(0, pools).Select(i => i % 2 == 0)];
        List<NatPool> Pools() => [.. Enumerable.Range(0, pools).Select(i => new NatPool(IpNet.Parse($"10.{100 + i}.0.0/16"), nat[i]))];
        table.Apply(Pools());
        var ms = new List<double>();
        for (int c = 0; c < changes; c++)
        {
            nat[c % pools] = !nat[c % pools];
            var sw = Stopwatch.StartNew();
            table.Apply(Pools());
            ms.Add(sw.Elapsed.TotalMilliseconds);
            if (table.State.Error is { } e)
            {
                throw new InvalidOperationException(e);
            }
        }
        ms.Sort();
        double P(double q) => ms[Math.Min(ms.Count - 1, (int)Math.Ceiling(q * ms.Count) - 1)];
        o.WriteLine("| pools | changes | p50 (ms) | p99 (ms) | max (ms) |");
        o.WriteLine("|---|---|---|---|---|");
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {pools} | {changes} | {P(0.5):0.0} | {P(0.99):0.0} | {ms[^1]:0.0} |"));
        table.Remove();
    }
}
