using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Rpc.Tests.Echo;
using static CalicoSharp.Rpc.Tests.RawFrames;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Rpc.Tests;

/// <summary>The client against a scripted server that answers wrongly, partly or not at all: each ends as
/// a clear gRPC status, never a hang or a stray exception.</summary>
public class ClientTests
{

    private static byte[] Headers(int stream, bool end, params (string, string)[] fields) => Frame(1, (byte)(4 | (end ? 1 : 0)), stream, GrpcWire.Block(fields));

    private static readonly byte[] ServerSettings = Frame(4, 0, 0, []);

    private static readonly (string, string)[] Ok = [(":status", "200"), ("content-type", "application/grpc")];

    /// <summary>A TCP server that, for each connection, waits for the client's first request and then writes
    /// what <paramref name="answer"/> gives for that connection's number (0, 1, ...).</summary>
    private sealed class ScriptedServer : IAsyncDisposable
    {
        private readonly TcpListener listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource stop = new();
        private readonly Task loop;

        public ScriptedServer(Func<int, byte[]?> answer)
        {
            listener.Start();
            loop = Task.Run(async () =>
            {
                for (int n = 0; !stop.IsCancellationRequested; n++)
                {
                    TcpClient c;
                    try
                    {
                        c = await listener.AcceptTcpClientAsync(stop.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }

                    int number = n;
                    _ = Task.Run(async () =>
                    {
                        using (c)
                        {
                            NetworkStream s = c.GetStream();
                            byte[] buffer = new byte[65536];
                            try
                            {
                                // The client's preface, SETTINGS and first request come in one write.
                                _ = await s.ReadAsync(buffer, stop.Token);
                                if (answer(number) is { } bytes)
                                {
                                    await s.WriteAsync(bytes, stop.Token);
                                }

                                while (await s.ReadAsync(buffer, stop.Token) > 0)
                                {
                                }
                            }
                            catch (Exception e) when (e is IOException or OperationCanceledException)
                            {
                            }
                        }
                    });
                }
            });
        }

        public GrpcEndpoint Endpoint => new("http", "127.0.0.1", ((IPEndPoint)listener.LocalEndpoint).Port, null);

        public async ValueTask DisposeAsync()
        {
            await stop.CancelAsync();
            listener.Stop();
            await loop;
            stop.Dispose();
        }
    }

