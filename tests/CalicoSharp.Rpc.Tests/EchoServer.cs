using CalicoSharp.Rpc.Tests.Echo;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Rpc.Tests;

/// <summary>The test service: echoes, replies of a chosen size, chosen statuses, slow calls.</summary>
internal sealed class EchoService : Echo.Echo.EchoBase
{
    public int Cancelled;

    /// <summary>Calls of Say answered, and Slow calls whose handler has started.</summary>
    public int Said;
    public int SlowStarted;

    public override async Task<EchoReply> Say(EchoRequest request, ServerCallContext context)
    {
        Interlocked.Increment(ref Said);
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
        : throw new RpcException(new Status((StatusCode)request.Code, request.Detail),
            request.Trailer.Length > 0 ? new Metadata { { "x-trailer", request.Trailer } } : []);

    public override async Task Chat(IAsyncStreamReader<EchoRequest> requestStream, IServerStreamWriter<EchoReply> responseStream, ServerCallContext context)
    {
        try
        {
            while (await requestStream.MoveNext(context.CancellationToken))
            {
                EchoRequest r = requestStream.Current;
                switch (r.Text)
                {
                    case "bye":
                        return;
                    case "fail":
                        throw new RpcException(new Status(StatusCode.Aborted, "the chat ended as asked"));
                    default:
                        await responseStream.WriteAsync(new EchoReply
                        {
                            Text = r.Text,
                            Payload = r.ReplySize > 0 ? ByteString.CopyFrom(Pattern(r.ReplySize)) : r.Payload,
                        }, context.CancellationToken);
                        break;
                }
            }
        }
        catch (Exception e) when (e is not RpcException && context.CancellationToken.IsCancellationRequested)
        {
            // The client reset the stream: Kestrel cancels the handler's token (and its reads fail).
            Interlocked.Increment(ref Cancelled);
            throw;
        }
    }

    public override async Task<EchoReply> Slow(SlowRequest request, ServerCallContext context)
    {
        Interlocked.Increment(ref SlowStarted);
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
