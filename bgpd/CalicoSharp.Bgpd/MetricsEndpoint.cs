using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The Prometheus scrape endpoint: HTTP/1.1 (RFC 9112) on a TCP address, GET or HEAD of <c>/metrics</c>.
/// Keep-alive as scrapers use it; bounded in what it reads, in open connections and in time, so a stray or
/// hostile client cannot hold the daemon's memory or file descriptors, nor keep scrapes out:
/// <list type="bullet">
/// <item>each request (head and body, or the wait for the next request on a kept-alive connection) must be
/// complete within the request timeout, however slowly its bytes arrive: dribbling does not extend it;</item>
/// <item>when all connection slots are taken, a new connection takes the slot of the connection that has waited
/// longest for a request, so clients that send nothing (or half a head) cannot lock a scraper out.</item>
/// </list>
/// </summary>
internal sealed class MetricsEndpoint : IAsyncDisposable
{
    private const int MaxHead = 8 * 1024;
    private const int MaxConnections = 32;
    public static readonly TimeSpan DefaultRequestTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket listener;
    private readonly Func<Task<string>> render;
    private readonly TimeSpan requestTimeout;
    private readonly CancellationTokenSource stopping = new();
    private readonly Task acceptLoop;
    private readonly HashSet<Connection> open = [];

    private MetricsEndpoint(Socket listener, Func<Task<string>> render, TimeSpan requestTimeout)
    {
        this.listener = listener;
        this.render = render;
        this.requestTimeout = requestTimeout;
        acceptLoop = AcceptLoopAsync();
    }

    public IPEndPoint LocalEndPoint => (IPEndPoint)listener.LocalEndPoint!;

    /// <summary>Listens on <paramref name="address"/>; <paramref name="requestTimeout"/> bounds each request
    /// (default <see cref="DefaultRequestTimeout"/>).</summary>
    public static MetricsEndpoint Start(IPEndPoint address, Func<Task<string>> render, TimeSpan? requestTimeout = null)
    {
        TimeSpan timeout = requestTimeout ?? DefaultRequestTimeout;
        if (timeout <= TimeSpan.Zero)
        {
            throw new ArgumentOutOfRangeException(nameof(requestTimeout), timeout, "the metrics request timeout must be positive");
        }

        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(address);
            socket.Listen(16);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new MetricsEndpoint(socket, render, timeout);
    }

    /// <summary>One accepted client; <see cref="WaitingSince"/> is set while it owes us a request.</summary>
    private sealed class Connection(Socket socket) : IDisposable
    {
        public Socket Socket { get; } = socket;

        public CancellationTokenSource Evicted { get; } = new();

        public long? WaitingSince { get; set; } = System.Diagnostics.Stopwatch.GetTimestamp();

        public void Dispose() => Evicted.Dispose();
    }

    private Task AcceptLoopAsync() => Rpc.SocketListener.AcceptAsync(listener, client =>
    {
        var connection = new Connection(client);
        Connection? evict = null;
        lock (open)
        {
            if (open.Count >= MaxConnections)
            {
                evict = open.Where(c => c.WaitingSince is not null).MinBy(c => c.WaitingSince);
                if (evict is null)
                {
                    // Every slot is busy answering: refuse the newcomer rather than grow.
                    connection.Dispose();
                    client.Dispose();
                    return;
                }

                open.Remove(evict);
            }

            open.Add(connection);
        }

        // The evicted connection's own task sees the cancellation, closes its socket and frees its resources.
        try
        {
            evict?.Evicted.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // It ended on its own in the meantime: its slot is free anyway.
        }

        _ = ServeAsync(connection);
    }, stopping.Token);