    private static async Task<RpcException> CallFailsAsync(byte[] answer, bool blocking = false, int timeoutMs = 5000)
    {
        await using var server = new ScriptedServer(_ => answer);
        await using var client = new GrpcClient(server.Endpoint, new GrpcClientOptions { Blocking = blocking, MaxReceiveMessageSize = 1000 });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RpcException>(() => client.UnaryAsync("/calicosharp.test.Echo/Say", new EchoRequest(), EchoReply.Parser, DateTime.UtcNow.AddMilliseconds(timeoutMs), default));
        Assert.True(sw.ElapsedMilliseconds < timeoutMs + 2000, "the call outlived its deadline");
        return e;
    }


    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_non_gRPC_answer_is_a_clear_status(bool blocking)
    {
        var notFound = await CallFailsAsync(Concat(ServerSettings, Headers(1, true, (":status", "404"))), blocking);
        Assert.Equal(StatusCode.Unimplemented, notFound.StatusCode);

        var html = await CallFailsAsync(Concat(ServerSettings, Headers(1, true, (":status", "200"), ("content-type", "text/html"))), blocking);
        Assert.Equal(StatusCode.Internal, html.StatusCode);
        Assert.Contains("text/html", html.Status.Detail, StringComparison.Ordinal);

        var noStatus = await CallFailsAsync(Concat(ServerSettings, Headers(1, false, Ok), Frame(0, 0, 1, GrpcWire.Frame(new EchoReply { Text = "x" }.ToByteArray())), Headers(1, true, ("x-other", "1"))), blocking);
        Assert.Equal(StatusCode.Internal, noStatus.StatusCode);
        Assert.Contains("grpc-status", noStatus.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_trailers_only_status_reaches_the_caller()
    {
        var e = await CallFailsAsync(Concat(ServerSettings, Headers(1, true, [.. Ok, ("grpc-status", "9"), ("grpc-message", "block%20is%20full%3A%20100%25")])));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Equal("block is full: 100%", e.Status.Detail);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_message_over_the_limit_is_ResourceExhausted(bool blocking)
    {
        byte[] big = new byte[2000];
        var e = await CallFailsAsync(Concat(ServerSettings, Headers(1, false, Ok), Frame(0, 0, 1, GrpcWire.Frame(big))), blocking);
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_server_that_breaks_HTTP2_fails_the_call_as_Unavailable(bool blocking)
    {
        var even = await CallFailsAsync(Concat(ServerSettings, Headers(2, true, Ok)), blocking);
        Assert.Equal(StatusCode.Unavailable, even.StatusCode);

        var http1 = await CallFailsAsync("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"u8.ToArray(), blocking);
        Assert.Equal(StatusCode.Unavailable, http1.StatusCode);

        var cut = await CallFailsAsync(Concat(ServerSettings, Headers(1, false, Ok), Frame(0, 0, 1, [0, 0, 0, 0, 10, 1, 2])), blocking, 1000);
        Assert.True(cut.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded, cut.Status.ToString());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_silent_server_ends_at_the_deadline(bool blocking)
    {
        var e = await CallFailsAsync(ServerSettings, blocking, 300);
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_server_that_grants_no_credit_ends_a_large_request_at_its_deadline(bool blocking)
    {
        // SETTINGS_INITIAL_WINDOW_SIZE 0: after the first 64 KiB the client may send nothing more.
        byte[] noCredit = Frame(4, 0, 0, [0, 4, 0, 0, 0, 0]);
        await using var server = new ScriptedServer(_ => noCredit);
        await using var client = new GrpcClient(server.Endpoint, new GrpcClientOptions { Blocking = blocking });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RpcException>(() => client.UnaryAsync("/calicosharp.test.Echo/Say",
            new EchoRequest { Payload = ByteString.CopyFrom(new byte[200_000]) }, EchoReply.Parser, DateTime.UtcNow.AddMilliseconds(500), default));
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        Assert.InRange(sw.ElapsedMilliseconds, 400, 3000);
    }

    [Fact]
    public async Task A_request_the_server_did_not_process_is_sent_again()
    {
        // First connection: GOAWAY with last stream 0 (nothing processed). Second: the answer.
        byte[] goaway = new byte[8];
        byte[] reply = Concat(ServerSettings, Headers(1, false, Ok), Frame(0, 0, 1, GrpcWire.Frame(new EchoReply { Text = "second" }.ToByteArray())), Headers(1, true, ("grpc-status", "0")));
        await using var server = new ScriptedServer(n => n == 0 ? Concat(ServerSettings, Frame(7, 0, 0, goaway)) : reply);
        await using var client = new GrpcClient(server.Endpoint);
        EchoReply r = await client.UnaryAsync("/calicosharp.test.Echo/Say", new EchoRequest(), EchoReply.Parser, DateTime.UtcNow.AddSeconds(5), default);
        Assert.Equal("second", r.Text);
    }

    [Fact]
    public async Task A_server_that_stops_answering_PING_is_dropped()
    {
        await using var server = new ScriptedServer(_ => ServerSettings);
        await using var client = new GrpcClient(server.Endpoint, new GrpcClientOptions { KeepAliveInterval = TimeSpan.FromMilliseconds(100), KeepAliveTimeout = TimeSpan.FromMilliseconds(200) });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RpcException>(() => client.UnaryAsync("/calicosharp.test.Echo/Say", new EchoRequest(), EchoReply.Parser, DateTime.UtcNow.AddSeconds(20), default));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("keepalive", e.Status.Detail, StringComparison.Ordinal);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5));
    }

    [Fact]
    public void Endpoints_parse_as_etcd_and_the_CLI_write_them()
    {
        Assert.True(GrpcEndpoint.TryParse("127.0.0.1:2379", out var bare));
        Assert.Equal(new GrpcEndpoint("http", "127.0.0.1", 2379, null), bare);
        Assert.True(GrpcEndpoint.TryParse("https://etcd.example:2379", out var tls));
        Assert.True(tls!.Tls);
        Assert.True(GrpcEndpoint.TryParse("unix:///run/etcd.sock:0", out var unix));
        Assert.Equal("/run/etcd.sock:0", unix!.UnixPath);
        Assert.True(GrpcEndpoint.TryParse("http://[fd00::1]:2379", out var v6));
        Assert.Equal(("fd00::1", "[fd00::1]:2379"), (v6!.Host, v6.Authority));
        Assert.False(GrpcEndpoint.TryParse("ftp://x:1", out _));
        Assert.False(GrpcEndpoint.TryParse("", out _));
        Assert.False(GrpcEndpoint.TryParse("unix://", out _));
    }
}
