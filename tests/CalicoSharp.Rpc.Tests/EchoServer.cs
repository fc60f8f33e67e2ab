using CalicoSharp.Rpc.Tests.Echo;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Rpc.Tests;

/// <summary>The test service: echoes, replies of a chosen size, chosen statuses, slow calls.</summary>
internal sealed class EchoService : Echo.Echo.EchoBase
{
    public int Cancelled;

    public override async Task<EchoReply> Say(EchoRequest request, ServerCallContext context)
    {
        DateTime deadline = context.Deadline;
        if (request.Text == "deadline")
        {
            await Task.Delay(20);
        }

        return new EchoReply
        {
            Text = request.Text,
            Payload = request.ReplySize > 0 ? ByteString.CopyFrom(Pattern(request.ReplySize)) : request.Payload,
            Authority = context.Host,
            CustomHeader = context.RequestHeaders.GetValue("x-custom") ?? "",
            DeadlineMsLeft = deadline == DateTime.MaxValue ? -1 : (long)(deadline - DateTime.UtcNow).TotalMilliseconds,
            DeadlineStable = context.Deadline == deadline,
        };
    }

    public override Task<EchoReply> Fail(FailRequest request, ServerCallContext context) => request.ThrowUnexpected
        ? throw new InvalidOperationException(request.Detail)
        : throw new RpcException(new Status((StatusCode)request.Code, request.Detail));

    public override async Task<EchoReply> Slow(SlowRequest request, ServerCallContext context)
    {
        try
        {
            await Task.Delay(request.Milliseconds, context.CancellationToken);
        }
        catch (OperationCanceledException)
        {
            Interlocked.Increment(ref Cancelled);
            throw;
        }

        return new EchoReply { Text = "done" };
    }

    public static byte[] Pattern(int size)
    {
        byte[] b = new byte[size];
        for (int i = 0; i < size; i++)
        {
            b[i] = (byte)(i * 31 + (i >> 8));
        }

        return b;
    }
}

/// <summary>A GrpcServer with the echo service on a temporary Unix socket and a loopback TCP port.</summary>
internal sealed class EchoServer : IAsyncDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-rpc-").FullName;

    public EchoServer(GrpcServerOptions? options = null)
    {
        Server = new GrpcServer(options);
        Server.AddService(b => Echo.Echo.BindService(b, Service));
        SocketPath = Path.Combine(dir, "echo.sock");
        try
        {
            Server.ListenUnixSocket(SocketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Tcp = Server.ListenTcp(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        }
        catch
        {
            Server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            Directory.Delete(dir, true);
            throw;
        }
    }

    public GrpcServer Server { get; }

    public EchoService Service { get; } = new();

    public string SocketPath { get; }

    public System.Net.IPEndPoint Tcp { get; }

    public GrpcEndpoint UnixEndpoint => new("unix", "localhost", 0, SocketPath);

    public GrpcEndpoint TcpEndpoint => new("http", "127.0.0.1", Tcp.Port, null);

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        Directory.Delete(dir, true);
    }
}
