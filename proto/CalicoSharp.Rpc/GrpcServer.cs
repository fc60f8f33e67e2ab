using System.Net;
using System.Net.Sockets;
using Grpc.Core;

namespace CalicoSharp.Rpc;

public sealed record GrpcServerOptions
{
    /// <summary>The largest request message accepted (RESOURCE_EXHAUSTED beyond).</summary>
    public int MaxReceiveMessageSize { get; init; } = 4 << 20;

    /// <summary>Streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).</summary>
    public int MaxConcurrentStreams { get; init; } = 100;

    /// <summary>How long <see cref="GrpcServer.DisposeAsync"/> lets calls under way finish.</summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Called with a handler's unexpected exception (the client gets UNKNOWN and its message).</summary>
    public Action<string, Exception>? OnHandlerError { get; init; }
}

/// <summary>
/// A gRPC server for unary methods over HTTP/2 without TLS ("h2c" with prior knowledge), on Unix sockets
/// or TCP: what a node-local control API needs, in a fraction of a general web server's memory. Services
/// are added through their generated <c>BindService(ServiceBinderBase, impl)</c>.
/// </summary>
public sealed class GrpcServer : IAsyncDisposable
{
    // Handlers by path ("/package.Service/Method"); a handler returns its answer already framed.
    private readonly Dictionary<string, Func<byte[], ServerCallContext, Task<byte[]>>> methods = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> streaming = new(StringComparer.Ordinal);
    private readonly List<Socket> listeners = [];
    private readonly List<string> socketFiles = [];
    private readonly List<Task> acceptLoops = [];
    private readonly HashSet<ServerConnection> connections = [];
    private readonly Lock gate = new();
    private readonly CancellationTokenSource stopping = new();

    public GrpcServer(GrpcServerOptions? options = null)
    {
        Options = options ?? new GrpcServerOptions();
    }

    public GrpcServerOptions Options { get; }

    /// <summary>Registers a service: pass its generated binder, e.g. <c>b =&gt; Svc.BindService(b, impl)</c>.</summary>
    public void AddService(Action<ServiceBinderBase> bind)
    {
        ArgumentNullException.ThrowIfNull(bind);
        bind(new Binder(this));
    }

    /// <summary>Listens on a Unix socket; a stale socket file is replaced, the folder created.</summary>
    public void ListenUnixSocket(string path, UnixFileMode mode)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.Delete(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(path, mode);
            }

            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        lock (gate)
        {
            socketFiles.Add(path);
        }

        Start(socket);
    }

    /// <summary>Listens on TCP; returns the bound endpoint (port 0 picks a free port).</summary>
    public IPEndPoint ListenTcp(IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(endpoint);
            socket.Listen(512);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        Start(socket);
        return (IPEndPoint)socket.LocalEndPoint!;
    }

    private void Start(Socket listener)
    {
        lock (gate)
        {
            listeners.Add(listener);
            acceptLoops.Add(AcceptLoopAsync(listener));
        }
    }

    private Task AcceptLoopAsync(Socket listener) => SocketListener.AcceptAsync(listener, client =>
    {
        var conn = new ServerConnection(this, new NetworkStream(client, ownsSocket: true));
        lock (gate)
        {
            if (stopping.IsCancellationRequested)
            {
                conn.Close("the server is stopping");
                return;
            }

            connections.Add(conn);
        }

        _ = ServeConnectionAsync(conn);
    }, stopping.Token);

    private async Task ServeConnectionAsync(ServerConnection conn)
    {
        try
        {
            await conn.StartAsync().ConfigureAwait(false);
            await conn.RunAsync(expectPreface: true).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            // the client went away during the handshake
        }
        finally
        {
            await conn.DisposeAsync().ConfigureAwait(false);
            lock (gate)
            {
                connections.Remove(conn);
            }
        }
    }

    internal Func<byte[], ServerCallContext, Task<byte[]>>? Find(string path) => methods.GetValueOrDefault(path);

    /// <summary>Why a path cannot be called here (a streaming method, or none by that name).</summary>
    internal string WhyNot(string path) => streaming.GetValueOrDefault(path) ?? $"unknown method {path}";

    /// <summary>Stops accepting, tells every client GOAWAY, lets calls under way finish within the grace
    /// time, then closes what is left.</summary>
    public async ValueTask DisposeAsync()
    {
        List<ServerConnection> open;
        lock (gate)
        {
            if (stopping.IsCancellationRequested)
            {
                return;
            }

            stopping.Cancel();
            foreach (Socket l in listeners)
            {
                l.Dispose();
            }

            open = [.. connections];
        }

        await Task.WhenAll(open.Select(c => c.ShutdownAsync(Options.ShutdownGrace))).ConfigureAwait(false);
        await Task.WhenAll(acceptLoops).ConfigureAwait(false);
        foreach (string path in socketFiles)
        {
            File.Delete(path);
        }

        stopping.Dispose();
    }

    /// <summary>Takes the methods a generated BindService hands over.</summary>
    private sealed class Binder(GrpcServer server) : ServiceBinderBase
    {
        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler)
        {
            ArgumentNullException.ThrowIfNull(method);
            ArgumentNullException.ThrowIfNull(handler);
            server.methods[method.FullName] = async (request, context) =>
            {
                TRequest r = Marshalling.Parse(method.RequestMarshaller, request);
                TResponse response = await handler(r, context).ConfigureAwait(false);
                return Marshalling.Frame(method.ResponseMarshaller, response);
            };
        }

        // Streaming methods are answered UNIMPLEMENTED, saying why, rather than failing the whole service.
        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler) =>
            Streaming(method);

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler) =>
            Streaming(method);

        public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler) =>
            Streaming(method);

        private void Streaming(IMethod method)
        {
            ArgumentNullException.ThrowIfNull(method);
            server.streaming[method.FullName] = $"{method.FullName} is a streaming method; this server carries unary methods only";
        }
    }
}

