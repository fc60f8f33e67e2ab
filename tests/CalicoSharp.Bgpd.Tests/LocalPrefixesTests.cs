using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The import guard for this node's own blocks and borrowed addresses. No root needed.</summary>
public class LocalPrefixesTests
{
    private static Prefix P(string p) => Prefix.Parse(p);

    [Fact]
    public void Own_blocks_what_is_inside_them_and_borrowed_addresses_are_refused_and_said_once()
    {
        var log = new List<string>();
        var local = new LocalPrefixes((_, m) => log.Add(m));
        Assert.True(local.Update([P("10.244.0.0/26"), P("fd00:244::/122")], [P("10.244.9.3/32")]));
        Assert.False(local.Update([P("fd00:244::/122"), P("10.244.0.0/26")], [P("10.244.9.3/32")])); // same sets

        foreach (string refused in new[] { "10.244.0.0/26", "10.244.0.7/32", "10.244.0.32/27", "fd00:244::7/128", "10.244.9.3/32" })
        {
            Assert.True(local.Refuse(null, P(refused)), refused);
        }
        foreach (string accepted in new[] { "10.244.0.0/25", "10.244.0.64/26", "10.244.0.0/16", "10.244.9.4/32", "fd00:244::/64" })
        {
            Assert.False(local.Refuse(null, P(accepted)), accepted);
        }

        // Announced again (a flapping peer, a re-import): counted each time, logged once.
        Assert.True(local.Refuse(null, P("10.244.0.7/32")));
        Assert.Equal(6, local.Refused);
        Assert.Equal(5, log.Count);
        Assert.Single(log, m => m.Contains("10.244.0.7/32 refused: it is inside 10.244.0.0/26, a block affine to this node", StringComparison.Ordinal));
        Assert.Single(log, m => m.Contains("10.244.9.3/32 refused: it is an address this node borrowed", StringComparison.Ordinal));

        // The block goes (released to another node): its prefixes are accepted again.
        Assert.True(local.Update([P("fd00:244::/122")], []));
        Assert.False(local.Refuse(null, P("10.244.0.7/32")));
        Assert.False(local.Refuse(null, P("10.244.9.3/32")));
    }
}
