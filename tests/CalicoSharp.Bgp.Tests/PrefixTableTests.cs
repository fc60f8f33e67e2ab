using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

public class RouteStoreTests
{
    [Fact]
    public void Random_adds_and_removes_agree_with_a_dictionary()
    {
        var store = new RouteStore();
        var reference = new Dictionary<Prefix, int>();
        var r = new Random(7);
        for (int i = 0; i < 200_000; i++)
        {
            // A small key space so that removals, slot reuse and long probe runs all happen.
            Prefix p = r.Next(4) == 0
                ? Prefix.V6(((UInt128)(uint)r.Next(3000) << 64) | 0xfd00, 64)
                : Prefix.V4((uint)r.Next(20000) << 8, 24 - r.Next(2));
            if (reference.TryGetValue(p, out int slot))
            {
                Assert.Equal(slot, store.Find(p));
                Assert.Equal(p, store.PrefixOf(slot));
                if (r.Next(2) == 0)
                {
                    store.Remove(slot);
                    reference.Remove(p);
                    Assert.Equal(-1, store.Find(p));
                }
            }
            else
            {
                Assert.Equal(-1, store.Find(p));
                int s = store.Add(p);
                reference[p] = s;
                Assert.Equal(p, store.PrefixOf(s));
            }
        }
        Assert.Equal(reference.Count, store.EntryCount);
        Assert.Equal(reference.Count, store.All.Count());
        foreach ((Prefix p, int s) in reference)
        {
            Assert.Equal(s, store.Find(p));
        }
    }
}
