using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.ServiceNat;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>Reading iptables chain by chain (iptables -t T -S CHAIN) as the packet enters the chains: the same answers
/// as reading the whole dump, from a handful of listings.</summary>
public sealed class IptablesChainReaderTests
{
    private static readonly NatEvaluator.FixedContext OnNode1 = new(IPAddress.Parse("172.30.1.2"));

    /// <summary>Answers <c>iptables -t T -S CHAIN</c> as iptables does, from an iptables-save dump; records each call.</summary>
    private sealed class FakeIptables
    {
        private readonly Dictionary<(string Table, string Chain), List<string>> _chains = [];

        public FakeIptables(string save)
        {
            string table = "";
            foreach (string line in save.Split('\n'))
            {
                if (line.StartsWith('*'))
                {
                    table = line[1..];
                }
                else if (line.StartsWith(':'))
                {
                    string[] p = line[1..].Split(' ');
                    _chains[(table, p[0])] = [p[1] == "-" ? $"-N {p[0]}" : $"-P {p[0]} {p[1]}"];
                }
                else if (line.StartsWith("-A ", StringComparison.Ordinal))
                {
                    _chains[(table, line.Split(' ')[1])].Add(line);
                }
            }
        }

        public ConcurrentQueue<string> Calls { get; } = new();

        public Func<string, string?> Broken { get; init; } = _ => null;

        public (int Exit, string Out, string Err)? List(string table, string chain)
        {
            Calls.Enqueue($"{table} {chain}");
            if (Broken(chain) is { } text)
            {
                return (0, text, "");
            }
            return _chains.TryGetValue((table, chain), out List<string>? lines)
                ? (0, string.Join('\n', lines) + "\n", "")
                : (1, "", $"iptables v1.8.9 (nf_tables): chain `{chain}' in table `{table}' is incompatible, use 'nft' tool.\n");
        }
    }

    private static LabService Many(int i) => new("bench", $"svc{i}", $"10.97.{i / 250}.{i % 250 + 1}", [new LabServicePort("http", 80, TargetPort: 8080)],
        [new LabEndpoint($"10.244.1.{i % 200 + 1}", "node2"), new LabEndpoint($"10.244.2.{i % 200 + 1}", "node3")]);

    private static (List<NatTable> Tables, List<IptablesChainReader> Readers) Open(FakeIptables fake)
    {
        var readers = new[] { "nat", "filter" }.Select(t => IptablesChainReader.Open("iptables", t, AddressFamily.InterNetwork, fake.List)).ToList();
        Assert.All(readers, r => Assert.Null(r.ReadBuiltins()));
        return ([.. readers.Select(r => r.Table)], readers);
    }

    [Fact]
    public void A_trace_lists_the_chains_it_enters_and_answers_as_the_whole_dump_does()
    {
        LabService web = ServiceNatParserTests.Web(10);
        List<LabService> services = [.. Enumerable.Range(0, 300).Select(Many), web];
        string save = KubeProxyRules.Iptables(services, "node1", "10.244.0.0/16", saveOrder: true);
        var fake = new FakeIptables(save);
        (List<NatTable> tables, List<IptablesChainReader> readers) = Open(fake);
        var packet = new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80);

        IReadOnlyList<NatOutcome> chainByChain = NatEvaluator.Evaluate(tables, packet, false, OnNode1);
        IReadOnlyList<NatOutcome> whole = NatEvaluator.Evaluate(IptablesParser.Parse(save, AddressFamily.InterNetwork), packet, false, OnNode1);

        Assert.Equal(10, chainByChain.Count);
        Assert.Equal(whole.Select(o => (o.Fate, o.Probability, o.Packet.Destination, o.Packet.DestinationPort, o.MasqueradedBy?.Chain)),
            chainByChain.Select(o => (o.Fate, o.Probability, o.Packet.Destination, o.Packet.DestinationPort, o.MasqueradedBy?.Chain)));
        Assert.Equal(whole.Select(o => string.Join(" ", o.Path.Select(s => s.Chain))), chainByChain.Select(o => string.Join(" ", o.Path.Select(s => s.Chain))));
        // Of the ~900 chains, the built-ins, the chains the packet entered and what they jump to: no other service's.
        Assert.InRange(fake.Calls.Count, 15, 40);
        Assert.DoesNotContain(fake.Calls, c => c.Contains(KubeProxyRules.ServiceChain("bench/svc1:http", "tcp"), StringComparison.Ordinal));
        Assert.Equal(fake.Calls.Count, fake.Calls.Distinct().Count());
        Assert.True(readers[0].ChainsRead >= 13);
    }

    [Fact]
    public void A_jump_to_a_chain_iptables_cannot_list_is_unchecked_with_iptables_words()
    {
        string save = KubeProxyRules.Iptables([ServiceNatParserTests.Web(2)], "node1", "10.244.0.0/16", saveOrder: true)
            .Replace("-j KUBE-MARK-MASQ", "-j KUBE-GONE", StringComparison.Ordinal);
        var fake = new FakeIptables(save);
        (List<NatTable> tables, _) = Open(fake);
        IReadOnlyList<NatOutcome> o = NatEvaluator.Evaluate(tables, new NatPacket(IPAddress.Parse("172.30.200.2"), IPAddress.Parse("172.30.250.10"), "tcp", 80), false, OnNode1);
        NatOutcome gone = Assert.Single(o.Where(x => x.Fate == NatFate.Unchecked).DistinctBy(x => x.Unchecked));
        Assert.Contains("-j KUBE-GONE: no chain KUBE-GONE could be listed in table nat (iptables -t nat -S KUBE-GONE: iptables v1.8.9 (nf_tables): chain `KUBE-GONE' in table `nat' is incompatible", gone.Unchecked, StringComparison.Ordinal);
    }

    [Fact]
    public void A_listing_it_cannot_read_is_refused_with_the_command_and_line()
    {
        string save = KubeProxyRules.Iptables([ServiceNatParserTests.Web(2)], "node1", "10.244.0.0/16", saveOrder: true);
        string svc = KubeProxyRules.ServiceChain("default/web:http", "tcp");
        var fake = new FakeIptables(save) { Broken = c => c == svc ? $"-N {svc}\n-A {svc} --frobnicate 3\n" : null };
        (List<NatTable> tables, _) = Open(fake);
        var e = Assert.Throws<NatParseException>(() => NatEvaluator.Evaluate(tables, new NatPacket(IPAddress.Parse("10.244.9.9"), IPAddress.Parse("10.96.0.10"), "tcp", 80), false, OnNode1));
        Assert.Contains($"iptables -t nat -S {svc}, line 2: option '--frobnicate'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Without_iptables_the_table_is_not_read_and_says_so()
    {
        IptablesChainReader r = IptablesChainReader.Open("iptables", "nat", AddressFamily.InterNetwork, (_, _) => null);
        Assert.Equal("iptables is not installed (Debian package iptables): iptables rules not read", r.ReadBuiltins());
        Assert.False(r.Installed);
    }
}
