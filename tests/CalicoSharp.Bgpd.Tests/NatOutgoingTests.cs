using System.Text;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>ippools natOutgoing: the nftables table bgpd writes for the pools, and when it writes it.</summary>
public sealed class NatOutgoingTests
{
    private static NatPool Pool(string cidr, bool nat, bool disabled = false) => new(IpNet.Parse(cidr, strict: false), nat, disabled);

    [Fact]
    public void Ipv4_pool_with_natOutgoing_masquerades_toward_addresses_outside_every_pool()
    {
        string? r = NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", true), Pool("10.245.0.0/16", false)]);
        Assert.Equal("""
            table inet calicosharp {
            	set pools_v4 {
            		type ipv4_addr
            		flags interval
            		auto-merge
            		elements = { 10.244.0.0/16, 10.245.0.0/16 }
            	}
            	set masq_pools_v4 {
            		type ipv4_addr
            		flags interval
            		auto-merge
            		elements = { 10.244.0.0/16 }
            	}
            	chain nat_outgoing {
            		type nat hook postrouting priority srcnat; policy accept;
            		ip saddr @masq_pools_v4 ip daddr != @pools_v4 counter masquerade comment "ippools natOutgoing (v4)"
            	}
            }

            """.Replace("\r\n", "\n", StringComparison.Ordinal), r);
    }

    [Fact]
    public void Ipv6_pools_get_their_own_sets_and_rule()
    {
        string r = NatOutgoingRules.Ruleset([Pool("fd10:244::/112", true), Pool("fd10:245::/112", false)])!;
        Assert.Contains("set pools_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\tauto-merge\n\t\telements = { fd10:244::/112, fd10:245::/112 }", r, StringComparison.Ordinal);
        Assert.Contains("ip6 saddr @masq_pools_v6 ip6 daddr != @pools_v6 counter masquerade", r, StringComparison.Ordinal);
        Assert.DoesNotContain("ipv4_addr", r, StringComparison.Ordinal);
        Assert.DoesNotContain("ip saddr", r, StringComparison.Ordinal);
    }

    [Fact]
    public void Mixed_families_each_family_judged_alone()
    {
        // The IPv4 pool masquerades, the IPv6 one does not: no IPv6 rule, and neither family's set holds the other's.
        string r = NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", true), Pool("fd10:244::/112", false)])!;
        Assert.Contains("ip saddr @masq_pools_v4 ip daddr != @pools_v4", r, StringComparison.Ordinal);
        Assert.DoesNotContain("ip6", r, StringComparison.Ordinal);
        Assert.DoesNotContain("fd10", r, StringComparison.Ordinal);
        string both = NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", true), Pool("fd10:244::/112", true)])!;
        Assert.Contains("ip saddr @masq_pools_v4", both, StringComparison.Ordinal);
        Assert.Contains("ip6 saddr @masq_pools_v6", both, StringComparison.Ordinal);
    }

