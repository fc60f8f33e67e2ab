using System.Net.Sockets;
using CalicoSharp.Rpc.Tests.Echo;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;

namespace CalicoSharp.Rpc.Tests;

/// <summary>gRPC end to end: this project's client and the reference client (Grpc.Net.Client) against this
/// project's server, over a Unix socket and TCP, in both client modes.</summary>
public class GrpcTests
{
    private static Echo.Echo.EchoClient Client(GrpcClient c) => new(c.CreateCallInvoker());

    private static DateTime Soon => DateTime.UtcNow.AddSeconds(10);

    public static TheoryData<bool, bool> Modes => new() { { false, false }, { false, true }, { true, false }, { true, true } };

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Unary_calls_answer_over_unix_and_tcp_in_both_modes(bool tcp, bool blocking)
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(tcp ? server.TcpEndpoint : server.UnixEndpoint, new GrpcClientOptions { Blocking = blocking });
        var echo = Client(client);
        for (int i = 0; i < 20; i++)
        {
            var headers = new Metadata { { "x-custom", "v" + i } };
            EchoReply r = await echo.SayAsync(new EchoRequest { Text = "hello " + i }, headers, Soon);
            Assert.Equal("hello " + i, r.Text);
            Assert.Equal("v" + i, r.CustomHeader);
        }

        Assert.Equal(tcp ? $"127.0.0.1:{server.Tcp.Port}" : "localhost", (await echo.SayAsync(new EchoRequest(), deadline: Soon)).Authority);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Large_messages_cross_flow_control_both_ways(bool blocking)
    {
        // 8 MiB each way: far beyond the 64 KiB initial windows, so both sides wait for credit.
        await using var server = new EchoServer(new GrpcServerOptions { MaxReceiveMessageSize = 16 << 20 });
        await using var client = new GrpcClient(server.UnixEndpoint, new GrpcClientOptions { MaxReceiveMessageSize = 16 << 20, Blocking = blocking });
        byte[] big = EchoService.Pattern(8 << 20);
        EchoReply r = await Client(client).SayAsync(new EchoRequest { Payload = ByteString.CopyFrom(big) }, deadline: DateTime.UtcNow.AddSeconds(30));
        Assert.True(big.AsSpan().SequenceEqual(r.Payload.Span));
        EchoReply r2 = await Client(client).SayAsync(new EchoRequest { ReplySize = 8 << 20 }, deadline: DateTime.UtcNow.AddSeconds(30));
        Assert.True(big.AsSpan().SequenceEqual(r2.Payload.Span));
    }

