using System.Buffers;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>
/// What a peer can make the speaker hold: a tester peer on loopback announces N IPv6 /128s that the import
/// policy refuses (outside the pool, as a hostile or broken peer would), 200 per UPDATE. Measured after every
/// UPDATE was handled, against the same figures once the session was up: the RIB's stored prefixes, the managed
/// heap after a full collection, and the process's resident memory (the RIB keeps its columns in native memory,
/// which only RSS sees). Printed, never asserted.
/// </summary>
internal static class PeerMemoryBench
{
    public static async Task RunAsync(TextWriter o, int prefixes)
    {
        var pool = Prefix.Parse("fd00:244::/48");
        await using var speaker = new BgpSpeaker(new SpeakerConfig { LocalAs = 64512, RouterId = SpeakerConfig.ParseRouterId("127.0.0.1") });
        speaker.Import = (BgpPeer? _, Prefix p, ref PathAttributes a) => pool.Contains(p) ? PolicyResult.Accept : PolicyResult.Reject;
        IPEndPoint ep = speaker.Listen(new IPEndPoint(IPAddress.Loopback, 0));
        BgpPeer peer = await speaker.InvokeAsync(() => speaker.AddPeer(new PeerConfig
        {
            Address = IPAddress.Parse("127.0.0.2"),
            RemoteAs = 65001,
            Passive = true,
            LocalAddress = IPAddress.Loopback,
        })).ConfigureAwait(false);
        (byte[] updates, int messages) = Prepare(prefixes, 200);
        await using BgpTester tester = await BgpTester.ConnectAsync(ep, IPAddress.Parse("127.0.0.2"), 65001).ConfigureAwait(false);
        long heap0 = GC.GetTotalMemory(forceFullCollection: true);
        long rss0 = Rss();
        var sw = Stopwatch.StartNew();
        await tester.SendAsync(updates).ConfigureAwait(false);
        while (await speaker.InvokeAsync(() => peer.UpdatesReceived).ConfigureAwait(false) < messages)
        {
            if (sw.Elapsed > TimeSpan.FromMinutes(5))
            {
                throw new TimeoutException("the speaker did not take every UPDATE in 5 minutes");
            }
            await Task.Delay(50).ConfigureAwait(false);
        }
        double seconds = sw.Elapsed.TotalSeconds;
        int stored = await speaker.InvokeAsync(() => speaker.Rib.Count).ConfigureAwait(false);
        long heap = GC.GetTotalMemory(forceFullCollection: true);
        long rss = Rss();
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Peer memory: a peer announces {prefixes:N0} IPv6 /128s outside the pool (all refused), 200 per UPDATE, over loopback"));
        o.WriteLine("| RIB prefixes stored | managed heap growth (MiB) | RSS growth (MiB) | time (s) |");
        o.WriteLine("|---|---|---|---|");
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"| {stored:N0} | {(heap - heap0) / 1048576.0:0.0} | {(rss - rss0) / 1048576.0:0.0} | {seconds:0.00} |"));
        GC.KeepAlive(updates);
    }

    private static long Rss()
    {
        using var self = Process.GetCurrentProcess();
        return self.WorkingSet64;
    }

    /// <summary>UPDATEs announcing <paramref name="count"/> distinct /128s in 2001:db8::/32 (MP_REACH_NLRI).</summary>
    private static (byte[] Bytes, int Messages) Prepare(int count, int perUpdate)
    {
        var w = new ArrayBufferWriter<byte>(count * 20 + 1024);
        var encoder = new UpdateEncoder(new CodecOptions(true, false));
        var attrs = new PathAttributes { AsPath = AsPath.Sequence(65001), NextHop = Prefix.Parse("fd00::2/128") };
        var batch = new Prefix[perUpdate];
        Span<byte> a = stackalloc byte[16];
        int messages = 0;
        for (int i = 0; i < count;)
        {
            int n = Math.Min(perUpdate, count - i);
            for (int j = 0; j < n; j++, i++)
            {
                a.Clear();
                a[0] = 0x20;
                a[1] = 0x01;
                a[2] = 0x0d;
                a[3] = 0xb8;
                System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(a[12..], i);
                batch[j] = Prefix.FromAddress(new IPAddress(a), 128);
            }
            ReadOnlySpan<Prefix> left = batch.AsSpan(0, n);
            while (!left.IsEmpty)
            {
                left = left[encoder.WriteAnnounce(w, attrs, left)..];
                messages++;
            }
        }
        return (w.WrittenSpan.ToArray(), messages);
    }
}
