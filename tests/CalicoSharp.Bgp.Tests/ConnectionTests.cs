using System.Net;
using CalicoSharp.Bgp;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgp.Tests;

/// <summary>The reader's hand-off to the loop: batches, recycled UPDATE messages, errors after good messages.</summary>
public class ConnectionTests
{
    [Fact]
    public async Task Messages_arrive_in_order_each_with_its_own_content_and_those_before_a_bad_one_are_handled_first()
    {
        // 1,000 UPDATEs of 1 prefix each (several batches, recycled messages), then a message of an unknown type.
        const int updates = 1000;
        byte[] good = BgpTester.PrepareAnnouncements(65001, IPAddress.Parse("192.0.2.1"), 0x0A000000, updates, 1);
        byte[] bad = new byte[MessageDecoder.HeaderLength];
        bad.AsSpan(0, 16).Fill(0xFF);
        bad[17] = MessageDecoder.HeaderLength;
        bad[18] = 9;
        var loop = new ManualEventLoop();
        await using var conn = new BgpConnection(new MemoryStream([.. good, .. bad]), loop, TimeProvider.System, "test", outgoing: false)
        {
            Options = new CodecOptions(true, false),
        };
        var seen = new List<(Prefix Prefix, uint LastAs)>();
        Exception? closedWith = null;
        bool closed = false;
        conn.OnMessage = (_, m) =>
        {
            var u = Assert.IsType<UpdateMessage>(m);
            // What a handler may keep: copies, not the message (it is reused for a later one).
            seen.Add((Assert.Single(u.Nlri), u.Attributes!.AsPath.Segments[0].Asns[^1]));
        };
        conn.OnClosed = (_, e) =>
        {
            closedWith = e;
            closed = true;
        };
        conn.Start();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!closed)
        {
            Assert.True(DateTime.UtcNow < deadline, $"the connection did not report its close in 30 s ({seen.Count} messages handled)");
            if (loop.RunPending() == 0)
            {
                await Task.Delay(5);
            }
        }

        Assert.Equal(updates, seen.Count);
        for (int i = 0; i < updates; i++)
        {
            Assert.Equal(Prefix.V4(0x0A000000 + ((uint)i << 8), 24), seen[i].Prefix);
            Assert.Equal(100000u + (uint)i, seen[i].LastAs);
        }
        var error = Assert.IsType<BgpProtocolException>(closedWith);
        Assert.Equal(ErrorCode.MessageHeader, error.Code);
        Assert.Equal(Subcode.BadMessageType, error.Subcode);
    }
}
