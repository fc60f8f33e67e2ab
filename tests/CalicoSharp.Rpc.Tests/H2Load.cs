using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;

namespace CalicoSharp.Rpc.Tests;

/// <summary>What one h2load run reported: its request counts, status classes, throughput, and latency
/// percentiles from its per-request log.</summary>
internal sealed record H2LoadResult(
    long Total, long Succeeded, long Failed, long Errored, long TimedOut, long Status2xx,
    double RequestsPerSecond, double P50Ms, double P99Ms, string Command, string Output);

/// <summary>
/// Runs h2load (Debian nghttp2-client) as a gRPC load generator: each request is a POST of one framed unary
/// request message (<c>-d</c>) with <c>content-type: application/grpc</c> and <c>te: trailers</c>, over HTTP/2
/// without TLS. h2load sees HTTP statuses, not gRPC's (it does not read trailers): the caller checks the
/// server's own count of answered calls.
/// </summary>
internal static partial class H2Load
{
    public static async Task<H2LoadResult> RunAsync(System.Net.IPEndPoint server, string method, Google.Protobuf.IMessage request,
        int requests, int clients, int streamsPerClient, TimeSpan timeout)
    {
        string dir = Directory.CreateTempSubdirectory("calicosharp-h2load-").FullName;
        try
        {
            string body = Path.Combine(dir, "request.grpc");
            string log = Path.Combine(dir, "requests.log");
            await File.WriteAllBytesAsync(body, GrpcWire.Frame(request));
            string[] args =
            [
                "-n", requests.ToString(CultureInfo.InvariantCulture),
                "-c", clients.ToString(CultureInfo.InvariantCulture),
                "-m", streamsPerClient.ToString(CultureInfo.InvariantCulture),
                "-d", body,
                "-H", "content-type: application/grpc",
                "-H", "te: trailers",
                "--log-file", log,
                $"http://{server}{method}",
            ];
            // As it would be typed in the temporary folder (request.grpc: one framed request message).
            string command = "h2load " + string.Join(' ', args.Select(a => a.StartsWith(dir, StringComparison.Ordinal) ? Path.GetFileName(a)
                : a.Contains(' ', StringComparison.Ordinal) ? $"'{a}'" : a));
            var psi = new ProcessStartInfo("h2load") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in args)
            {
                psi.ArgumentList.Add(a);
            }

            Process p;
            try
            {
                p = Process.Start(psi)!;
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                throw new InvalidOperationException("h2load is not installed (Debian package nghttp2-client; make deps installs it)", e);
            }

            using (p)
            {
                Task<string> stdout = p.StandardOutput.ReadToEndAsync();
                Task<string> stderr = p.StandardError.ReadToEndAsync();
                using var cts = new CancellationTokenSource(timeout);
                try
                {
                    await p.WaitForExitAsync(cts.Token);
                }
                catch (OperationCanceledException)
                {
                    p.Kill(entireProcessTree: true);
                    await p.WaitForExitAsync();
                    throw new TimeoutException($"{command} did not finish within {timeout.TotalSeconds:0} s");
                }

                string output = await stdout + await stderr;
                if (p.ExitCode != 0)
                {
                    throw new InvalidOperationException($"{command} exited {p.ExitCode}: {output}");
                }

                Match r = RequestsLine().Match(output);
                Match st = StatusLine().Match(output);
                Match fin = FinishedLine().Match(output);
                if (!r.Success || !st.Success || !fin.Success)
                {
                    throw new InvalidOperationException($"unexpected h2load output: {output}");
                }

                long N(Match m, string g) => long.Parse(m.Groups[g].Value, CultureInfo.InvariantCulture);
                double[] ms = [.. File.ReadLines(log).Select(l => l.Split('\t')).Where(f => f.Length >= 3)
                    .Select(f => double.Parse(f[2], CultureInfo.InvariantCulture) / 1000).Order()];
                return new H2LoadResult(N(r, "total"), N(r, "succeeded"), N(r, "failed"), N(r, "errored"), N(r, "timeout"), N(st, "ok"),
                    double.Parse(fin.Groups["rps"].Value, CultureInfo.InvariantCulture), Percentile(ms, 0.50), Percentile(ms, 0.99), command, output);
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static double Percentile(double[] sorted, double q) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];

    [GeneratedRegex(@"requests: (?<total>\d+) total, \d+ started, \d+ done, (?<succeeded>\d+) succeeded, (?<failed>\d+) failed, (?<errored>\d+) errored, (?<timeout>\d+) timeout")]
    private static partial Regex RequestsLine();

    [GeneratedRegex(@"status codes: (?<ok>\d+) 2xx")]
    private static partial Regex StatusLine();

    [GeneratedRegex(@"finished in [\d.]+m?s, (?<rps>[\d.]+) req/s")]
    private static partial Regex FinishedLine();
}