/// <summary>The server role of a connection: the client opens odd-numbered streams, each one call.</summary>
internal sealed class ServerConnection : Http2Connection
{
    private readonly GrpcServer server;
    private readonly Dictionary<int, CancellationTokenSource> calls = [];
    private readonly TaskCompletionSource drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int lastPeerStream;
    private bool goingAway;
    private bool abandoned;

    public ServerConnection(GrpcServer server, Stream io)
        : base(io, server.Options.MaxReceiveMessageSize)
    {
        this.server = server;
    }

    protected override int LastPeerStream
    {
        get
        {
            lock (Gate)
            {
                return lastPeerStream;
            }
        }
    }

    /// <summary>RFC 9113 §3.4: the server's preface is its SETTINGS, sent at once.</summary>
    public Task StartAsync()
    {
        QueueHandshake(client: false,
        [
            (Http2.SettingsMaxConcurrentStreams, (uint)server.Options.MaxConcurrentStreams),
            (Http2.SettingsInitialWindowSize, StreamWindow),
            (Http2.SettingsMaxHeaderListSize, 16 * 1024),
        ]);
        return FlushControlAsync();
    }

    protected override bool IsIdle(int id)
    {
        lock (Gate)
        {
            return (id & 1) == 0 || id > lastPeerStream;
        }
    }

    protected override void OnHeaderBlock(int id, List<HeaderField> fields, bool endStream)
    {
        Http2Stream? s;
        CancellationTokenSource? cts = null;
        lock (Gate)
        {
            if (Streams.TryGetValue(id, out s))
            {
                // Request trailers: only as the end of the request.
                if (!endStream)
                {
                    QueueResetLocked(s, Http2ErrorCode.ProtocolError, "a second header block without END_STREAM");
                    return;
                }
            }
            else
            {
                if ((id & 1) == 0)
                {
                    throw new Http2Exception(Http2ErrorCode.ProtocolError, $"a client opened even-numbered stream {id}");
                }

                if (id <= lastPeerStream)
                {
                    throw new Http2Exception(Http2ErrorCode.StreamClosed, $"HEADERS on closed stream {id}");
                }

                lastPeerStream = id;
                if (goingAway || Streams.Count >= server.Options.MaxConcurrentStreams)
                {
                    QueueControlLocked(FrameType.RstStream, 0, id, [0, 0, 0, (byte)Http2ErrorCode.RefusedStream]);
                    return;
                }

                s = NewStreamLocked(id);
                Streams[id] = s;
                s.OnHeaders(fields);
                // Not linked to the server's stop: a stopping server lets calls finish within its grace time.
                cts = new CancellationTokenSource();
                calls[id] = cts;
            }
        }

        if (cts is not null)
        {
            Http2Stream call = s;
            _ = Task.Run(() => ServeAsync(call, fields, cts));
        }

        if (endStream)
        {
            EndRemote(s);
        }
    }

