using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>The speakers the BGP benchmarks run (each in its namespace) and how testers reach them.</summary>
internal static class SpeakerProcesses
{
    public interface IRunning : IDisposable
    {
        int Pid { get; }

        /// <summary>The control API's socket, when the speaker serves one.</summary>
        string? ApiSocket => null;
    }

    private sealed class Bgpd(Process p, string dir, string? api) : IRunning
    {
        public int Pid => p.Id;

        public string? ApiSocket => api;

        public void Dispose()
        {
            if (!p.HasExited)
            {
                p.Kill(true);
                p.WaitForExit(5000);
            }
            p.Dispose();
            Directory.Delete(dir, true);
        }
    }

    private sealed class Bird(BirdProcess b) : IRunning
    {
        public int Pid => b.Pid;

        public void Dispose() => b.Dispose();
    }

    /// <summary>calicosharp-bgpd from its config file; kernel route programming only when asked; the control API and
    /// metrics (on <paramref name="metricsAddress"/>) only when asked; <paramref name="environment"/> added to its own.</summary>
    public static IRunning StartBgpd(string ns, string bin, string configJson, bool kernel = false, string? metricsAddress = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        string dir = Directory.CreateTempSubdirectory("calicosharp-bench-").FullName;
        string cfg = Path.Combine(dir, "bgpd.json");
        File.WriteAllText(cfg, configJson);
        string? api = metricsAddress is null ? null : Path.Combine(dir, "bgpd.sock");
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false };
        foreach (string a in new[] { "netns", "exec", ns, bin, "--config", cfg, "--api-socket", api ?? "none", "--log-level", "warning" }
            .Concat(kernel ? [] : ["--no-kernel"]).Concat(metricsAddress is null ? [] : ["--metrics-address", metricsAddress]))
        {
            psi.ArgumentList.Add(a);
        }
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[name] = value;
        }
        return new Bgpd(Process.Start(psi)!, dir, api);
    }

    public static IRunning StartBird(string ns, string config) => new Bird(BirdProcess.Start(ns, config));

    /// <summary>Connects a tester once the speaker listens (it may still be starting).</summary>
    public static async Task<BgpTester> ConnectTesterAsync(IPEndPoint ep, string local, uint asn, Func<AddressFamily, Socket> factory)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                return await BgpTester.ConnectAsync(ep, IPAddress.Parse(local), asn, 90, factory).ConfigureAwait(false);
            }
            catch (Exception e) when ((e is SocketException or IOException or TimeoutException) && sw.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Delay(100).ConfigureAwait(false);
            }
        }
    }
}
