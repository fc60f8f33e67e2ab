using System.Net;
using System.Net.Sockets;
using System.Text;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The Prometheus endpoint's HTTP/1.1: what a scraper (and a stray client) gets. No root needed.</summary>
public class MetricsEndpointTests
{
    private const string Body = "# HELP x test\n# TYPE x gauge\nx 1\n";

    private static MetricsEndpoint Start(Func<Task<string>>? render = null, TimeSpan? requestTimeout = null) =>
        MetricsEndpoint.Start(new IPEndPoint(IPAddress.Loopback, 0), render ?? (() => Task.FromResult(Body)), requestTimeout);

    /// <summary>Writes raw request bytes and reads until the server closes or <paramref name="responses"/>
    /// complete responses (by Content-Length) have arrived.</summary>
    private static async Task<string> ExchangeAsync(MetricsEndpoint m, string request, int responses = 1)
    {
        using var c = new TcpClient();
        await c.ConnectAsync(m.LocalEndPoint);
        NetworkStream s = c.GetStream();
        await s.WriteAsync(Encoding.ASCII.GetBytes(request));
        var text = new StringBuilder();
        byte[] buffer = new byte[8192];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        while (CountComplete(text.ToString()) < responses)
        {
            int n = await s.ReadAsync(buffer, timeout.Token);
            if (n == 0)
            {
                break;
            }

            text.Append(Encoding.UTF8.GetString(buffer, 0, n));
        }

        return text.ToString();
    }

    private static int CountComplete(string text)
    {
        int count = 0;
        int pos = 0;
        while (true)
        {
            int head = text.IndexOf("\r\n\r\n", pos, StringComparison.Ordinal);
            if (head < 0)
            {
                return count;
            }

            int lengthAt = text.IndexOf("Content-Length: ", pos, StringComparison.Ordinal);
            int length = lengthAt >= 0 && lengthAt < head ? int.Parse(text[(lengthAt + 16)..text.IndexOf('\r', lengthAt)], System.Globalization.CultureInfo.InvariantCulture) : 0;
            if (text.Length - (head + 4) < length)
            {
                return count;
            }

            count++;
            pos = head + 4 + length;
        }
    }

