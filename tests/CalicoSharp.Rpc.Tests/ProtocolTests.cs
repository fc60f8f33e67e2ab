using System.Buffers.Binary;
using System.Net.Sockets;
using CalicoSharp.Rpc.Tests.Echo;
using static CalicoSharp.Rpc.Tests.RawFrames;

namespace CalicoSharp.Rpc.Tests;

/// <summary>What the server does with a peer that breaks HTTP/2's rules (RFC 9113): the exact GOAWAY or
/// RST_STREAM code, and it goes on serving everybody else. Bytes are written by hand on a raw socket.</summary>
public class ProtocolTests
{
    private static readonly byte[] Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray();


    private static byte[] Settings(params (ushort Id, uint Value)[] s)
    {
        byte[] p = new byte[s.Length * 6];
        for (int i = 0; i < s.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(i * 6), s[i].Id);
            BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan((i * 6) + 2), s[i].Value);
        }

        return Frame(4, 0, 0, p);
    }

    private static byte[] U32(uint v)
    {
        byte[] b = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        return b;
    }

    /// <summary>A valid request's header block for the echo service.</summary>
    private static byte[] RequestBlock() => GrpcWire.Block([(":method", "POST"), (":scheme", "http"), (":path", "/calicosharp.test.Echo/Say"), (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]);


    /// <summary>Sends the bytes after a valid preface and SETTINGS; returns the first GOAWAY or RST_STREAM
    /// the server answers with (type, stream, code), reading until it closes.</summary>
    private static async Task<(byte Type, int Stream, Http2ErrorCode Code)?> SendAsync(EchoServer server, byte[] bytes, bool withPreface = true)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(server.SocketPath));
        await socket.SendAsync(withPreface ? Concat(Preface, Settings(), bytes) : bytes);
        var buffer = new List<byte>();
        byte[] chunk = new byte[65536];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        while (true)
        {
            int n;
            try
            {
                n = await socket.ReceiveAsync(chunk, SocketFlags.None, timeout.Token);
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                n = 0;
            }

            buffer.AddRange(chunk.AsSpan(0, n).ToArray());
            for (int pos = 0; pos + 9 <= buffer.Count;)
            {
                int len = (buffer[pos] << 16) | (buffer[pos + 1] << 8) | buffer[pos + 2];
                if (pos + 9 + len > buffer.Count)
                {
                    break;
                }

                byte type = buffer[pos + 3];
                int stream = BinaryPrimitives.ReadInt32BigEndian(buffer.GetRange(pos + 5, 4).ToArray()) & int.MaxValue;
                if (type == 7)
                {
                    return (type, stream, (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(buffer.GetRange(pos + 13, 4).ToArray()));
                }

                if (type == 3)
                {
                    return (type, stream, (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(buffer.GetRange(pos + 9, 4).ToArray()));
                }

                pos += 9 + len;
            }

            if (n == 0)
            {
                return null;
            }
        }
    }

    public static TheoryData<string, byte[], Http2ErrorCode> ConnectionErrors => new()
    {
        { "DATA on stream 0", Frame(0, 0, 0, 1, 2, 3), Http2ErrorCode.ProtocolError },
        { "frame over SETTINGS_MAX_FRAME_SIZE", Frame(0, 0, 1, new byte[16_385]), Http2ErrorCode.FrameSizeError },
        { "SETTINGS of 5 bytes", Frame(4, 0, 0, 0, 4, 0, 0, 1), Http2ErrorCode.FrameSizeError },
        { "SETTINGS on a stream", Frame(4, 0, 1), Http2ErrorCode.ProtocolError },
        { "SETTINGS_INITIAL_WINDOW_SIZE 2^31", Settings((4, 0x8000_0000)), Http2ErrorCode.FlowControlError },
        { "SETTINGS_MAX_FRAME_SIZE 100", Settings((5, 100)), Http2ErrorCode.ProtocolError },
        { "SETTINGS_ENABLE_PUSH 2", Settings((2, 2)), Http2ErrorCode.ProtocolError },
        { "SETTINGS ACK with a payload", Frame(4, 1, 0, 0, 0, 0, 0, 0, 0), Http2ErrorCode.FrameSizeError },
        { "WINDOW_UPDATE of 0 on the connection", Frame(8, 0, 0, U32(0)), Http2ErrorCode.ProtocolError },
        { "connection window past 2^31-1", Concat(Frame(8, 0, 0, U32(0x7FFF_FFFF))), Http2ErrorCode.FlowControlError },
        { "PING of 7 bytes", Frame(6, 0, 0, 1, 2, 3, 4, 5, 6, 7), Http2ErrorCode.FrameSizeError },
        { "PING on a stream", Frame(6, 0, 1, new byte[8]), Http2ErrorCode.ProtocolError },
        { "CONTINUATION without HEADERS", Frame(9, 4, 1, 0x82), Http2ErrorCode.ProtocolError },
        { "PING inside a header block", Concat(Frame(1, 0, 1, 0x83), Frame(6, 0, 0, new byte[8])), Http2ErrorCode.ProtocolError },
        { "HPACK index beyond the table", Frame(1, 5, 1, 0xFF, 0x20), Http2ErrorCode.CompressionError },
        { "HEADERS on an even stream", Frame(1, 5, 2, RequestBlock()), Http2ErrorCode.ProtocolError },
        { "PUSH_PROMISE from a client", Frame(5, 4, 1, 0, 0, 0, 2), Http2ErrorCode.ProtocolError },
        { "DATA on an idle stream", Frame(0, 0, 5, 1), Http2ErrorCode.ProtocolError },
        { "RST_STREAM on an idle stream", Frame(3, 0, 7, U32(8)), Http2ErrorCode.ProtocolError },
        { "RST_STREAM of 3 bytes", Frame(3, 0, 1, 0, 0, 8), Http2ErrorCode.FrameSizeError },
        { "padding as long as the frame", Frame(1, 0x0C, 1, 5, 0x83), Http2ErrorCode.ProtocolError },
        { "GOAWAY shorter than 8 bytes", Frame(7, 0, 0, 0, 0, 0, 0), Http2ErrorCode.FrameSizeError },
        { "a header block over 64 KiB", Concat([Frame(1, 0, 1, new byte[16_000]), Frame(9, 0, 1, new byte[16_000]), Frame(9, 0, 1, new byte[16_000]), Frame(9, 0, 1, new byte[16_000]), Frame(9, 0, 1, new byte[16_000])]), Http2ErrorCode.EnhanceYourCalm },
    };

    [Theory]
    [MemberData(nameof(ConnectionErrors))]
    public async Task A_connection_error_gets_GOAWAY_with_its_code_and_the_server_serves_on(string what, byte[] bytes, Http2ErrorCode code)
    {
        await using var server = new EchoServer();
        var answer = await SendAsync(server, bytes);
        Assert.True(answer is not null, $"{what}: no GOAWAY");
        Assert.Equal((7, code), (answer.Value.Type, answer.Value.Code));
        await AssertServesAsync(server);
    }

    [Fact]
    public async Task A_client_that_does_not_speak_HTTP2_is_told_so()
    {
        await using var server = new EchoServer();
        var answer = await SendAsync(server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), withPreface: false);
        Assert.Equal((7, Http2ErrorCode.ProtocolError), (answer!.Value.Type, answer.Value.Code));
        await AssertServesAsync(server);
    }

    [Fact]
    public async Task A_first_frame_other_than_SETTINGS_is_refused()
    {
        await using var server = new EchoServer();
        var answer = await SendAsync(server, Concat(Preface, Frame(6, 0, 0, new byte[8])), withPreface: false);
        Assert.Equal((7, Http2ErrorCode.ProtocolError), (answer!.Value.Type, answer.Value.Code));
    }

    public static TheoryData<string, byte[], Http2ErrorCode> StreamErrors => new()
    {
        { "WINDOW_UPDATE of 0 on a stream", Concat(Frame(1, 4, 1, RequestBlock()), Frame(8, 0, 1, U32(0))), Http2ErrorCode.ProtocolError },
        { "stream window past 2^31-1", Concat(Frame(1, 4, 1, RequestBlock()), Frame(8, 0, 1, U32(0x7FFF_FFFF))), Http2ErrorCode.FlowControlError },
        { "a second header block without END_STREAM", Concat(Frame(1, 4, 1, RequestBlock()), Frame(1, 4, 1, RequestBlock())), Http2ErrorCode.ProtocolError },
        { "PRIORITY of 4 bytes", Frame(2, 0, 1, 0, 0, 0, 0), Http2ErrorCode.FrameSizeError },
        { "more streams than SETTINGS_MAX_CONCURRENT_STREAMS", Concat([.. Enumerable.Range(0, 101).Select(i => Frame(1, 4, (2 * i) + 1, RequestBlock()))]), Http2ErrorCode.RefusedStream },
    };

    [Theory]
    [MemberData(nameof(StreamErrors))]
    public async Task A_stream_error_resets_only_that_stream(string what, byte[] bytes, Http2ErrorCode code)
    {
        await using var server = new EchoServer();
        var answer = await SendAsync(server, bytes);
        Assert.True(answer is not null, $"{what}: no RST_STREAM");
        Assert.Equal((3, code), (answer.Value.Type, answer.Value.Code));
        await AssertServesAsync(server);
    }

    [Fact]
    public async Task PING_is_answered_with_the_same_payload()
    {
        await using var server = new EchoServer();
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(server.SocketPath));
        byte[] payload = [1, 2, 3, 4, 5, 6, 7, 8];
        await socket.SendAsync(Concat(Preface, Settings(), Frame(6, 0, 0, payload)));
        var got = new List<byte>();
        byte[] chunk = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        while (true)
        {
            got.AddRange(chunk.AsSpan(0, await socket.ReceiveAsync(chunk, SocketFlags.None, timeout.Token)).ToArray());
            int at = IndexOf(got, Frame(6, 1, 0, payload));
            if (at >= 0)
            {
                return;
            }
        }
    }

    [Fact]
    public async Task Random_frames_never_take_the_server_down()
    {
        await using var server = new EchoServer();
        var random = new Random(5);
        byte[][] seeds = [.. ConnectionErrors.Select(r => (byte[])r[1]), .. StreamErrors.Select(r => (byte[])r[1]), Frame(1, 5, 1, RequestBlock())];
        for (int i = 0; i < 300; i++)
        {
            byte[] bytes = (byte[])seeds[random.Next(seeds.Length)].Clone();
            for (int m = random.Next(1, 4); m > 0 && bytes.Length > 0; m--)
            {
                bytes[random.Next(bytes.Length)] = (byte)random.Next(256);
            }

            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(server.SocketPath));
            await socket.SendAsync(Concat(Preface, Settings(), bytes[..random.Next(bytes.Length + 1)]));
            socket.Shutdown(SocketShutdown.Send); // the server reads to the end and closes
            using var answered = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try
            {
                while (await socket.ReceiveAsync(new byte[4096], SocketFlags.None, answered.Token) > 0)
                {
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException)
            {
                // no more to say, or a reset
            }
        }

        await AssertServesAsync(server);
    }

    private static async Task AssertServesAsync(EchoServer server)
    {
        await using var client = new GrpcClient(server.UnixEndpoint);
        var echo = new Echo.Echo.EchoClient(client.CreateCallInvoker());
        Assert.Equal("still here", (await echo.SayAsync(new EchoRequest { Text = "still here" }, deadline: DateTime.UtcNow.AddSeconds(10))).Text);
    }

    private static int IndexOf(List<byte> haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Count; i++)
        {
            if (haystack.GetRange(i, needle.Length).SequenceEqual(needle))
            {
                return i;
            }
        }

        return -1;
    }
}
