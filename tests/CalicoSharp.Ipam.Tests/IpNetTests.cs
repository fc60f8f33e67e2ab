using System.Net;
using CalicoSharp.Ipam;

namespace CalicoSharp.Ipam.Tests;

public class IpNetTests
{
    [Theory]
    [InlineData("10.244.1.0/26", "10.244.1.0", 26, "10.244.1.63", 64)]
    [InlineData("fd00:10:244:1::/122", "fd00:10:244:1::", 122, "fd00:10:244:1::3f", 64)]
    [InlineData("0.0.0.0/0", "0.0.0.0", 0, "255.255.255.255", 4294967296)]
    [InlineData("10.0.0.7/32", "10.0.0.7", 32, "10.0.0.7", 1)]
    public void Parses_and_sizes(string text, string addr, int len, string last, long size)
    {
        var n = IpNet.Parse(text);
        Assert.Equal(IPAddress.Parse(addr), n.Address);
        Assert.Equal(len, n.PrefixLength);
        Assert.Equal(IPAddress.Parse(last), n.Last);
        Assert.Equal((UInt128)size, n.Size);
        Assert.Equal(text, n.ToString());
    }

    [Theory]
    [InlineData("10.244.1.5/26", "host bits")]
    [InlineData("10.244.1.0", "no '/prefix-length'")]
    [InlineData("10.244.1.0/33", "prefix length must be 0-32")]
    [InlineData("fd00::/129", "prefix length must be 0-128")]
    [InlineData("banana/8", "not an IP address")]
    [InlineData("", "empty")]
    [InlineData("10.0.0.0/-1", "prefix length")]
    public void Rejects_bad_cidrs_with_a_reason(string text, string reason)
    {
        Assert.False(IpNet.TryParse(text, strict: true, out _, out var error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Fact]
    public void Key_form_round_trips()
    {
        Assert.Equal("10.244.1.0-26", IpNet.Parse("10.244.1.0/26").ToKeyString());
        Assert.True(IpNet.TryParseKey("fd00:10:244:1::-122", out var v6));
        Assert.Equal("fd00:10:244:1::/122", v6.ToString());
        Assert.True(Keys.TryParseAffinityKey("/calico/ipam/v2/host/node1/ipv4/block/10.244.1.0-26", out var node, out var c));
        Assert.Equal("node1", node);
        Assert.Equal("10.244.1.0/26", c.ToString());
        Assert.False(Keys.TryParseAffinityKey("/calico/ipam/v2/host/node1/ipv6/block/10.244.1.0-26", out _, out _));
    }

    [Fact]
    public void Containment_overlap_and_subnets()
    {
        var pool = IpNet.Parse("10.244.0.0/16");
        Assert.True(pool.Contains(IPAddress.Parse("10.244.255.255")));
        Assert.False(pool.Contains(IPAddress.Parse("10.245.0.0")));
        Assert.False(pool.Contains(IPAddress.Parse("::1")));
        Assert.True(pool.Overlaps(IpNet.Parse("10.0.0.0/8")));
        Assert.False(pool.Overlaps(IpNet.Parse("10.245.0.0/16")));
        Assert.Equal("10.244.0.192/26", pool.Subnet(26, 3).ToString());
        var v6 = IpNet.Parse("fd00::/64");
        Assert.Equal("fd00::1:0/122", v6.Subnet(122, 1024).ToString());
        Assert.Equal((UInt128)5, IpNet.Parse("10.244.1.0/26").OffsetOf(IPAddress.Parse("10.244.1.5")));
    }
}

public class SelectorTests
{
    private static readonly Dictionary<string, string> Labels = new() { ["rack"] = "r1", ["zone"] = "a", ["kubernetes.io/os"] = "linux" };

    [Theory]
    [InlineData("", true)]
    [InlineData("all()", true)]
    [InlineData("rack == 'r1'", true)]
    [InlineData("rack == \"r2\"", false)]
    [InlineData("rack != 'r2'", true)]
    [InlineData("has(zone)", true)]
    [InlineData("!has(gpu)", true)]
    [InlineData("rack == 'r1' && zone == 'b'", false)]
    [InlineData("rack == 'r2' || zone == 'a'", true)]
    [InlineData("rack in {'r1', 'r3'}", true)]
    [InlineData("rack not in {'r1'}", false)]
    [InlineData("kubernetes.io/os == 'linux' && (zone == 'x' || !has(gpu))", true)]
    public void Evaluates(string text, bool expected) => Assert.Equal(expected, Selector.Parse(text).Matches(Labels));

    [Theory]
    [InlineData("rack = 'r1'")]
    [InlineData("rack == r1")]
    [InlineData("has(rack")]
    [InlineData("rack == 'r1' &&")]
    [InlineData("all() extra")]
    public void Rejects_malformed(string text)
    {
        var e = Assert.Throws<IpamException>(() => Selector.Parse(text));
        Assert.Equal(IpamErrorKind.InvalidArgument, e.Kind);
        Assert.Contains("invalid selector", e.Message, StringComparison.Ordinal);
    }
}
