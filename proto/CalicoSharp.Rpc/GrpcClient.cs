using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Rpc;

/// <summary>Where a gRPC server listens: <c>http://host:port</c>, <c>https://host:port</c>,
/// <c>unix:///path</c>, or a bare <c>host:port</c> (http).</summary>
public sealed record GrpcEndpoint(string Scheme, string Host, int Port, string? UnixPath)
{
    public bool Tls => Scheme == "https";

    public static bool TryParse(string text, out GrpcEndpoint? endpoint)
    {
        endpoint = null;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        string full = text.Contains("://", StringComparison.Ordinal) ? text : "http://" + text;
        if (!Uri.TryCreate(full, UriKind.Absolute, out Uri? uri))
        {
            return false;
        }

        switch (uri.Scheme)
        {
            case "unix" when uri.AbsolutePath.Length > 1:
                endpoint = new GrpcEndpoint("unix", "localhost", 0, Uri.UnescapeDataString(uri.AbsolutePath));
                return true;
            case "http" or "https" when uri.Host.Length > 0:
                endpoint = new GrpcEndpoint(uri.Scheme, uri.DnsSafeHost, uri.Port, null);
                return true;
            default:
                return false;
        }
    }

    /// <summary>host:port as HTTP writes it (an IPv6 address in brackets).</summary>
    public string Authority => UnixPath is not null ? "localhost" : $"{(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host)}:{Port}";

    public override string ToString() => UnixPath is not null ? $"unix://{UnixPath}" : $"{Scheme}://{Authority}";
}

public sealed record GrpcClientOptions
{
    /// <summary>Bound on connecting (TCP and TLS); a call's own deadline may end it sooner.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>The largest response message accepted.</summary>
    public int MaxReceiveMessageSize { get; init; } = 4 << 20;

    /// <summary>With a value: an idle connection is checked with PING this often, and dropped when the
    /// answer does not come within <see cref="KeepAliveTimeout"/> (a peer that vanished without a reset).</summary>
    public TimeSpan? KeepAliveInterval { get; init; }

    public TimeSpan KeepAliveTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Calls do their I/O on the calling thread with blocking sockets, one call at a time, and
    /// no background reader: for short-lived processes such as the CNI plugin, where starting the thread
    /// pool and the socket engine costs more than the calls. Streaming calls need the default mode.</summary>
    public bool Blocking { get; init; }
}

/// <summary>
/// A gRPC client over one HTTP/2 connection to one endpoint (plain, TLS with ALPN h2, or a Unix socket),
/// opened on first use and again after it fails. Calls are multiplexed on it. Failures are
/// <see cref="RpcException"/>s with gRPC's codes: Unavailable when the server cannot be reached or the
/// connection breaks, DeadlineExceeded, Cancelled, and the server's own status.
/// </summary>
public sealed class GrpcClient : IAsyncDisposable, IDisposable
{
    private readonly GrpcClientOptions options;
    private readonly SemaphoreSlim connectLock = new(1, 1);
    private readonly SemaphoreSlim blockingCall = new(1, 1);
    private ClientConnection? connection;
    private bool disposed;

    public GrpcClient(GrpcEndpoint endpoint, GrpcClientOptions? options = null)
    {
        Endpoint = endpoint ?? throw new ArgumentNullException(nameof(endpoint));
        this.options = options ?? new GrpcClientOptions();
    }

    public GrpcEndpoint Endpoint { get; }

    /// <summary>A unary call: one request message, one response message. <paramref name="whileWaiting"/>, if
    /// given, runs once, after the request has been sent and before the answer is read — in blocking mode
    /// the caller's own work done while the server does its part. If it throws, the answer is still read
    /// (the call has happened), then its exception is thrown. <paramref name="metadata"/>: custom request headers.</summary>
    public async Task<T> UnaryAsync<T>(string method, IMessage request, MessageParser<T> parser, DateTime? deadline, CancellationToken ct, Action? whileWaiting = null, Metadata? metadata = null)
        where T : IMessage<T>
    {
        ArgumentNullException.ThrowIfNull(parser);
        var meanwhile = whileWaiting is null ? null : new Meanwhile(whileWaiting);
        byte[] response;
        try
        {
            response = await UnaryAsync(method, GrpcWire.Frame(request), deadline, metadata, ct, meanwhile).ConfigureAwait(false);
        }
        finally
        {
            // The caller's own failure wins over the call's: it is the caller's to undo.
            meanwhile?.ThrowIfFailed();
        }

        return parser.ParseFrom(response);
    }

