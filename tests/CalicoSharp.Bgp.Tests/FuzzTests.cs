using System.Buffers;
using System.Globalization;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

/// <summary>
/// A structure-aware mutator over valid messages: lengths, flags, attribute codes, truncations, splices,
/// and some plain random bytes. Every input must decode or fail with <see cref="BgpProtocolException"/>,
/// quickly, allocating in proportion to its size; a clean UPDATE must survive re-encoding.
/// The short run is part of <c>make test</c>; <c>make fuzz</c> runs the long one (BGP_FUZZ_INPUTS, default 1,000,000).
/// </summary>
public class FuzzTests
{
    private static readonly string CrashDir = Path.Combine(AppContext.BaseDirectory, "Crashes");

    internal static List<byte[]> Seeds()
    {
        var seeds = new List<byte[]>
        {
            MessageEncoder.Keepalive(),
            MessageEncoder.Notification(NotificationMessage.Shutdown("fuzz")),
            MessageEncoder.RouteRefresh(new RouteRefreshMessage(Afi.IPv6, Safi.Unicast)),
            MessageEncoder.Open(new OpenMessage
            {
                As = 4200000001, HoldTime = 90, BgpIdentifier = 0x0A000001,
                Multiprotocol = [(Afi.IPv4, Safi.Unicast), (Afi.IPv6, Safi.Unicast)],
                RouteRefresh = true, FourOctetAs = true, ExtendedMessage = true,
                GracefulRestart = new GracefulRestartCapability(false, true, 120, [new(Afi.IPv4, Safi.Unicast, true)]),
            }),
            UpdateEncoder.EndOfRib(Afi.IPv4),
            UpdateEncoder.EndOfRib(Afi.IPv6),
        };
        var full = new PathAttributes
        {
            Origin = Origin.Egp,
            AsPath = new AsPath([new AsPathSegment(SegmentType.AsSequence, [65001, 4200000000]), new AsPathSegment(SegmentType.AsSet, [1, 2])]),
            NextHop = Prefix.Parse("10.0.0.1/32"),
            Med = 5, LocalPref = 100, AtomicAggregate = true, Aggregator = (65001, 1),
            Communities = [1, 2], LargeCommunities = [new LargeCommunity(1, 2, 3)], OriginatorId = 9, ClusterList = [7],
            Unknown = [new RawAttribute(0xE0, 99, [1, 2, 3])],
        };
        // UPDATEs without (recognised) attributes: NLRI alone, NLRI with an unknown optional non-transitive attribute,
        // MP_REACH_NLRI alone, and a plain withdrawal.
        byte[] mpReach = [0, 2, 1, 16, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 64, 0xFD, 0, 0, 1, 0, 0, 0, 0];
        seeds.Add(Wire.Update([], [], [16, 10, 1, 24, 10, 2, 3]));
        seeds.Add(Wire.Update([], Wire.Attr(0x80, 99, 1, 2), [16, 10, 1]));
        seeds.Add(Wire.Update([], Wire.Attr(0x80, 14, mpReach), []));
        seeds.Add(Wire.Update([], [.. Wire.Attr(0x80, 14, mpReach), .. Wire.Attr(0xC0, 8, 0, 0, 0, 1)], [16, 10, 1]));
        seeds.Add(Wire.Update([16, 10, 1, 26, 10, 9, 0, 0], [], []));
        foreach (bool as4 in new[] { true, false })
        {
            var enc = new UpdateEncoder(new CodecOptions(as4, false));
            var w = new ArrayBufferWriter<byte>();
            enc.WriteAnnounce(w, full, [Prefix.Parse("10.1.0.0/16"), Prefix.Parse("10.2.3.0/24"), Prefix.Parse("0.0.0.0/0")]);
            seeds.Add(w.WrittenSpan.ToArray());
            w = new ArrayBufferWriter<byte>();
            enc.WriteAnnounce(w, full with { NextHop = Prefix.Parse("fd00::1/128"), LinkLocalNextHop = Prefix.Parse("fe80::1/128") },
                [Prefix.Parse("fd00:1::/64"), Prefix.Parse("fd00:2::/122")]);
            seeds.Add(w.WrittenSpan.ToArray());
            w = new ArrayBufferWriter<byte>();
            enc.WriteWithdraw(w, [Prefix.Parse("10.1.0.0/16"), Prefix.Parse("10.9.0.0/26")]);
            seeds.Add(w.WrittenSpan.ToArray());
            w = new ArrayBufferWriter<byte>();
            enc.WriteWithdraw(w, [Prefix.Parse("fd00:1::/64")]);
            seeds.Add(w.WrittenSpan.ToArray());
        }
        return seeds;
    }