    [Fact]
    public void No_pool_with_natOutgoing_means_no_table()
    {
        Assert.Null(NatOutgoingRules.Ruleset([]));
        Assert.Null(NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", false)]));
        // Removal is the same atomic transaction without a new definition; it never names another table.
        Assert.Equal("add table inet calicosharp\ndelete table inet calicosharp\n", NatOutgoingRules.Transaction(null));
    }

    [Fact]
    public void Disabled_pools_keep_their_masquerade_and_stay_cluster_destinations()
    {
        // disabled stops new allocations only: its pods still exist, keep their masquerade, and are never a destination
        // to masquerade toward.
        string r = NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", true, disabled: true), Pool("10.246.0.0/16", false, disabled: true)])!;
        Assert.Contains("elements = { 10.244.0.0/16, 10.246.0.0/16 }", r, StringComparison.Ordinal);
        Assert.Contains("set masq_pools_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\tauto-merge\n\t\telements = { 10.244.0.0/16 }", r, StringComparison.Ordinal);
    }

    [Fact]
    public void Odd_forms_duplicates_overlaps_and_host_bits()
    {
        // The same pool twice (two records), a pool inside another (auto-merge lets nft take overlapping intervals),
        // host bits in a record's cidr (the pool is its network, as bgpd reads it).
        string r = NatOutgoingRules.Ruleset([Pool("10.244.0.0/16", true), Pool("10.244.0.0/16", true), Pool("10.244.7.0/24", false), Pool("10.247.1.9/16", true)])!;
        Assert.Contains("elements = { 10.244.0.0/16, 10.244.7.0/24, 10.247.0.0/16 }", r, StringComparison.Ordinal);
        Assert.Contains("elements = { 10.244.0.0/16, 10.247.0.0/16 }", r, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_snapshot_reads_natOutgoing_and_disabled_only_when_true()
    {
        using var store = new MemoryKvStore();
        void PutPool(string name, string spec) => store.Put("/calico/resources/v3/projectcalico.org/ippools/" + name,
            Encoding.UTF8.GetBytes("{\"kind\":\"IPPool\",\"metadata\":{\"name\":\"" + name + "\"},\"spec\":{" + spec.Replace('\'', '"') + "}}"));
        PutPool("a", "'cidr':'10.244.0.0/16','natOutgoing':true");
        PutPool("b", "'cidr':'10.245.0.0/16','natOutgoing':'true','disabled':true");
        PutPool("c", "'cidr':'fd10:244::/112'");
        ClusterSnapshot s = await new EtcdClusterSource(store, "node1").ReadAsync(CancellationToken.None);
        Assert.Equal([("10.244.0.0/16", true, false), ("10.245.0.0/16", false, true), ("fd10:244::/112", false, false)],
            s.NatPools.Select(p => (p.Cidr.ToString(), p.NatOutgoing, p.Disabled)).OrderBy(p => p.Item1, StringComparer.Ordinal));
    }

    [Fact]
    public void The_table_is_written_once_per_change_and_a_failure_is_kept_logged_once_and_retried()
    {
        var scripts = new List<string>();
        string? fail = null;
        var log = new List<string>();
        var table = new NatOutgoingTable((level, line) => log.Add($"{level} {line}"), s =>
        {
            scripts.Add(s);
            return fail;
        });
        // The first call writes even with no natOutgoing pool: a table an earlier run left (SIGTERM keeps it) goes.
        table.Apply([Pool("10.244.0.0/16", false)]);
        Assert.Equal(["add table inet calicosharp\ndelete table inet calicosharp\n"], scripts);
        table.Apply([Pool("10.244.0.0/16", false)]);
        Assert.Single(scripts);
        table.Apply([Pool("10.244.0.0/16", true)]);
        Assert.Equal(2, scripts.Count);
        Assert.StartsWith("add table inet calicosharp\ndelete table inet calicosharp\ntable inet calicosharp {", scripts[1], StringComparison.Ordinal);
        Assert.True(table.State.Programmed);
        Assert.Equal(["10.244.0.0/16"], table.State.MasqueradePools);
        table.Apply([Pool("10.244.0.0/16", true)]);
        Assert.Equal(2, scripts.Count);

        fail = "nft -f exited 1: Error: Could not process rule: No such file or directory";
        table.Apply([Pool("10.244.0.0/16", true), Pool("10.245.0.0/16", true)]);
        table.Apply([Pool("10.244.0.0/16", true), Pool("10.245.0.0/16", true)]);
        Assert.Equal(4, scripts.Count);
        Assert.Contains("cannot program nftables table inet calicosharp (natOutgoing for 10.244.0.0/16, 10.245.0.0/16): nft -f exited 1", table.State.Error, StringComparison.Ordinal);
        Assert.Equal(2, table.State.Errors);
        Assert.Single(log, l => l.StartsWith("Error cannot program", StringComparison.Ordinal));
        // What was programmed before the failure is what the state shows.
        Assert.Equal(["10.244.0.0/16"], table.State.MasqueradePools);

        fail = null;
        table.Apply([Pool("10.244.0.0/16", true), Pool("10.245.0.0/16", true)]);
        Assert.Null(table.State.Error);
        Assert.Equal(["10.244.0.0/16", "10.245.0.0/16"], table.State.MasqueradePools);
        Assert.Contains(log, l => l.Contains("programmed again", StringComparison.Ordinal));

        Assert.True(table.Remove());
        Assert.Equal("add table inet calicosharp\ndelete table inet calicosharp\n", scripts[^1]);
        Assert.False(table.State.Programmed);
    }

    [Fact]
    public void Without_nft_installed_nothing_to_remove_is_no_error_but_a_pool_to_masquerade_is()
    {
        var table = new NatOutgoingTable((_, _) => { }, _ => "nft is not installed (Debian package nftables): No such file or directory");
        table.Apply([Pool("10.244.0.0/16", false)]);
        Assert.Null(table.State.Error);
        table.Apply([Pool("10.244.0.0/16", true)]);
        Assert.Contains("nft is not installed", table.State.Error, StringComparison.Ordinal);
    }
}
