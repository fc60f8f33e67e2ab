using System.Net;
using CalicoSharp.Ipam;

namespace CalicoSharp.Ipam.Tests;

public class BlockLogicTests
{
    private static readonly DateTimeOffset T0 = new(2026, 11, 25, 10, 0, 0, TimeSpan.Zero);

    [Fact]
    public void New_block_has_every_address_free_in_order()
    {
        var b = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "n1", T0);
        Assert.Equal(64, b.Allocations.Count);
        Assert.Equal(Enumerable.Range(0, 64), b.Unallocated);
        Assert.Equal("host:n1", b.Affinity);
        Assert.Equal("2026-11-25T10:00:00Z", b.AffinityClaimTime);
        Assert.Empty(BlockLogic.Validate(b));
    }

    [Fact]
    public void Freed_ordinals_are_reused_first_in_first_out()
    {
        var b = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "n1", T0);
        var all = BlockLogic.Allocate(b, 64, "h", null);
        Assert.Equal(64, all.Count);
        Assert.Empty(BlockLogic.Allocate(b, 1, "h", null));
        BlockLogic.Release(b, [7]);
        BlockLogic.Release(b, [3]);
        BlockLogic.Release(b, [50]);
        Assert.Equal([7], BlockLogic.Allocate(b, 1, "h2", null));
        Assert.Equal([3, 50], BlockLogic.Allocate(b, 2, "h3", null));
        Assert.Empty(BlockLogic.Validate(b));
    }

    [Fact]
    public void Ipv6_block_of_122_has_64_ordinals()
    {
        var b = BlockLogic.Create(IpNet.Parse("fd00:10:244:1::/122"), "n1", T0);
        var o = BlockLogic.Allocate(b, 2, "h", null);
        Assert.Equal(IPAddress.Parse("fd00:10:244:1::1"), BlockLogic.AddressOf(b, o[1]));
        Assert.Equal(64, b.Allocations.Count);
    }

    [Fact]
    public void Every_write_bumps_the_sequence_and_allocations_record_it()
    {
        var b = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "n1", T0);
        ulong s0 = b.SequenceNumber;
        BlockLogic.Allocate(b, 2, "h", null);
        Assert.Equal(s0 + 1, b.SequenceNumber);
        Assert.Equal(s0 + 1, BlockLogic.SequenceOf(b, 0));
        BlockLogic.Release(b, [0]);
        Assert.Equal(s0 + 2, b.SequenceNumber);
        Assert.Null(BlockLogic.SequenceOf(b, 0));
        BlockLogic.AllocateOrdinal(b, 5, "h", null);
        Assert.Equal(s0 + 3, BlockLogic.SequenceOf(b, 5));
    }

    [Fact]
    public void Attributes_are_shared_and_compacted()
    {
        var b = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "n1", T0);
        var a1 = new Dictionary<string, string> { ["pod"] = "a" };
        BlockLogic.Allocate(b, 2, "h1", a1);
        BlockLogic.Allocate(b, 1, "h2", new Dictionary<string, string> { ["pod"] = "b" });
        Assert.Equal(2, b.Attributes.Count);
        BlockLogic.Release(b, BlockLogic.OrdinalsOf(b, "h1"));
        Assert.Single(b.Attributes);
        Assert.Equal("h2", b.Attributes[0].HandleId);
        Assert.Equal(0, b.Allocations[2]);
        Assert.Empty(BlockLogic.Validate(b));
    }

    [Fact]
    public void Validate_names_each_structural_defect_and_rebuild_cures_it()
    {
        var b = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "n1", T0);
        BlockLogic.Allocate(b, 3, "h", null);
        b.Unallocated.Add(1);          // allocated and unallocated
        b.Unallocated.Remove(40);      // neither
        b.Allocations[2] = 9;          // points at no attribute
        b.Attributes.Add(new AllocationAttribute { HandleId = "ghost" }); // unreferenced
        var problems = BlockLogic.Validate(b);
        Assert.Contains(problems, p => p.Contains("ordinal 1 is both allocated and unallocated", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("ordinal 40 is neither", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("ordinal 2 points at attribute 9", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("attribute 1 is referenced by no allocation", StringComparison.Ordinal));
        BlockLogic.Rebuild(b);
        Assert.Empty(BlockLogic.Validate(b));
        Assert.Equal(2, BlockLogic.InUse(b));
    }
}
