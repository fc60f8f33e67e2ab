using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The Prometheus scrape endpoint: HTTP/1.1 (RFC 9112) on a TCP address, GET or HEAD of <c>/metrics</c>.
/// Keep-alive as scrapers use it; bounded in what it reads, in open connections and in idle time, so a
/// stray client cannot hold the daemon's memory or file descriptors.
/// </summary>
internal sealed class MetricsEndpoint : IAsyncDisposable
{
    private const int MaxHead = 8 * 1024;
    private const int MaxConnections = 32;
    private static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket listener;
    private readonly Func<Task<string>> render;
    private readonly CancellationTokenSource stopping = new();
    private readonly Task acceptLoop;
    private int open;

    private MetricsEndpoint(Socket listener, Func<Task<string>> render)
    {
        this.listener = listener;
        this.render = render;
        acceptLoop = AcceptLoopAsync();
    }

    public IPEndPoint LocalEndPoint => (IPEndPoint)listener.LocalEndPoint!;

    public static MetricsEndpoint Start(IPEndPoint address, Func<Task<string>> render)
    {
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

        return new MetricsEndpoint(socket, render);
    }

    private Task AcceptLoopAsync() => Rpc.SocketListener.AcceptAsync(listener, client =>
    {
        if (Interlocked.Increment(ref open) > MaxConnections)
        {
            Interlocked.Decrement(ref open);
            client.Dispose();
            return;
        }

        _ = ServeAsync(client);
    }, stopping.Token);

    private async Task ServeAsync(Socket client)
    {
        try
        {
            using var stream = new NetworkStream(client, ownsSocket: true);
            // A head and a body of at most MaxHead each.
            byte[] buffer = new byte[2 * MaxHead];
            int filled = 0;
            while (!stopping.IsCancellationRequested)
            {
                int headEnd;
                while ((headEnd = buffer.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0 || headEnd > MaxHead)
                {
                    if (filled >= MaxHead)
                    {
                        await WriteAsync(stream, 431, "Request Header Fields Too Large", "request head larger than 8 KiB\n", head: false, close: true).ConfigureAwait(false);
                        return;
                    }

                    using var idle = CancellationTokenSource.CreateLinkedTokenSource(stopping.Token);
                    idle.CancelAfter(IdleTimeout);
                    int n = await stream.ReadAsync(buffer.AsMemory(filled), idle.Token).ConfigureAwait(false);
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

                // A body (unusual on GET) is read and dropped, within the same bound as a head.
                if (r.ContentLength > MaxHead)
                {
                    await WriteAsync(stream, 413, "Content Too Large", "request body too large\n", head: false, close: true).ConfigureAwait(false);
                    return;
                }

                while (filled - consumed < r.ContentLength)
                {
                    int n = await stream.ReadAsync(buffer.AsMemory(filled), stopping.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        return;
                    }

                    filled += n;
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
            // client gone, idle too long, or stopping
        }
        finally
        {
            Interlocked.Decrement(ref open);
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
