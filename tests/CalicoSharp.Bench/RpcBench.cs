using System.Globalization;
using CalicoSharp.Rpc;
using CalicoSharp.Rpc.Tests;
using CalicoSharp.Rpc.Tests.Echo;

namespace CalicoSharp.Bench;

/// <summary>
/// CalicoSharp.Rpc's gRPC server under h2load (many connections, many concurrent streams each, unary calls),
/// beside the reference server (Kestrel's gRPC, Grpc.AspNetCore) in the same run: requests/s and latency
/// p50/p99 from h2load's per-request log; every request must be answered 200 and reach its handler.
/// </summary>
internal static class RpcBench
{
    private const string Method = "/calicosharp.test.Echo/Say";

    public static async Task RunAsync(TextWriter o, int requests, int clients, int streams)
    {
        var request = new EchoRequest { Text = "bench", ReplySize = 100 };
        o.WriteLine();
        o.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"gRPC server under h2load: {requests} unary calls (a 100-byte answer each), {clients} clients x {streams} streams, TCP loopback; both servers in this process (JIT), h2load on the same 2 cores"));
        await using var ours = new EchoServer();
        await using KestrelEchoServer kestrel = await KestrelEchoServer.StartAsync().ConfigureAwait(false);
        var servers = new (string Name, System.Net.IPEndPoint Tcp, EchoService Service)[]
        {
            ("CalicoSharp.Rpc", ours.Tcp, ours.Service),
            ("Kestrel (Grpc.AspNetCore 2.85.0)", kestrel.Tcp, kestrel.Service),
        };
        // Warm-up (JIT, connection set-up paths), not counted; then two rounds, alternating.
        foreach (var s in servers)
        {
            await RunOneAsync(s.Tcp, s.Service, request, Math.Min(requests, 5000), clients, streams).ConfigureAwait(false);
        }

        for (int round = 1; round <= 2; round++)
        {
            foreach (var s in servers)
            {
                H2LoadResult r = await RunOneAsync(s.Tcp, s.Service, request, requests, clients, streams).ConfigureAwait(false);
                o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {s.Name,-34} round {round}: {r.RequestsPerSecond,8:0} requests/s, latency p50 {r.P50Ms,6:0.00} ms, p99 {r.P99Ms,6:0.00} ms; {r.Succeeded} succeeded, {r.Failed} failed, {r.Status2xx} answered 200"));
                if (round == 1 && s.Name == servers[0].Name)
                {
                    o.WriteLine("    " + r.Command.Replace(s.Tcp.Port.ToString(CultureInfo.InvariantCulture), "<port>", StringComparison.Ordinal));
                }
            }
        }
    }

    private static async Task<H2LoadResult> RunOneAsync(System.Net.IPEndPoint tcp, EchoService service, EchoRequest request, int requests, int clients, int streams)
    {
        int before = Volatile.Read(ref service.Said);
        H2LoadResult r = await H2Load.RunAsync(tcp, Method, request, requests, clients, streams, TimeSpan.FromMinutes(5)).ConfigureAwait(false);
        int answered = Volatile.Read(ref service.Said) - before;
        if (r.Succeeded != requests || r.Status2xx != requests || answered != requests)
        {
            throw new InvalidOperationException($"not every request was answered ({answered} reached the handler):\n{r.Output}");
        }

        return r;
    }
}