    /// <summary>A request message over the limit: the call answers RESOURCE_EXHAUSTED (its handler never
    /// runs), then the stream is reset with NO_ERROR (see <see cref="ServeAsync"/>); until then the stream gets
    /// no credit, so the client stops sending.</summary>
    protected override void OnMessageFailureLocked(Http2Stream s) => s.FailReads();

    protected override void OnStreamReset(Http2Stream s)
    {
        lock (Gate)
        {
            if (calls.Remove(s.Id, out CancellationTokenSource? cts))
            {
                cts.Cancel();
            }
        }
    }

    protected override void OnGoAway(int lastStream, Http2ErrorCode code, string debug)
    {
        lock (Gate)
        {
            goingAway = true;
        }
    }

    /// <summary>One call: read the request, run the handler, answer with headers, message and trailers.</summary>
    private async Task ServeAsync(Http2Stream s, List<HeaderField> headers, CancellationTokenSource cts)
    {
        string path = GrpcWire.Get(headers, ":path") ?? string.Empty;
        DateTime deadline = DateTime.MaxValue;
        CallContext? context = null;
        try
        {
            if (GrpcWire.ParseTimeout(GrpcWire.Get(headers, "grpc-timeout")) is { } timeout)
            {
                deadline = DateTime.UtcNow + timeout;
                cts.CancelAfter(timeout);
            }

            string? type = GrpcWire.Get(headers, "content-type");
            if (GrpcWire.Get(headers, ":method") != "POST" || type is null || !type.StartsWith(GrpcWire.ContentType, StringComparison.Ordinal))
            {
                // Not gRPC: plain HTTP answers (gRPC's spec: 415 for a wrong content type).
                await SendAsync(s, GrpcWire.Block([(":status", type is null || !type.StartsWith(GrpcWire.ContentType, StringComparison.Ordinal) ? "415" : "405")]), ReadOnlyMemory<byte>.Empty, null, true, cts.Token).ConfigureAwait(false);
                return;
            }

            Func<byte[], ServerCallContext, Task<byte[]>>? method = server.Find(path);
            if (method is null)
            {
                throw new RpcException(new Status(StatusCode.Unimplemented, server.WhyNot(path)));
            }

            byte[]? request = await ReadMessageAsync(s, cts.Token).ConfigureAwait(false);
            await s.Ended.WaitAsync(cts.Token).ConfigureAwait(false);
            if (request is null || await ReadMessageAsync(s, cts.Token).ConfigureAwait(false) is not null)
            {
                throw new RpcException(new Status(StatusCode.Internal, request is null ? "no request message" : "more than one request message to a unary method"));
            }

            context = new CallContext(path, headers, deadline, cts.Token);
            byte[] response = await method(request, context).ConfigureAwait(false);
            await SendAsync(s, GrpcWire.Block([(":status", "200"), ("content-type", GrpcWire.ContentType)]), response,
                GrpcWire.Block([("grpc-status", "0"), .. GrpcWire.FieldsOf(context.ResponseTrailers)]), true, cts.Token).ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            // The handler's trailers, then the exception's (as Grpc.AspNetCore merges them).
            await SendStatusQuietlyAsync(s, e.Status, cts.Token, [.. GrpcWire.FieldsOf(context?.ResponseTrailers ?? []), .. GrpcWire.FieldsOf(e.Trailers)]).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            // Reset by the client, over its deadline, or cut off by a stop whose grace time ran out.
            bool stopped = Volatile.Read(ref abandoned);
            await SendStatusQuietlyAsync(s, new Status(stopped ? StatusCode.Unavailable : StatusCode.DeadlineExceeded,
                stopped ? "the server stopped before the call finished" : "the call's deadline passed"), CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // a handler's failure becomes the call's status; the server goes on
        catch (Exception e)
#pragma warning restore CA1031
        {
            server.Options.OnHandlerError?.Invoke(path, e);
            await SendStatusQuietlyAsync(s, new Status(StatusCode.Unknown, $"{e.GetType().Name}: {e.Message}"), cts.Token).ConfigureAwait(false);
        }
        finally
        {
            bool reset = false;
            lock (Gate)
            {
                calls.Remove(s.Id);
                if (goingAway && calls.Count == 0)
                {
                    drained.TrySetResult();
                }

                // RFC 9113 §8.1: answered before the request ended (a message over the limit, an unknown method):
                // RST_STREAM(NO_ERROR) tells the client to stop sending without discarding the answer.
                if (s.LocalClosed && !s.RemoteClosed && Streams.ContainsKey(s.Id))
                {
                    QueueResetLocked(s, Http2ErrorCode.NoError, "answered before the request ended");
                    reset = true;
                }
            }

            if (reset)
            {
                await FlushQuietlyAsync().ConfigureAwait(false);
            }

            cts.Dispose();
        }
    }

    /// <summary>A trailers-only answer with the status, unless the stream is gone already.</summary>
    private async Task SendStatusQuietlyAsync(Http2Stream s, Status status, CancellationToken ct, List<(string Name, string Value)>? trailers = null)
    {
        if (s.LocalClosed)
        {
            return;
        }

        var fields = new List<(string, string)> { (":status", "200"), ("content-type", GrpcWire.ContentType), ("grpc-status", ((int)status.StatusCode).ToString(System.Globalization.CultureInfo.InvariantCulture)) };
        if (!string.IsNullOrEmpty(status.Detail))
        {
            fields.Add(("grpc-message", GrpcWire.EncodeMessage(status.Detail)));
        }

        fields.AddRange(trailers ?? []);

        try
        {
            await SendAsync(s, GrpcWire.Block(fields), ReadOnlyMemory<byte>.Empty, null, true, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is RpcException or IOException or ObjectDisposedException or OperationCanceledException or SocketException)
        {
            // the client is gone
        }
    }

    /// <summary>GOAWAY, then up to <paramref name="grace"/> for calls under way, then close.</summary>
    public async Task ShutdownAsync(TimeSpan grace)
    {
        bool idle;
        lock (Gate)
        {
            goingAway = true;
            idle = calls.Count == 0;
        }

        await GoAwayAsync(Http2ErrorCode.NoError, "server stopping").ConfigureAwait(false);
        if (!idle && await Task.WhenAny(drained.Task, Task.Delay(grace)).ConfigureAwait(false) != drained.Task)
        {
            // Out of time: the calls still running are cancelled and told so before the connection closes.
            List<CancellationTokenSource> running;
            lock (Gate)
            {
                Volatile.Write(ref abandoned, true);
                running = [.. calls.Values];
            }

            foreach (CancellationTokenSource c in running)
            {
                try
                {
                    c.Cancel();
                }
                catch (ObjectDisposedException)
                {
                    // that call finished meanwhile
                }
            }

            await Task.WhenAny(drained.Task, Task.Delay(TimeSpan.FromSeconds(1))).ConfigureAwait(false);
        }

        await DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>What a handler learns of its call.</summary>
    private sealed class CallContext(string method, List<HeaderField> headers, DateTime deadline, CancellationToken ct) : ServerCallContext
    {
        private readonly Metadata trailers = [];
        private Metadata? requestHeaders;

        protected override string MethodCore => method;

        protected override string HostCore => GrpcWire.Get(headers, ":authority") ?? string.Empty;

        protected override string PeerCore => "unix:";

        protected override DateTime DeadlineCore => deadline;

        protected override Metadata RequestHeadersCore => requestHeaders ??= ToMetadata(headers);

        protected override CancellationToken CancellationTokenCore => ct;

        protected override Metadata ResponseTrailersCore => trailers;

        protected override Status StatusCore { get; set; }

        protected override WriteOptions? WriteOptionsCore { get; set; }

        protected override AuthContext AuthContextCore => new(null, []);

        protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) =>
            throw new NotSupportedException("context propagation is not supported");

        protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Task.CompletedTask;

        private static Metadata ToMetadata(List<HeaderField> fields)
        {
            var m = new Metadata();
            foreach (HeaderField f in fields)
            {
                if (!f.Name.StartsWith(':') && !f.Name.EndsWith("-bin", StringComparison.Ordinal))
                {
                    m.Add(f.Name, f.Value);
                }
            }

            return m;
        }
    }
}
