using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

public class PrefixTableTests
{
    [Fact]
    public void Random_adds_and_removes_agree_with_a_dictionary()
    {
        var table = new PrefixTable();
        var reference = new Dictionary<Prefix, RouteEntry>();
        var r = new Random(7);
        for (int i = 0; i < 200_000; i++)
        {
            // A small key space so that removals, re-adds and long probe runs all happen.
            Prefix p = r.Next(4) == 0
                ? Prefix.V6(((UInt128)(uint)r.Next(3000) << 64) | 0xfd00, 64)
                : Prefix.V4((uint)r.Next(20000) << 8, 24 - r.Next(2));
            if (reference.TryGetValue(p, out RouteEntry? existing))
            {
                Assert.Same(existing, table.Find(p));
                if (r.Next(2) == 0)
                {
                    Assert.True(table.Remove(existing));
                    reference.Remove(p);
                    Assert.Null(table.Find(p));
                }
            }
            else
            {
                Assert.Null(table.Find(p));
                RouteEntry e = RouteEntry.Create(p);
                table.Add(e);
                reference[p] = e;
                Assert.Equal(p, e.Prefix);
            }
        }
        Assert.Equal(reference.Count, table.Count);
        Assert.Equal(reference.Count, table.All.Count());
        foreach ((Prefix p, RouteEntry e) in reference)
        {
            Assert.Same(e, table.Find(p));
        }
    }
}
