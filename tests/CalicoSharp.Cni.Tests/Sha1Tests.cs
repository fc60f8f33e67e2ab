using System.Text;
using CalicoSharp.Netlink;

namespace CalicoSharp.Cni.Tests;

/// <summary>The plugin's own SHA-1 (used for Calico's interface names) against FIPS 180 examples and .NET's
/// SHA1 (OpenSSL) for every length around the block and padding boundaries.</summary>
public class Sha1Tests
{
    [Theory]
    [InlineData("", "da39a3ee5e6b4b0d3255bfef95601890afd80709")]
    [InlineData("abc", "a9993e364706816aba3e25717850c26c9cd0d89d")]
    [InlineData("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1")]
    public void Matches_the_FIPS_180_examples(string message, string digest) =>
        Assert.Equal(digest, Convert.ToHexStringLower(Sha1.HashData(Encoding.ASCII.GetBytes(message))));

    [Fact]
    public void Matches_the_million_a_example() =>
        Assert.Equal("34aa973cd4c4daa4f61eeb2bdbad27316534016f", Convert.ToHexStringLower(Sha1.HashData(Encoding.ASCII.GetBytes(new string('a', 1_000_000)))));

    [Fact]
    public void Matches_dotnets_SHA1_for_every_length_up_to_300_bytes()
    {
        var random = new Random(180);
        for (int length = 0; length <= 300; length++)
        {
            var data = new byte[length];
            random.NextBytes(data);
#pragma warning disable CA5350 // the reference implementation under test, not a security use
            Assert.Equal(System.Security.Cryptography.SHA1.HashData(data), Sha1.HashData(data));
#pragma warning restore CA5350
        }
    }

    [Fact]
    public void Names_the_host_interface_as_Calico_does()
    {
        // cali + the first 11 hex digits of sha1("kube-system.coredns-5d78c9869d-abcde") (Python's hashlib).
        Assert.Equal("cali4d5f75c480c", HostInterface.Name("kube-system", "coredns-5d78c9869d-abcde", "0123456789abcdef"));
        Assert.Equal("cali0123456789a", HostInterface.Name(null, null, "0123456789abcdef"));
    }
}