    private async Task ServeAsync(Connection connection)
    {
        try
        {
            using var stream = new NetworkStream(connection.Socket, ownsSocket: true);
            // A head and a body of at most MaxHead each.
            byte[] buffer = new byte[2 * MaxHead];
            int filled = 0;
            while (!stopping.IsCancellationRequested)
            {
                // The whole request, from the moment we wait for it, must arrive within the timeout.
                lock (open)
                {
                    connection.WaitingSince = System.Diagnostics.Stopwatch.GetTimestamp();
                }

                using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stopping.Token, connection.Evicted.Token);
                deadline.CancelAfter(requestTimeout);
                int headEnd;
                while ((headEnd = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0 || headEnd > MaxHead)
                {
                    if (filled >= MaxHead)
                    {
                        await WriteAsync(stream, 431, "Request Header Fields Too Large", "request head larger than 8 KiB\n", head: false, close: true).ConfigureAwait(false);
                        return;
                    }

                    int n = await stream.ReadAsync(buffer.AsMemory(filled), deadline.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        return;
                    }

                    filled += n;
                }

                Request r = Parse(Encoding.ASCII.GetString(buffer, 0, headEnd));
                int consumed = headEnd + 4;
                if (r.Error is { } error)
                {
                    await WriteAsync(stream, error.Status, error.Reason, error.Text, head: false, close: true).ConfigureAwait(false);
                    return;
                }

                // A body (unusual on GET) is read and dropped, within the same bounds as a head.
                if (r.ContentLength > MaxHead)
                {
                    await WriteAsync(stream, 413, "Content Too Large", "request body too large\n", head: false, close: true).ConfigureAwait(false);
                    return;
                }

                while (filled - consumed < r.ContentLength)
                {
                    int n = await stream.ReadAsync(buffer.AsMemory(filled), deadline.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        return;
                    }

                    filled += n;
                }

                lock (open)
                {
                    connection.WaitingSince = null;
                }

                consumed += (int)r.ContentLength;
                Buffer.BlockCopy(buffer, consumed, buffer, 0, filled - consumed);
                filled -= consumed;

                if (r.Method is not ("GET" or "HEAD"))
                {
                    await WriteAsync(stream, 405, "Method Not Allowed", "only GET and HEAD\n", head: false, close: r.Close, extra: "Allow: GET, HEAD\r\n").ConfigureAwait(false);
                }
                else if (r.Path is "/metrics" or "/metrics/")
                {
                    string text = await render().ConfigureAwait(false);
                    await WriteAsync(stream, 200, "OK", text, r.Method == "HEAD", r.Close, contentType: "text/plain; version=0.0.4; charset=utf-8").ConfigureAwait(false);
                }
                else
                {
                    await WriteAsync(stream, 404, "Not Found", "calicosharp-bgpd serves /metrics\n", r.Method == "HEAD", r.Close).ConfigureAwait(false);
                }

                if (r.Close)
                {
                    return;
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // client gone, request too slow, slot taken by a newer client, or stopping
        }
        finally
        {
            lock (open)
            {
                open.Remove(connection);
            }

            connection.Dispose();
        }
    }

    private readonly record struct Request(string Method, string Path, bool Close, long ContentLength, (int Status, string Reason, string Text)? Error);

    /// <summary>The request line and the headers that matter here (RFC 9112 §3, §6, §9.6).</summary>
    private static Request Parse(string head)
    {
        string[] lines = head.Split("\r\n");
        string[] start = lines[0].Split(' ');
        if (start.Length != 3 || !start[2].StartsWith("HTTP/1.", StringComparison.Ordinal))
        {
            return new Request("", "", true, 0, (400, "Bad Request", "malformed request line\n"));
        }

        bool close = start[2] == "HTTP/1.0";
        long length = 0;
        for (int i = 1; i < lines.Length; i++)
        {
            int colon = lines[i].IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0)
            {
                return new Request("", "", true, 0, (400, "Bad Request", "malformed header line\n"));
            }

            string name = lines[i][..colon].Trim();
            string value = lines[i][(colon + 1)..].Trim();
            if (name.Equals("Connection", StringComparison.OrdinalIgnoreCase))
            {
                close = value.Contains("close", StringComparison.OrdinalIgnoreCase) || (close && !value.Contains("keep-alive", StringComparison.OrdinalIgnoreCase));
            }
            else if (name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
            {
                if (!long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out length))
                {
                    return new Request("", "", true, 0, (400, "Bad Request", "bad Content-Length\n"));
                }
            }
            else if (name.Equals("Transfer-Encoding", StringComparison.OrdinalIgnoreCase))
            {
                return new Request("", "", true, 0, (501, "Not Implemented", "request bodies with Transfer-Encoding are not accepted\n"));
            }
        }

        string path = start[1];
        int query = path.IndexOf('?', StringComparison.Ordinal);
        return new Request(start[0], query >= 0 ? path[..query] : path, close, length, null);
    }

    private static async Task WriteAsync(NetworkStream stream, int status, string reason, string body, bool head, bool close,
        string contentType = "text/plain; charset=utf-8", string extra = "")
    {
        byte[] content = Encoding.UTF8.GetBytes(body);
        string header = string.Create(CultureInfo.InvariantCulture,
            $"HTTP/1.1 {status} {reason}\r\nContent-Type: {contentType}\r\nContent-Length: {content.Length}\r\n{extra}{(close ? "Connection: close\r\n" : "")}\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(header)).ConfigureAwait(false);
        if (!head)
        {
            await stream.WriteAsync(content).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await stopping.CancelAsync().ConfigureAwait(false);
        listener.Dispose();
        await acceptLoop.ConfigureAwait(false);
        stopping.Dispose();
    }
}