    /// <summary>The caller's work during a call: run at most once (a refused stream is sent again without it),
    /// its failure kept until the answer is in.</summary>
    internal sealed class Meanwhile(Action work)
    {
        private Action? pending = work;
        private System.Runtime.ExceptionServices.ExceptionDispatchInfo? failure;

        public void Run()
        {
            Action? w = pending;
            pending = null;
            try
            {
                w?.Invoke();
            }
            catch (Exception e)
            {
                failure = System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e);
            }
        }

        public void ThrowIfFailed() => failure?.Throw();
    }

    /// <summary>A unary call with an already framed request (<see cref="GrpcWire.Frame(ReadOnlySpan{byte})"/>).</summary>
    internal async Task<byte[]> UnaryAsync(string method, byte[] framedRequest, DateTime? deadline, Metadata? metadata, CancellationToken ct, Meanwhile? meanwhile = null)
    {
        using var call = new CallScope(deadline, ct, options.Blocking);
        if (options.Blocking)
        {
            // One call at a time: the caller that holds the connection is its reader.
            await blockingCall.WaitAsync(call.Token).ConfigureAwait(false);
        }

        try
        {
            // RFC 9113 §8.7: a stream the server refused, or one above its GOAWAY's last stream, was not
            // processed, and is sent again (on a new connection after GOAWAY).
            for (int attempt = 1; ; attempt++)
            {
                try
                {
                    return await UnaryCoreAsync(method, framedRequest, deadline, metadata, call, meanwhile).ConfigureAwait(false);
                }
                catch (StreamRefusedException) when (attempt < 3 && !call.Token.IsCancellationRequested && call.Left != TimeSpan.Zero)
                {
                }
            }
        }
        finally
        {
            if (options.Blocking)
            {
                blockingCall.Release();
            }
        }
    }

    private async Task<byte[]> UnaryCoreAsync(string method, byte[] framedRequest, DateTime? deadline, Metadata? metadata, CallScope call, Meanwhile? meanwhile)
    {
        ClientConnection conn = await ConnectAsync(call).ConfigureAwait(false);
        Http2Stream s = conn.NewStream();
        if (options.Blocking)
        {
            conn.Call = call; // bounds every blocking read, the sending side's included
        }

        try
        {
            await conn.SendRequestAsync(s, RequestHeaders(method, deadline, metadata, conn.PeerMaxHeaderListSize), framedRequest, endStream: true, call.Token).ConfigureAwait(false);
            meanwhile?.Run();
            if (options.Blocking)
            {
                conn.ReadUntilEnded(s);
            }

            await CheckResponseHeadersAsync(s, call.Token).ConfigureAwait(false);
            byte[]? message = await conn.ReadMessageAsync(s, call.Token).ConfigureAwait(false);
            byte[]? extra = message is null ? null : await conn.ReadMessageAsync(s, call.Token).ConfigureAwait(false);
            Status status = await EndStatusAsync(s, call.Token).ConfigureAwait(false);
            if (status.StatusCode != StatusCode.OK)
            {
                throw new RpcException(status, TrailersOf(s));
            }

            if (message is null || extra is not null)
            {
                throw new RpcException(new Status(StatusCode.Internal, message is null ? $"{method}: no response message" : $"{method}: more than one response message to a unary call"));
            }

            // Answered before the whole request went out (RFC 9113 §8.1): the rest is abandoned.
            conn.Cancel(s);
            return message;
        }
        catch (OperationCanceledException) when (call.Token.IsCancellationRequested)
        {
            conn.Cancel(s);
            throw call.Expired(method, Endpoint);
        }
        catch (TimeoutException)
        {
            conn.Cancel(s);
            throw call.Expired(method, Endpoint);
        }
        catch (RpcException)
        {
            conn.Cancel(s);
            throw;
        }
    }

    /// <summary>Starts a bidirectional streaming call (etcd's Watch): request headers, with <paramref name="metadata"/>, go out at once.</summary>
    public async Task<GrpcStreamingCall> StartStreamingAsync(string method, CancellationToken ct, Metadata? metadata = null)
    {
        if (options.Blocking)
        {
            throw new NotSupportedException($"{method}: streaming calls need a client without GrpcClientOptions.Blocking");
        }

        using var call = new CallScope(null, ct);
        ClientConnection conn = await ConnectAsync(call).ConfigureAwait(false);
        Http2Stream s = conn.NewStream();
        try
        {
            await conn.SendRequestAsync(s, RequestHeaders(method, null, metadata, conn.PeerMaxHeaderListSize), ReadOnlyMemory<byte>.Empty, endStream: false, call.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (call.Token.IsCancellationRequested)
        {
            conn.Cancel(s);
            throw call.Expired(method, Endpoint);
        }

        return new GrpcStreamingCall(conn, s, method);
    }

    /// <summary>A <see cref="CallInvoker"/> for clients Grpc.Tools generated; it carries unary calls.</summary>
    public CallInvoker CreateCallInvoker() => new Invoker(this);

    /// <summary>Waits for the server to end the stream; its status comes from the trailers, or from the
    /// headers of a trailers-only answer.</summary>
    internal static async Task<Status> EndStatusAsync(Http2Stream s, CancellationToken ct)
    {
        await s.Ended.WaitAsync(ct).ConfigureAwait(false);
        return GrpcWire.StatusOf(s.Trailers ?? await s.Headers.ConfigureAwait(false));
    }

    /// <summary>The custom trailers of an ended stream (of the headers, for a trailers-only answer).</summary>
    internal static Metadata TrailersOf(Http2Stream s) =>
        GrpcWire.MetadataOf(s.Trailers ?? (s.Headers.IsCompletedSuccessfully ? s.Headers.Result : null));

    internal static async Task CheckResponseHeadersAsync(Http2Stream s, CancellationToken ct)
    {
        List<HeaderField> headers = await s.Headers.WaitAsync(ct).ConfigureAwait(false);
        string? status = GrpcWire.Get(headers, ":status");
        if (status != "200")
        {
            throw new RpcException(GrpcWire.FromHttpStatus(status));
        }

        string? type = GrpcWire.Get(headers, "content-type");
        if (type is null || !type.StartsWith(GrpcWire.ContentType, StringComparison.Ordinal))
        {
            throw new RpcException(new Status(StatusCode.Internal, $"the server answered with content-type '{type}', not {GrpcWire.ContentType}"));
        }
    }

    private byte[] RequestHeaders(string method, DateTime? deadline, Metadata? metadata, long peerMaxHeaderListSize)
    {
        var fields = new List<(string, string)>(8)
        {
            (":method", "POST"),
            (":scheme", Endpoint.Tls ? "https" : "http"),
            (":path", method),
            (":authority", Endpoint.Authority),
            ("content-type", GrpcWire.ContentType),
            ("te", "trailers"),
        };
        if (deadline is { } d)
        {
            fields.Add(("grpc-timeout", GrpcWire.FormatTimeout(d - DateTime.UtcNow)));
        }

        if (metadata is not null)
        {
            foreach (Metadata.Entry e in metadata)
            {
                if (!e.IsBinary)
                {
                    fields.Add((e.Key, e.Value));
                }
            }
        }

        // RFC 9113 §6.5.2, §10.5.1: a header list over the server's advertised bound is refused here, as
        // Grpc.Net.Client does, rather than sent to a server that ends the whole connection over it (as this
        // project's server does: it cannot decode on past the bound). Its size: name + value + 32 per field.
        long size = fields.Sum(f => (long)System.Text.Encoding.UTF8.GetByteCount(f.Item1) + System.Text.Encoding.UTF8.GetByteCount(f.Item2) + 32);
        if (size > peerMaxHeaderListSize)
        {
            throw new RpcException(new Status(StatusCode.Internal,
                $"{method}: request headers of {size} bytes exceed the limit of {peerMaxHeaderListSize} bytes that {Endpoint} set (SETTINGS_MAX_HEADER_LIST_SIZE)"));
        }

        return GrpcWire.Block(fields);
    }

    private async Task<ClientConnection> ConnectAsync(CallScope call)
    {
        ClientConnection? current = Volatile.Read(ref connection);
        if (current is not null && current.CanOpenStreams)
        {
            return current;
        }

        try
        {
            await connectLock.WaitAsync(call.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (call.Token.IsCancellationRequested)
        {
            throw call.Expired("connect", Endpoint);
        }

        try
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (connection is not null && connection.CanOpenStreams)
            {
                return connection;
            }

            connection?.Drain();
            connection = await ClientConnection.OpenAsync(Endpoint, options, call).ConfigureAwait(false);
            return connection;
        }
        finally
        {
            connectLock.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        disposed = true;
        if (connection is not null)
        {
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    /// <summary>A call's cancellation: the caller's token and its deadline, and which of them fired.</summary>
    internal sealed class CallScope : IDisposable
    {
        private readonly CancellationTokenSource? cts;
        private readonly CancellationToken caller;

        public CallScope(DateTime? deadline, CancellationToken ct, bool blocking = false)
        {
            caller = ct;
            Deadline = deadline;
            // Blocking calls bound each read by the time left instead of a timer.
            if (deadline is { } d && d != DateTime.MaxValue && !blocking)
            {
                cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
                TimeSpan left = d - DateTime.UtcNow;
                cts.CancelAfter(left > TimeSpan.Zero ? left : TimeSpan.Zero);
            }
        }

        public DateTime? Deadline { get; }

        public CancellationToken Token => cts?.Token ?? caller;

        /// <summary>Time left before the deadline (null: none), never negative.</summary>
        public TimeSpan? Left => Deadline is { } d && d != DateTime.MaxValue ? (d - DateTime.UtcNow is var t && t > TimeSpan.Zero ? t : TimeSpan.Zero) : null;

        public RpcException Expired(string what, GrpcEndpoint endpoint) => caller.IsCancellationRequested
            ? new RpcException(new Status(StatusCode.Cancelled, $"{what} cancelled"))
            : new RpcException(new Status(StatusCode.DeadlineExceeded, $"{what}: no answer from {endpoint} before the deadline"));

        public void Dispose() => cts?.Dispose();
    }

    /// <summary>Generated clients' calls, carried as unary calls on this client.</summary>
    private sealed class Invoker(GrpcClient client) : CallInvoker
    {
        public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request) =>
            AsyncUnaryCall(method, host, options, request).ResponseAsync.GetAwaiter().GetResult();

        public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request)
        {
            byte[] framed = Marshalling.Frame(method.RequestMarshaller, request);
            Task<TResponse> response = CallAsync(method, framed, options);
            return new AsyncUnaryCall<TResponse>(response, Task.FromResult(new Metadata()), () => response.IsCompletedSuccessfully ? Status.DefaultSuccess : new Status(StatusCode.Unknown, "the call has not succeeded"), () => [], () => { });
        }

        public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options, TRequest request) =>
            throw NotCarried(method.FullName);

        public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
            throw NotCarried(method.FullName);

        public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options) =>
            throw NotCarried(method.FullName);

        private static NotSupportedException NotCarried(string method) =>
            new($"{method}: this invoker carries unary calls; use GrpcClient.StartStreamingAsync for streams");

        private async Task<TResponse> CallAsync<TRequest, TResponse>(Method<TRequest, TResponse> method, byte[] framed, CallOptions options)
            where TRequest : class
            where TResponse : class
        {
            byte[] bytes = await client.UnaryAsync(method.FullName, framed, options.Deadline, options.Headers, options.CancellationToken).ConfigureAwait(false);
            return Marshalling.Parse(method.ResponseMarshaller, bytes);
        }
    }
}

/// <summary>The server did not process the stream (REFUSED_STREAM, or above the last stream of its GOAWAY):
/// Unavailable, and safe to send again.</summary>
internal sealed class StreamRefusedException(string detail) : RpcException(new Status(StatusCode.Unavailable, detail));

/// <summary>A bidirectional streaming call: write messages, read messages until the server ends it.</summary>
public sealed class GrpcStreamingCall : IAsyncDisposable
{
    private readonly ClientConnection conn;
    private readonly Http2Stream stream;
    private readonly string method;
    private bool headersChecked;

    internal GrpcStreamingCall(ClientConnection conn, Http2Stream stream, string method)
    {
        this.conn = conn;
        this.stream = stream;
        this.method = method;
    }

    public Task WriteAsync(IMessage message, CancellationToken ct) =>
        conn.SendRequestAsync(stream, null, GrpcWire.Frame(message), endStream: false, ct);

    /// <summary>The next message, or null when the server ended the call with OK; a non-OK end throws.</summary>
    public async Task<byte[]?> ReadAsync(CancellationToken ct)
    {
        if (!headersChecked)
        {
            await GrpcClient.CheckResponseHeadersAsync(stream, ct).ConfigureAwait(false);
            headersChecked = true;
        }

        byte[]? m = await conn.ReadMessageAsync(stream, ct).ConfigureAwait(false);
        if (m is not null)
        {
            return m;
        }

        Status status = await GrpcClient.EndStatusAsync(stream, ct).ConfigureAwait(false);
        if (status.StatusCode != StatusCode.OK)
        {
            throw new RpcException(status, GrpcClient.TrailersOf(stream), $"{method}: {status.Detail}");
        }

        return null;
    }

    public ValueTask DisposeAsync()
    {
        conn.Cancel(stream);
        return ValueTask.CompletedTask;
    }
}

/// <summary>The client role of a connection: it opens odd-numbered streams and reads answers on them.</summary>
internal sealed class ClientConnection : Http2Connection
{
    private readonly GrpcClientOptions options;
    private int nextStream = 1;
    private bool draining;
    private long pingPayload;
    private TaskCompletionSource? pingAck;
    private CancellationTokenSource? keepAlive;

    /// <summary>Blocking mode: bounds the next read (milliseconds, 0 none).</summary>
    private readonly Action<int>? setReceiveTimeout;

    private ClientConnection(Stream io, Action<int>? setReceiveTimeout, GrpcClientOptions options)
        : base(io, options.MaxReceiveMessageSize, options.Blocking)
    {
        this.options = options;
        this.setReceiveTimeout = setReceiveTimeout;
    }

    public bool CanOpenStreams
    {
        get
        {
            lock (Gate)
            {
                return !draining && nextStream < int.MaxValue - 2 && Failure is null;
            }
        }
    }

    public static async Task<ClientConnection> OpenAsync(GrpcEndpoint endpoint, GrpcClientOptions options, GrpcClient.CallScope call)
    {
        using var connectCts = CancellationTokenSource.CreateLinkedTokenSource(call.Token);
        if (!options.Blocking)
        {
            // Blocking connects are bounded by poll and socket timeouts: a timer would start the timer thread.
            connectCts.CancelAfter(options.ConnectTimeout);
        }

        Stream? io = null;
        Action<int>? setReceiveTimeout = null;
        try
        {
            if (options.Blocking)
            {
                TimeSpan bound = Min(options.ConnectTimeout, call.Left);
                BlockingSocket blocking;
                if (endpoint.UnixPath is not null)
                {
                    blocking = BlockingSocket.ConnectUnix(endpoint.UnixPath, bound);
                }
                else
                {
                    IPAddress address = IPAddress.TryParse(endpoint.Host, out IPAddress? ip) ? ip
                        : Dns.GetHostAddresses(endpoint.Host).FirstOrDefault() ?? throw new SocketException((int)SocketError.HostNotFound);
                    blocking = BlockingSocket.Connect(new IPEndPoint(address, endpoint.Port), bound);
                }

                io = blocking;
                setReceiveTimeout = ms => blocking.ReceiveTimeout = ms;
            }
            else
            {
                EndPoint target = endpoint.UnixPath is not null ? new UnixDomainSocketEndPoint(endpoint.UnixPath)
                    : IPAddress.TryParse(endpoint.Host, out IPAddress? ip) ? new IPEndPoint(ip, endpoint.Port) : new DnsEndPoint(endpoint.Host, endpoint.Port);
                Socket socket = endpoint.UnixPath is not null
                    ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                    : new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(target, connectCts.Token).ConfigureAwait(false);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }

                io = new NetworkStream(socket, ownsSocket: true);
            }

            if (endpoint.Tls)
            {
                var tls = new SslStream(io, leaveInnerStreamOpen: false);
                io = tls;
                var auth = new SslClientAuthenticationOptions
                {
                    TargetHost = endpoint.Host,
                    ApplicationProtocols = [SslApplicationProtocol.Http2],
                };
                if (options.Blocking)
                {
                    setReceiveTimeout!((int)Min(options.ConnectTimeout, call.Left).TotalMilliseconds + 1);
                    tls.AuthenticateAsClient(auth);
                }
                else
                {
                    await tls.AuthenticateAsClientAsync(auth, connectCts.Token).ConfigureAwait(false);
                }
            }
        }
        catch (Exception e) when ((e is OperationCanceledException && connectCts.IsCancellationRequested) || e is TimeoutException
            || e is IOException { InnerException: SocketException { SocketErrorCode: SocketError.TimedOut } })
        {
            io?.Dispose();
            if (call.Token.IsCancellationRequested)
            {
                throw call.Expired("connect", endpoint);
            }

            throw new RpcException(new Status(StatusCode.Unavailable, $"connecting to {endpoint} took longer than {options.ConnectTimeout.TotalSeconds:0.###} s"));
        }
        catch (Exception e) when (e is SocketException or IOException or System.Security.Authentication.AuthenticationException)
        {
            io?.Dispose();
            throw new RpcException(new Status(StatusCode.Unavailable, $"cannot connect to {endpoint}: {e.Message}", e));
        }

        var conn = new ClientConnection(io, setReceiveTimeout, options) { PeerName = endpoint.ToString() };
        conn.QueueHandshake(client: true,
        [
            (Http2.SettingsEnablePush, 0),
            (Http2.SettingsInitialWindowSize, StreamWindow),
            (Http2.SettingsMaxHeaderListSize, 16 * 1024),
        ]);
        if (options.Blocking)
        {
            return conn;
        }

        _ = conn.RunAsync(expectPreface: false);
        if (options.KeepAliveInterval is { } interval)
        {
            conn.keepAlive = new CancellationTokenSource();
            _ = conn.KeepAliveAsync(interval, conn.keepAlive.Token);
        }

        return conn;
    }

    private static TimeSpan Min(TimeSpan a, TimeSpan? b) => b is { } v && v < a ? v : a;

    /// <summary>Blocking mode: the call whose deadline bounds every read (one call at a time).</summary>
    public GrpcClient.CallScope? Call { get; set; }

    /// <summary>Blocking mode: reads on the calling thread until the stream has ended (or failed).</summary>
    public void ReadUntilEnded(Http2Stream s)
    {
        while (!s.Ended.IsCompleted)
        {
            ReadBlocking();
        }
    }

    protected override void BeforeBlockingRead()
    {
        TimeSpan? left = Call?.Left;
        if (left == TimeSpan.Zero)
        {
            throw new TimeoutException("deadline passed");
        }

        setReceiveTimeout?.Invoke(left is { } t ? (int)Math.Min(int.MaxValue, t.TotalMilliseconds) + 1 : 0);
    }

    /// <summary>A stream not yet opened: it takes its id when its HEADERS are sent.</summary>
    public Http2Stream NewStream()
    {
        lock (Gate)
        {
            if (Failure is { } f)
            {
                throw Unavailable(f);
            }

            return NewStreamLocked(0);
        }
    }

    protected override int NextStreamIdLocked()
    {
        int id = nextStream;
        nextStream += 2;
        return id;
    }

    public Task SendRequestAsync(Http2Stream s, byte[]? headers, ReadOnlyMemory<byte> data, bool endStream, CancellationToken ct) =>
        SendAsync(s, headers, data, null, endStream, ct);

    /// <summary>Abandons a stream this side no longer wants (RST_STREAM CANCEL), if it is still open.</summary>
    public void Cancel(Http2Stream s)
    {
        bool queued = false;
        lock (Gate)
        {
            if (Streams.ContainsKey(s.Id))
            {
                QueueResetLocked(s, Http2ErrorCode.Cancel, "cancelled by the client");
                queued = true;
            }
        }

        if (queued)
        {
            _ = FlushQuietlyAsync();
        }
    }

    /// <summary>No new streams; the connection closes when its last stream ends.</summary>
    public void Drain()
    {
        bool idle;
        lock (Gate)
        {
            draining = true;
            idle = Streams.Count == 0;
        }

        if (idle)
        {
            Close("drained");
        }
    }

    protected override void OnHeaderBlock(int id, List<HeaderField> fields, bool endStream)
    {
        Http2Stream? s;
        lock (Gate)
        {
            s = FindStreamLocked(id, FrameType.Headers);
            if (s is null)
            {
                return;
            }

            if (s.HeadersReceived && !endStream)
            {
                QueueResetLocked(s, Http2ErrorCode.ProtocolError, "a second header block without END_STREAM");
                return;
            }
        }

        s.OnHeaders(fields);
        if (endStream)
        {
            EndRemote(s);
        }
    }

    // Even ids would be server push, which this client disables.
    protected override bool StopsSendingWhenPeerEnds => true;

    protected override bool IsIdle(int id)
    {
        lock (Gate)
        {
            return (id & 1) == 0 || id >= nextStream;
        }
    }

    protected override void OnGoAway(int lastStream, Http2ErrorCode code, string debug)
    {
        List<Http2Stream> refused;
        lock (Gate)
        {
            draining = true;
            refused = [.. Streams.Values.Where(s => s.Id > lastStream)];
            foreach (Http2Stream s in refused)
            {
                RetireLocked(s);
            }
        }

        // RFC 9113 §6.8: streams above the last one were not processed and may be retried elsewhere.
        var error = new StreamRefusedException($"the server is going away ({code}{(debug.Length > 0 ? ": " + debug : "")})");
        foreach (Http2Stream s in refused)
        {
            s.LocalClosed = true;
            s.Abort(error);
        }

        if (code != Http2ErrorCode.NoError)
        {
            Fail(error);
        }
    }

    protected override bool ClosesWhenIdle
    {
        get
        {
            lock (Gate)
            {
                return draining;
            }
        }
    }

    protected override void OnIdle()
    {
        bool close;
        lock (Gate)
        {
            close = draining && Streams.Count == 0;
        }

        if (close)
        {
            Close("drained");
        }
    }

    protected override void OnPingAck(long payload)
    {
        lock (Gate)
        {
            if (payload == pingPayload)
            {
                pingAck?.TrySetResult();
            }
        }
    }

    private async Task KeepAliveAsync(TimeSpan interval, CancellationToken ct)
    {
        try
        {
            while (!ct.IsCancellationRequested && Failure is null)
            {
                await Task.Delay(interval, ct).ConfigureAwait(false);
                TaskCompletionSource ack;
                lock (Gate)
                {
                    pingPayload++;
                    ack = pingAck = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                }

                await SendPingAsync(pingPayload).ConfigureAwait(false);
                if (await Task.WhenAny(ack.Task, Task.Delay(options.KeepAliveTimeout, ct)).ConfigureAwait(false) != ack.Task && !ct.IsCancellationRequested)
                {
                    Fail(new RpcException(new Status(StatusCode.Unavailable, $"the server did not answer a keepalive PING within {options.KeepAliveTimeout.TotalSeconds:0.###} s")));
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private Task SendPingAsync(long payload)
    {
        lock (Gate)
        {
            Span<byte> bytes = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(bytes, payload);
            QueueControlLocked(FrameType.Ping, 0, 0, bytes);
        }

        return FlushQuietlyAsync();
    }

    public override ValueTask DisposeAsync()
    {
        keepAlive?.Cancel();
        keepAlive?.Dispose();
        return base.DisposeAsync();
    }
}
