using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

public class NativeArrayTests
{
    [Fact]
    public void Grows_keeping_its_values_and_new_elements_are_zero()
    {
        var a = new NativeArray<ulong>(3);
        for (int i = 0; i < 3; i++)
        {
            a[i] = (ulong)i + 100;
        }
        // Across the page boundary and far past it, so that the mapping really moves.
        a.Resize(5000);
        a.Resize(1 << 20);
        Assert.Equal(1 << 20, a.Length);
        Assert.Equal([100UL, 101, 102], a.AsSpan()[..3].ToArray());
        Assert.True(a.AsSpan()[3..].IndexOfAnyExcept(0UL) < 0);
        a.Release();
    }

    [Fact]
    public void A_shrink_then_grow_shows_zeros_not_the_old_values()
    {
        var a = new NativeArray<int>(4096);
        a.AsSpan().Fill(-1);
        a.Resize(10); // same page kept: the tail must be cleared
        a.Resize(4096);
        Assert.Equal(-1, a[9]);
        Assert.True(a.AsSpan()[10..].IndexOfAnyExcept(0) < 0);
        a.Release();
    }

    [Fact]
    public void Every_access_is_bounds_checked_also_after_release()
    {
        var a = new NativeArray<byte>(16);
        Assert.Throws<ArgumentOutOfRangeException>(() => a[16]);
        Assert.Throws<ArgumentOutOfRangeException>(() => a[-1]);
        a.Release();
        Assert.Equal(0, a.Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => a[0]);
        Assert.Throws<ObjectDisposedException>(() => a.Resize(4));
    }

    [Fact]
    public void Queue_keeps_order_across_wrap_around_growth_and_trim()
    {
        var q = new NativeQueue<int>();
        var reference = new Queue<int>();
        var r = new Random(11);
        int next = 0;
        for (int round = 0; round < 20_000; round++)
        {
            // Bursts of adds and removes so the ring wraps before it grows, then drains and is trimmed.
            int adds = r.Next(round % 1000 < 500 ? 40 : 5);
            for (int i = 0; i < adds; i++)
            {
                q.Enqueue(next);
                reference.Enqueue(next++);
            }
            int takes = Math.Min(reference.Count, r.Next(20));
            for (int i = 0; i < takes; i++)
            {
                Assert.Equal(reference.Dequeue(), q.Dequeue());
            }
            if (r.Next(50) == 0)
            {
                q.TrimExcess();
            }
            Assert.Equal(reference.Count, q.Count);
        }
        while (reference.Count > 0)
        {
            Assert.Equal(reference.Dequeue(), q.Dequeue());
        }
        Assert.Throws<InvalidOperationException>(() => q.Dequeue());
        q.Clear();
        q.Enqueue(5);
        Assert.Equal(5, q.Dequeue());
    }
}
