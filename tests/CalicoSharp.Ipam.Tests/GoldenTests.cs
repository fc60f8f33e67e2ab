using System.Text;
using CalicoSharp.Ipam;

namespace CalicoSharp.Ipam.Tests;

/// <summary>Our JSON must equal Calico's own serialisation byte for byte, and read back to the same.</summary>
public class GoldenTests
{
    private static byte[] Golden(string name) => File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Golden", name));

    [Theory]
    [InlineData("block-ipv4.json")]
    [InlineData("block-ipv4-unaffine-empty.json")]
    [InlineData("block-ipv6.json")]
    public void Block_round_trips_byte_for_byte(string file)
    {
        var bytes = Golden(file);
        var block = RecordJson.DecodeBlock(bytes, file);
        Assert.Equal(Encoding.UTF8.GetString(bytes), Encoding.UTF8.GetString(RecordJson.Encode(block)));
        Assert.Empty(BlockLogic.Validate(block));
    }

    [Theory]
    [InlineData("affinity-confirmed.json", "confirmed")]
    [InlineData("affinity-pending.json", "pending")]
    public void Affinity_round_trips(string file, string state)
    {
        var bytes = Golden(file);
        var a = RecordJson.DecodeAffinity(bytes, file);
        Assert.Equal(state, a.State);
        Assert.Equal(bytes, RecordJson.Encode(new BlockAffinity { State = state }));
    }

    [Fact]
    public void Handle_round_trips()
    {
        var bytes = Golden("handle.json");
        var h = RecordJson.DecodeHandle(bytes, "handle");
        Assert.Equal(1, h.Block!["10.244.1.0/26"]);
        Assert.Equal(bytes, RecordJson.Encode(h));
    }

    [Fact]
    public void Config_round_trips_and_defaults_serialise_empty()
    {
        var bytes = Golden("config.json");
        var c = RecordJson.DecodeConfig(bytes, "config");
        Assert.True(c.StrictAffinity);
        Assert.True(c.AutoAllocateBlocks);
        Assert.Equal(4, c.MaxBlocksPerHost);
        Assert.Equal(bytes, RecordJson.Encode(c));
        Assert.Equal(Golden("config-defaults.json"), RecordJson.Encode(new IpamConfig()));
        Assert.Equal(20, new IpamConfig().EffectiveMaxBlocksPerHost);
    }

    [Fact]
    public void Blocks_built_by_the_allocator_serialise_like_calico()
    {
        // Rebuild block-ipv4.json through the allocator's own operations and compare bytes.
        var created = new DateTimeOffset(2026, 11, 25, 10, 0, 0, TimeSpan.Zero);
        var block = BlockLogic.Create(IpNet.Parse("10.244.1.0/26"), "node1", created);
        Assert.Equal(BlockLogic.UnixNanos(created), block.SequenceNumber);
        block.SequenceNumber = 1764064800000000000; // the golden file's base (a creation time in 2025)
        Dictionary<string, string> Attrs(string ns, string pod, string ts) => new() { ["namespace"] = ns, ["node"] = "node1", ["pod"] = pod, ["timestamp"] = ts };
        Assert.Equal([0], BlockLogic.Allocate(block, 1, "k8s-pod-network.4f2c1a9e", Attrs("default", "nginx-1", "2026-11-25 10:00:00.000000001 +0000 UTC")));
        Assert.True(BlockLogic.AllocateOrdinal(block, 2, "k8s-pod-network.77ab90c1", Attrs("kube-system", "coredns-0", BlockLogic.FormatGoTime(created.AddSeconds(1.5)))));
        block.SequenceNumber += 4; // four writes that concerned other ordinals
        Assert.True(BlockLogic.AllocateOrdinal(block, 10, "k8s-pod-network.0d9e8f7a", Attrs("default", "web-2", BlockLogic.FormatGoTime(created.AddMinutes(2)))));
        Assert.Equal(Encoding.UTF8.GetString(Golden("block-ipv4.json")), Encoding.UTF8.GetString(RecordJson.Encode(block)));
    }

    [Fact]
    public void Go_time_strings_match()
    {
        var t = new DateTimeOffset(2026, 11, 25, 10, 0, 0, TimeSpan.Zero);
        Assert.Equal("2026-11-25 10:00:00 +0000 UTC", BlockLogic.FormatGoTime(t));
        Assert.Equal("2026-11-25 10:00:01.5 +0000 UTC", BlockLogic.FormatGoTime(t.AddSeconds(1.5)));
        Assert.Equal("2026-11-25 10:00:00.0000001 +0000 UTC", BlockLogic.FormatGoTime(t.AddTicks(1)));
        Assert.Equal("2026-11-25T10:00:00Z", BlockLogic.FormatClaimTime(t));
        Assert.Equal(1764064800000000000UL, BlockLogic.UnixNanos(t.AddYears(-1)));
    }
}