    [Fact]
    public async Task Get_metrics_answers_the_text_format()
    {
        await using MetricsEndpoint m = Start();
        string r = await ExchangeAsync(m, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 200 OK\r\n", r, StringComparison.Ordinal);
        Assert.Contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", r, StringComparison.Ordinal);
        Assert.Contains($"Content-Length: {Body.Length}\r\n", r, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\n" + Body, r, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Keep_alive_serves_several_requests_on_one_connection()
    {
        int renders = 0;
        await using MetricsEndpoint m = Start(() => Task.FromResult($"x {Interlocked.Increment(ref renders)}\n"));
        string r = await ExchangeAsync(m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", responses: 2);
        Assert.Contains("\r\n\r\nx 1\n", r, StringComparison.Ordinal);
        Assert.EndsWith("\r\n\r\nx 2\n", r, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HTTP_1_0_and_connection_close_end_the_connection()
    {
        await using MetricsEndpoint m = Start();
        foreach (string request in new[] { "GET /metrics HTTP/1.0\r\n\r\n", "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n" })
        {
            string r = await ExchangeAsync(m, request, responses: 2); // reads to the close
            Assert.StartsWith("HTTP/1.1 200 OK\r\n", r, StringComparison.Ordinal);
            Assert.Contains("Connection: close\r\n", r, StringComparison.Ordinal);
            Assert.Equal(1, CountComplete(r));
        }
    }

    [Theory]
    [InlineData("HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 OK")]
    [InlineData("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found")]
    [InlineData("POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", "HTTP/1.1 405 Method Not Allowed")]
    [InlineData("GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.1 501 Not Implemented")]
    [InlineData("GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n", "HTTP/1.1 400 Bad Request")]
    [InlineData("GET /metrics\r\n\r\n", "HTTP/1.1 400 Bad Request")]
    [InlineData("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", "HTTP/1.1 400 Bad Request")]
    public async Task Each_other_request_gets_its_status(string request, string status)
    {
        await using MetricsEndpoint m = Start();
        string r = await ExchangeAsync(m, request, responses: request.StartsWith("HEAD", StringComparison.Ordinal) ? 2 : 1);
        Assert.StartsWith(status + "\r\n", r, StringComparison.Ordinal);
        if (request.StartsWith("HEAD", StringComparison.Ordinal))
        {
            Assert.EndsWith("\r\n\r\n", r, StringComparison.Ordinal); // no body
        }

        if (status.Contains("405", StringComparison.Ordinal))
        {
            Assert.Contains("Allow: GET, HEAD\r\n", r, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Slow_clients_cannot_lock_out_a_scrape()
    {
        await using MetricsEndpoint m = Start();
        var clients = new List<TcpClient>();
        using var stop = new CancellationTokenSource();
        var dribblers = new List<Task>();
        try
        {
            // More clients than the endpoint serves at once: most send nothing, some send a partial head a byte at a time.
            for (int i = 0; i < 40; i++)
            {
                var c = new TcpClient();
                clients.Add(c);
                await c.ConnectAsync(m.LocalEndPoint);
                if (i % 5 == 0)
                {
                    NetworkStream stream = c.GetStream();
                    dribblers.Add(Task.Run(async () =>
                    {
                        byte[] head = Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\nX-Slow: " + new string('a', 4000));
                        foreach (byte b in head)
                        {
                            await stream.WriteAsync(new[] { b }, stop.Token);
                            await Task.Delay(50, stop.Token);
                        }
                    }, stop.Token));
                }
            }

            await Task.Delay(300);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            string r = await ExchangeAsync(m, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            Assert.StartsWith("HTTP/1.1 200 OK\r\n", r, StringComparison.Ordinal);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(3), $"the scrape took {clock.Elapsed}");
        }
        finally
        {
            await stop.CancelAsync();
            foreach (TcpClient c in clients)
            {
                c.Dispose();
            }

            await Task.WhenAll(dribblers.Select(t => t.ContinueWith(_ => { }, TaskScheduler.Default)));
        }
    }

    [Fact]
    public async Task A_request_dribbled_a_byte_at_a_time_is_closed_at_its_deadline()
    {
        await using MetricsEndpoint m = Start(requestTimeout: TimeSpan.FromSeconds(1));
        using var c = new TcpClient();
        await c.ConnectAsync(m.LocalEndPoint);
        NetworkStream s = c.GetStream();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        bool closed = false;
        try
        {
            // Each byte comes well inside any per-read timeout; the head never ends.
            while (!limit.IsCancellationRequested)
            {
                await s.WriteAsync("a"u8.ToArray(), limit.Token);
                await Task.Delay(100, limit.Token);
                if (c.Client.Poll(0, SelectMode.SelectRead) && c.Client.Available == 0)
                {
                    closed = true;
                    break;
                }
            }
        }
        catch (IOException)
        {
            closed = true;
        }

        Assert.True(closed, "the server kept a request that never ended open for 10 s");
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(4));
    }

    [Fact]
    public async Task A_body_that_never_arrives_is_closed_at_the_deadline()
    {
        await using MetricsEndpoint m = Start(requestTimeout: TimeSpan.FromSeconds(1));
        using var c = new TcpClient();
        await c.ConnectAsync(m.LocalEndPoint);
        NetworkStream s = c.GetStream();
        await s.WriteAsync(Encoding.ASCII.GetBytes("GET /metrics HTTP/1.1\r\nContent-Length: 100\r\n\r\nab"));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        int n;
        try
        {
            n = await s.ReadAsync(new byte[16], limit.Token);
        }
        catch (OperationCanceledException)
        {
            n = -1;
        }
        catch (IOException)
        {
            n = 0; // closed with a reset: closed all the same
        }

        Assert.Equal(0, n);
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(4));
    }

    [Fact]
    public async Task An_oversized_head_is_refused()
    {
        await using MetricsEndpoint m = Start();
        string r = await ExchangeAsync(m, "GET /metrics HTTP/1.1\r\nX-Big: " + new string('a', 10_000) + "\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 431 ", r, StringComparison.Ordinal);
        // And it still serves.
        Assert.StartsWith("HTTP/1.1 200 OK", await ExchangeAsync(m, "GET /metrics HTTP/1.1\r\n\r\n"), StringComparison.Ordinal);
    }
}