    /// <summary>Offsets of the path attributes of an UPDATE (flags octet), for targeted mutations.</summary>
    private static List<int> AttributeOffsets(byte[] m)
    {
        var list = new List<int>();
        if (m.Length < 23 || m[18] != 2)
        {
            return list;
        }
        int wl = (m[19] << 8) | m[20];
        int at = 21 + wl;
        if (at + 2 > m.Length)
        {
            return list;
        }
        int total = (m[at] << 8) | m[at + 1];
        int i = at + 2;
        int end = Math.Min(m.Length, i + total);
        while (i + 3 <= end)
        {
            list.Add(i);
            bool ext = (m[i] & 0x10) != 0;
            int len = ext ? (i + 4 <= end ? (m[i + 2] << 8) | m[i + 3] : 0) : m[i + 2];
            i += (ext ? 4 : 3) + len;
        }
        return list;
    }

    internal static byte[] Mutate(Random r, List<byte[]> seeds)
    {
        byte[] m = (byte[])seeds[r.Next(seeds.Count)].Clone();
        int rounds = 1 + r.Next(3);
        for (int k = 0; k < rounds; k++)
        {
            List<int> attrs = AttributeOffsets(m);
            switch (r.Next(12))
            {
                case 0 when m.Length > 0:
                    m[r.Next(m.Length)] = (byte)r.Next(256);
                    break;
                case 1 when m.Length > 0:
                    m[r.Next(m.Length)] = (new byte[] { 0, 0xFF, 0x7F, 0x80, 1, 2 })[r.Next(6)];
                    break;
                case 2 when m.Length >= 18:
                    // Header length field.
                    int len = r.Next(3) switch { 0 => m.Length + r.Next(-3, 4), 1 => r.Next(0, 65536), _ => 4096 + r.Next(-2, 3) };
                    m[16] = (byte)(len >> 8);
                    m[17] = (byte)len;
                    break;
                case 3 when m.Length >= 23:
                    // Withdrawn or total attribute length.
                    int at = r.Next(2) == 0 ? 19 : 21 + ((m[19] << 8) | m[20]);
                    if (at + 1 < m.Length)
                    {
                        int v = ((m[at] << 8) | m[at + 1]) + r.Next(-4, 5);
                        m[at] = (byte)(v >> 8);
                        m[at + 1] = (byte)v;
                    }
                    break;
                case 4 when attrs.Count > 0:
                    // Attribute flags: flip optional/transitive/partial/extended.
                    int a = attrs[r.Next(attrs.Count)];
                    m[a] ^= (byte)(0x10 << r.Next(4));
                    break;
                case 5 when attrs.Count > 0:
                    // Attribute type code: another known one or anything.
                    int b = attrs[r.Next(attrs.Count)];
                    byte[] known = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 18, 32, 0, 255];
                    m[b + 1] = r.Next(2) == 0 ? known[r.Next(known.Length)] : (byte)r.Next(256);
                    break;
                case 6 when attrs.Count > 0:
                    // Attribute length.
                    int c = attrs[r.Next(attrs.Count)];
                    if (c + 2 < m.Length)
                    {
                        m[c + 2] = (byte)(m[c + 2] + r.Next(-3, 4));
                    }
                    break;
                case 7 when m.Length > 1:
                    m = m[..r.Next(m.Length)];
                    break;
                case 8:
                    byte[] extra = new byte[r.Next(1, 40)];
                    r.NextBytes(extra);
                    m = [.. m, .. extra];
                    break;
                case 9 when attrs.Count > 0:
                    // Repeat an attribute.
                    int d = attrs[r.Next(attrs.Count)];
                    int dl = Math.Min(m.Length - d, 3 + m[Math.Min(d + 2, m.Length - 1)]);
                    m = [.. m[..d], .. m.AsSpan(d, dl), .. m[d..]];
                    break;
                case 10:
                    // Splice two messages.
                    byte[] other = seeds[r.Next(seeds.Count)];
                    int cut = r.Next(Math.Min(m.Length, other.Length) + 1);
                    m = [.. m[..cut], .. other[cut..]];
                    break;
                default:
                    if (r.Next(20) == 0)
                    {
                        m = new byte[r.Next(0, 120)];
                        r.NextBytes(m);
                        if (m.Length >= 16 && r.Next(2) == 0)
                        {
                            m.AsSpan(0, 16).Fill(0xFF);
                        }
                    }
                    break;
            }
        }
        return m;
    }

    /// <summary>Decodes one input the way a connection does; throws <see cref="FuzzFailure"/> on a violated property.</summary>
    internal static void Check(byte[] input)
    {
        foreach (CodecOptions o in new[] { new CodecOptions(true, false), new CodecOptions(false, true) })
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            BgpMessage? m = null;
            try
            {
                if (MessageDecoder.TryReadHeader(input, o.MaxMessageLength, out MessageType type, out int length) && length <= input.Length)
                {
                    m = MessageDecoder.Decode(type, input.AsSpan(19, length - 19), o);
                }
            }
            catch (BgpProtocolException)
            {
            }
            catch (Exception e)
            {
                throw new FuzzFailure($"{e.GetType().Name}: {e.Message}", e);
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (allocated > 4096 + 128L * input.Length)
            {
                throw new FuzzFailure($"allocated {allocated} bytes for a {input.Length}-byte input");
            }
            if (sw.ElapsedMilliseconds > 500)
            {
                throw new FuzzFailure($"took {sw.ElapsedMilliseconds} ms");
            }
            if (m is UpdateMessage u)
            {
                CheckUpdate(u, o);
            }
        }
    }

    /// <summary>
    /// Properties of every decoded UPDATE, with or without attributes: an announcement that is not treat-as-withdraw
    /// carries attributes (RFC 7606 §3(d)), announcements re-encode to the same meaning, and withdrawals (including
    /// the prefixes of a treat-as-withdraw) re-encode to the same prefixes.
    /// </summary>
    private static void CheckUpdate(UpdateMessage u, CodecOptions o)
    {
        var enc = new UpdateEncoder(o);
        var w = new ArrayBufferWriter<byte>();
        bool announces = u.Nlri.Count > 0 || u.MpReach.Count > 0;
        if (announces && u.TreatAsWithdraw)
        {
            throw new FuzzFailure($"treat-as-withdraw left {u.Nlri.Count + u.MpReach.Count} announced prefixes");
        }
        if (announces && u.Attributes is null)
        {
            throw new FuzzFailure($"{u.Nlri.Count + u.MpReach.Count} prefixes announced without attributes and not treat-as-withdraw");
        }
        if (announces)
        {
            // A clean UPDATE re-encodes to the same meaning.
            List<Prefix> prefixes = u.Nlri.Count > 0 ? u.Nlri : u.MpReach;
            PathAttributes a = u.Nlri.Count > 0 ? u.Attributes! : u.MpAttributes()!;
            ReadOnlySpan<Prefix> rest = prefixes.ToArray();
            var back = new List<Prefix>();
            while (!rest.IsEmpty)
            {
                w.Clear();
                int sent = enc.WriteAnnounce(w, a, rest);
                rest = rest[sent..];
                var again = (UpdateMessage)MessageDecoder.DecodeMessage(w.WrittenSpan, o);
                // An IPv4 prefix from MP_REACH_NLRI goes back out in the NLRI field, with the same meaning.
                PathAttributes? b = again.Nlri.Count > 0 ? again.Attributes : again.MpAttributes();
                if (!a.Equals(b) && !(u.Nlri.Count > 0 && !a.HasNextHop))
                {
                    throw new FuzzFailure($"re-encoded attributes differ: {a} vs {b}");
                }
                back.AddRange(again.Nlri.Concat(again.MpReach));
            }
            if (!back.SequenceEqual(prefixes))
            {
                throw new FuzzFailure("re-encoded prefixes differ");
            }
        }
        // Withdrawals carry no attributes; each family goes in its own UPDATE.
        foreach (IGrouping<Afi, Prefix> family in u.Withdrawn.Concat(u.MpUnreach).GroupBy(p => p.Family))
        {
            ReadOnlySpan<Prefix> rest = family.ToArray();
            var back = new List<Prefix>();
            while (!rest.IsEmpty)
            {
                w.Clear();
                int sent = enc.WriteWithdraw(w, rest);
                rest = rest[sent..];
                var again = (UpdateMessage)MessageDecoder.DecodeMessage(w.WrittenSpan, o);
                if (again.TreatAsWithdraw || again.Attributes is not null || again.Nlri.Count > 0 || again.MpReach.Count > 0)
                {
                    throw new FuzzFailure($"a re-encoded withdrawal of {family.Key} decodes as more than a withdrawal");
                }
                back.AddRange(again.Withdrawn.Concat(again.MpUnreach));
            }
            if (!back.SequenceEqual(family))
            {
                throw new FuzzFailure($"re-encoded {family.Key} withdrawals differ");
            }
        }
    }

    internal sealed class FuzzFailure : Exception
    {
        public FuzzFailure(string message, Exception? inner = null)
            : base(message, inner)
        {
        }
    }

    private static void Run(int inputs, int seed)
    {
        var r = new Random(seed);
        List<byte[]> seeds = Seeds();
        for (int i = 0; i < inputs; i++)
        {
            byte[] input = Mutate(r, seeds);
            try
            {
                Check(input);
            }
            catch (FuzzFailure f)
            {
                string file = Path.Combine(Path.GetTempPath(), $"bgp-crash-{seed}-{i}.hex");
                File.WriteAllText(file, Convert.ToHexString(input));
                Assert.Fail($"input {i} (seed {seed}) {f.Message}; saved to {file} — copy it to tests/CalicoSharp.Bgp.Tests/Crashes/ to replay it forever");
            }
        }
    }

    [Fact]
    public void Short_fuzz_run()
    {
        Run(20_000, 20261125);
    }

    [Fact]
    [Trait("Category", "Fuzz")]
    public void Long_fuzz_run()
    {
        (int inputs, int seed) = LongRunSettings();
        Run(inputs, seed);
    }

    /// <summary><c>make fuzz</c>'s inputs and seed: BGP_FUZZ_INPUTS (default 1,000,000), BGP_FUZZ_SEED (default: new).</summary>
    internal static (int Inputs, int Seed) LongRunSettings()
    {
        int inputs = int.TryParse(Environment.GetEnvironmentVariable("BGP_FUZZ_INPUTS"), NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : 1_000_000;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("BGP_FUZZ_SEED"), NumberStyles.None, CultureInfo.InvariantCulture, out int s) ? s : Environment.TickCount;
        return (inputs, seed);
    }

    [Fact]
    public void Saved_crash_inputs_replay_cleanly()
    {
        string[] files = Directory.GetFiles(CrashDir, "*.hex");
        Assert.NotEmpty(files);
        foreach (string f in files)
        {
            Check(Convert.FromHexString(File.ReadAllText(f).Trim()));
        }
    }
}