    [Fact]
    public async Task Many_concurrent_calls_share_one_connection()
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint);
        var echo = Client(client);
        EchoReply[] replies = await Task.WhenAll(Enumerable.Range(0, 300).Select(i =>
            echo.SayAsync(new EchoRequest { Text = i.ToString(System.Globalization.CultureInfo.InvariantCulture), ReplySize = i * 100 }, deadline: Soon).ResponseAsync));
        for (int i = 0; i < replies.Length; i++)
        {
            Assert.Equal(i.ToString(System.Globalization.CultureInfo.InvariantCulture), replies[i].Text);
            Assert.Equal(i * 100, replies[i].Payload.Length);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_status_reaches_the_client_with_its_message(bool blocking)
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint, new GrpcClientOptions { Blocking = blocking });
        var echo = Client(client);
        var e = await Assert.ThrowsAsync<RpcException>(() => echo.FailAsync(new FailRequest { Code = (int)StatusCode.NotFound, Detail = "no such block: 10.0.0.0/26 — 100% gone" }, deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Equal("no such block: 10.0.0.0/26 — 100% gone", e.Status.Detail);

        var unexpected = await Assert.ThrowsAsync<RpcException>(() => echo.FailAsync(new FailRequest { ThrowUnexpected = true, Detail = "boom" }, deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.Unknown, unexpected.StatusCode);
        Assert.Contains("boom", unexpected.Status.Detail, StringComparison.Ordinal);

        var streaming = await Assert.ThrowsAsync<RpcException>(() => client.UnaryAsync("/calicosharp.test.Echo/Stream", new EchoRequest(), EchoReply.Parser, Soon, default));
        Assert.Equal(StatusCode.Unimplemented, streaming.StatusCode);
        Assert.Contains("streaming method", streaming.Status.Detail, StringComparison.Ordinal);

        var unknown = await Assert.ThrowsAsync<RpcException>(() => client.UnaryAsync("/calicosharp.test.Echo/Nope", new EchoRequest(), EchoReply.Parser, Soon, default));
        Assert.Equal(StatusCode.Unimplemented, unknown.StatusCode);
        Assert.Contains("unknown method", unknown.Status.Detail, StringComparison.Ordinal);

        // The connection is still good after all of that.
        Assert.Equal("ok", (await echo.SayAsync(new EchoRequest { Text = "ok" }, deadline: Soon)).Text);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_deadline_ends_the_call_and_cancels_the_handler(bool blocking)
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint, new GrpcClientOptions { Blocking = blocking });
        // One call first: the connection (and, in this test process, the compiled code) is then warm, so the
        // slow call's handler surely starts before its deadline.
        Assert.Equal("warm", (await Client(client).SayAsync(new EchoRequest { Text = "warm" }, deadline: Soon)).Text);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<RpcException>(() => Client(client).SlowAsync(new SlowRequest { Milliseconds = 10_000 }, deadline: DateTime.UtcNow.AddMilliseconds(300)).ResponseAsync);
        Assert.Equal(StatusCode.DeadlineExceeded, e.StatusCode);
        Assert.InRange(sw.ElapsedMilliseconds, 250, 3000);
        // The server saw grpc-timeout (or the reset) and cancelled its handler.
        for (int i = 0; i < 100 && Volatile.Read(ref server.Service.Cancelled) == 0; i++)
        {
            await Task.Delay(20);
        }

        Assert.Equal(1, server.Service.Cancelled);
        Assert.Equal("after", (await Client(client).SayAsync(new EchoRequest { Text = "after" }, deadline: Soon)).Text);
    }

    [Fact]
    public async Task The_handler_sees_the_callers_deadline_and_it_stays_put()
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint);
        EchoReply r = await Client(client).SayAsync(new EchoRequest { Text = "deadline" }, deadline: DateTime.UtcNow.AddSeconds(10));
        Assert.True(r.DeadlineStable, "two reads of the handler's deadline differ");
        Assert.InRange(r.DeadlineMsLeft, 5_000, 10_000);
        Assert.Equal(-1, (await Client(client).SayAsync(new EchoRequest { Text = "deadline" })).DeadlineMsLeft);
    }

    [Fact]
    public async Task Cancelling_a_call_resets_its_stream()
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint);
        Assert.Equal("warm", (await Client(client).SayAsync(new EchoRequest { Text = "warm" }, deadline: Soon)).Text);
        using var cts = new CancellationTokenSource(200);
        var e = await Assert.ThrowsAsync<RpcException>(() => Client(client).SlowAsync(new SlowRequest { Milliseconds = 10_000 }, cancellationToken: cts.Token).ResponseAsync);
        Assert.Equal(StatusCode.Cancelled, e.StatusCode);
        for (int i = 0; i < 100 && Volatile.Read(ref server.Service.Cancelled) == 0; i++)
        {
            await Task.Delay(20);
        }

        Assert.Equal(1, server.Service.Cancelled);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_absent_server_is_Unavailable_and_named(bool blocking)
    {
        string path = Path.Combine(Path.GetTempPath(), "calicosharp-none-" + Guid.NewGuid().ToString("N") + ".sock");
        await using var unix = new GrpcClient(new GrpcEndpoint("unix", "localhost", 0, path), new GrpcClientOptions { Blocking = blocking });
        var e = await Assert.ThrowsAsync<RpcException>(() => Client(unix).SayAsync(new EchoRequest(), deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains(path, e.Status.Detail, StringComparison.Ordinal);

        // A loopback port nobody listens on: refused.
        using var probe = new TcpListener(System.Net.IPAddress.Loopback, 0);
        probe.Start();
        int port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        await using var tcp = new GrpcClient(new GrpcEndpoint("http", "127.0.0.1", port, null), new GrpcClientOptions { Blocking = blocking });
        var refused = await Assert.ThrowsAsync<RpcException>(() => Client(tcp).SayAsync(new EchoRequest(), deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Contains("refused", refused.Status.Detail, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task The_client_connects_again_after_the_server_restarts()
    {
        var server = new EchoServer();
        await using var client = new GrpcClient(server.TcpEndpoint);
        Assert.Equal("1", (await Client(client).SayAsync(new EchoRequest { Text = "1" }, deadline: Soon)).Text);
        int port = server.Tcp.Port;
        await server.DisposeAsync();
        var down = await Assert.ThrowsAsync<RpcException>(() => Client(client).SayAsync(new EchoRequest(), deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, down.StatusCode);

        var again = new GrpcServer();
        var service = new EchoService();
        again.AddService(b => Echo.Echo.BindService(b, service));
        again.ListenTcp(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port));
        await using (again)
        {
            Assert.Equal("2", (await Client(client).SayAsync(new EchoRequest { Text = "2" }, deadline: Soon)).Text);
        }
    }

    [Fact]
    public async Task Stopping_the_server_lets_calls_under_way_finish_and_refuses_new_ones()
    {
        var server = new EchoServer(new GrpcServerOptions { ShutdownGrace = TimeSpan.FromSeconds(5) });
        await using var client = new GrpcClient(server.UnixEndpoint);
        var echo = Client(client);
        Task<EchoReply> slow = echo.SlowAsync(new SlowRequest { Milliseconds = 500 }, deadline: Soon).ResponseAsync;
        await Task.Delay(100);
        Task stopping = server.DisposeAsync().AsTask();
        Assert.Equal("done", (await slow).Text);
        await stopping;
        Assert.False(File.Exists(server.SocketPath), "the stopped server's socket file is removed");
        var e = await Assert.ThrowsAsync<RpcException>(() => echo.SayAsync(new EchoRequest(), deadline: Soon).ResponseAsync);
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
    }

    [Fact]
    public async Task The_reference_client_talks_to_the_server()
    {
        await using var server = new EchoServer(new GrpcServerOptions { MaxReceiveMessageSize = 16 << 20 });
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(server.SocketPath), ct);
                return new NetworkStream(s, ownsSocket: true);
            },
        };
        using var unixChannel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions { HttpHandler = handler, MaxReceiveMessageSize = 16 << 20 });
        using var tcpChannel = GrpcChannel.ForAddress($"http://127.0.0.1:{server.Tcp.Port}");
        foreach (GrpcChannel channel in new[] { unixChannel, tcpChannel })
        {
            var echo = new Echo.Echo.EchoClient(channel);
            Assert.Equal("ref", (await echo.SayAsync(new EchoRequest { Text = "ref" }, new Metadata { { "x-custom", "c" } }, Soon)).Text);
            var e = await Assert.ThrowsAsync<RpcException>(() => echo.FailAsync(new FailRequest { Code = (int)StatusCode.FailedPrecondition, Detail = "nö" }, deadline: Soon).ResponseAsync);
            Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
            Assert.Equal("nö", e.Status.Detail);
            var slow = await Assert.ThrowsAsync<RpcException>(() => echo.SlowAsync(new SlowRequest { Milliseconds = 5000 }, deadline: DateTime.UtcNow.AddMilliseconds(200)).ResponseAsync);
            Assert.Equal(StatusCode.DeadlineExceeded, slow.StatusCode);
            Assert.Equal(StatusCode.Unimplemented, (await Assert.ThrowsAsync<RpcException>(() => echo.StreamAsync_Call())).StatusCode);
        }

        var big = new Echo.Echo.EchoClient(unixChannel);
        byte[] payload = EchoService.Pattern(6 << 20);
        EchoReply r = await big.SayAsync(new EchoRequest { Payload = ByteString.CopyFrom(payload) }, deadline: DateTime.UtcNow.AddSeconds(30));
        Assert.True(payload.AsSpan().SequenceEqual(r.Payload.Span));
        EchoReply many = (await Task.WhenAll(Enumerable.Range(0, 100).Select(_ => big.SayAsync(new EchoRequest { ReplySize = 50_000 }, deadline: Soon).ResponseAsync)))[^1];
        Assert.Equal(50_000, many.Payload.Length);
    }
}

internal static class EchoClientExtensions
{
    /// <summary>Reads the first message of the server-streaming method (which this server refuses).</summary>
    public static async Task StreamAsync_Call(this Echo.Echo.EchoClient client)
    {
        using var call = client.Stream(new EchoRequest(), deadline: DateTime.UtcNow.AddSeconds(10));
        await call.ResponseStream.MoveNext(CancellationToken.None);
    }
}

/// <summary>The caller's work during a unary call (<c>whileWaiting</c>): the CNI plugin makes a pod's
/// interfaces while bgpd assigns its address.</summary>
public class WhileWaitingTests
{
    private const string SlowMethod = "/calicosharp.test.Echo/Slow";
    private const string FailMethod = "/calicosharp.test.Echo/Fail";

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_work_runs_once_after_the_request_is_sent_and_before_the_answer_is_read(bool blocking)
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint, new GrpcClientOptions { Blocking = blocking });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int runs = 0;
        TimeSpan ranAt = TimeSpan.Zero;
        var reply = await client.UnaryAsync(SlowMethod, new SlowRequest { Milliseconds = 300 }, EchoReply.Parser, DateTime.UtcNow.AddSeconds(10), default, () =>
        {
            runs++;
            ranAt = sw.Elapsed;
        });
        Assert.Equal("done", reply.Text);
        Assert.Equal(1, runs);
        // Well before the server's answer (300 ms after the request).
        Assert.True(sw.Elapsed - ranAt > TimeSpan.FromMilliseconds(200), $"work at {ranAt}, answer at {sw.Elapsed}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_failing_work_still_lets_the_call_finish_then_its_exception_wins(bool blocking)
    {
        await using var server = new EchoServer();
        await using var client = new GrpcClient(server.UnixEndpoint, new GrpcClientOptions { Blocking = blocking });
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => client.UnaryAsync(SlowMethod, new SlowRequest { Milliseconds = 100 }, EchoReply.Parser,
            DateTime.UtcNow.AddSeconds(10), default, () => throw new InvalidOperationException("work failed")));
        Assert.Equal("work failed", e.Message);
        Assert.Equal(0, server.Service.Cancelled);

        // Also over a call that fails itself.
        e = await Assert.ThrowsAsync<InvalidOperationException>(() => client.UnaryAsync(FailMethod, new FailRequest { Code = (int)StatusCode.NotFound, Detail = "no" }, EchoReply.Parser,
            DateTime.UtcNow.AddSeconds(10), default, () => throw new InvalidOperationException("work failed")));
        Assert.Equal("work failed", e.Message);
    }
}
