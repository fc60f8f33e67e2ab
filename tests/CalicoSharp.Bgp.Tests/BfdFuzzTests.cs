using System.Net;
using CalicoSharp.Bgp.Bfd;

namespace CalicoSharp.Bgp.Tests;

/// <summary>
/// Mutated BFD Control packets (lengths, flags, states, discriminators, truncations, random bytes, TTLs, sources)
/// into a live endpoint with sessions in every state: every input is accepted or discarded with a reason, never
/// throws, takes no time and allocates nothing; an accepted packet re-encodes to the same fields. The short run is
/// part of <c>make test</c>; <c>make fuzz</c> runs the long one (BGP_FUZZ_INPUTS, BGP_FUZZ_SEED).
/// </summary>
public class BfdFuzzTests
{
    private static byte[] Mutate(Random r, List<byte[]> seeds)
    {
        byte[] m = (byte[])seeds[r.Next(seeds.Count)].Clone();
        int rounds = 1 + r.Next(3);
        for (int k = 0; k < rounds; k++)
        {
            switch (r.Next(8))
            {
                case 0 when m.Length > 0:
                    m[r.Next(m.Length)] = (byte)r.Next(256);
                    break;
                case 1 when m.Length > 3:
                    m[3] = (byte)(r.Next(2) == 0 ? r.Next(256) : m.Length + r.Next(-3, 4));
                    break;
                case 2 when m.Length > 1:
                    m[1] ^= (byte)(1 << r.Next(8));
                    break;
                case 3:
                    Array.Resize(ref m, r.Next(0, m.Length + 1));
                    break;
                case 4:
                    Array.Resize(ref m, m.Length + r.Next(1, 40));
                    break;
                case 5 when m.Length > 2:
                    m[2] = (byte)(r.Next(3) == 0 ? 0 : r.Next(256));
                    break;
                case 6 when m.Length >= 12:
                    // a zero, or another session's, or a random discriminator
                    int at = r.Next(2) == 0 ? 4 : 8;
                    uint v = r.Next(3) switch { 0 => 0, 1 => (uint)r.Next(1, 4), _ => (uint)r.Next() };
                    System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(m.AsSpan(at), v);
                    break;
                default:
                    m = new byte[r.Next(0, 64)];
                    r.NextBytes(m);
                    break;
            }
        }
        return m;
    }

    private static void Run(int inputs, int seed)
    {
        var r = new Random(seed);
        var h = new BfdHarness(seed);
        IPAddress[] sources = [BfdHarness.PeerAddress, IPAddress.Parse("172.30.2.1"), IPAddress.Parse("fd00::1"), IPAddress.Parse("10.9.9.9")];
        foreach (IPAddress a in sources.Take(3))
        {
            h.Endpoint.Add(a, null, new BfdTimers(TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(10), TimeSpan.FromSeconds(1), 3));
        }
        var seeds = new List<byte[]>();
        foreach (BfdState st in Enum.GetValues<BfdState>())
        {
            foreach (BfdSession s in h.Endpoint.Sessions)
            {
                seeds.Add(BfdHarness.Bytes(BfdHarness.Remote(st, s.LocalDiscriminator, poll: st == BfdState.Up)));
            }
            seeds.Add(BfdHarness.Bytes(BfdHarness.Remote(st, 0, final: true)));
        }
        for (int i = 0; i < inputs; i++)
        {
            byte[] input = Mutate(r, seeds);
            int ttl = r.Next(8) == 0 ? r.Next(256) : 255;
            IPAddress from = sources[r.Next(sources.Length)];
            BfdDiscard why;
            try
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                BfdControlPacket.TryRead(input, out _);
                Assert.True(GC.GetAllocatedBytesForCurrentThread() == before, $"input {i}: the decoder allocated");
                why = h.Endpoint.Receive(input, from, ttl);
                if (BfdControlPacket.TryRead(input, out BfdControlPacket p) == BfdDiscard.None && !p.Authentication)
                {
                    byte[] again = new byte[BfdControlPacket.Size];
                    p.Write(again);
                    Assert.True(BfdControlPacket.TryRead(again, out BfdControlPacket q) == BfdDiscard.None && q == p, "re-encoded packet differs");
                }
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                string file = Path.Combine(Path.GetTempPath(), $"bfd-crash-{seed}-{i}.hex");
                File.WriteAllText(file, Convert.ToHexString(input));
                Assert.Fail($"input {i} (seed {seed}, ttl {ttl}, from {from}) {e.GetType().Name}: {e.Message}; saved to {file}");
                return;
            }
            Assert.True(Enum.IsDefined(why));
            if (i % 64 == 0)
            {
                h.Time.Advance(TimeSpan.FromMilliseconds(r.Next(0, 50)));
                h.Transport.Sent.Clear();
            }
            h.Loop.RunPending();
        }
        Assert.Equal(inputs, h.Endpoint.Received);
        Assert.True(h.Endpoint.Discarded > 0 && h.Endpoint.Discarded < inputs, $"{h.Endpoint.Discarded} of {inputs} discarded");
    }

    [Fact]
    public void Short_bfd_fuzz_run()
    {
        Run(20_000, 20261205);
    }

    [Fact]
    [Trait("Category", "Fuzz")]
    public void Long_bfd_fuzz_run()
    {
        (int inputs, int seed) = FuzzTests.LongRunSettings();
        Run(inputs, seed);
    }
}
