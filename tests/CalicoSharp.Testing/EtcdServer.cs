using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.Testing;

/// <summary>A real etcd (Debian's etcd-server) on a free loopback port with a temporary data directory.
/// Can be stopped, restarted on the same port and data, frozen (SIGSTOP) and thawed.</summary>
public sealed class EtcdServer : IDisposable
{
    public const string NamePrefix = "calicosharp-test-etcd";

    private readonly string dataDir;
    private readonly int clientPort;
    private readonly int peerPort;
    private readonly string name;
    private readonly List<string> log = [];
    private string initialCluster;
    private Process? process;

    private EtcdServer()
    {
        // On tmpfs where there is one: tests and benchmarks measure our code, not the disk's fsync.
        dataDir = Directory.Exists("/dev/shm")
            ? Directory.CreateDirectory(Path.Combine("/dev/shm", $"calicosharp-etcd-{Guid.NewGuid():N}")).FullName
            : Directory.CreateTempSubdirectory("calicosharp-etcd-").FullName;
        clientPort = FreePort();
        peerPort = FreePort();
        name = $"{NamePrefix}-{clientPort.ToString(CultureInfo.InvariantCulture)}";
        initialCluster = PeerSpec;
    }

    /// <summary>A member of <see cref="EtcdCluster"/>: not started; <see cref="JoinCluster"/> names its peers.</summary>
    internal static EtcdServer NewMember() => new();

    /// <summary>"name=peer URL", as etcd's --initial-cluster lists members.</summary>
    internal string PeerSpec => $"{name}=http://127.0.0.1:{peerPort.ToString(CultureInfo.InvariantCulture)}";

    internal void JoinCluster(string members) => initialCluster = members;

    public string Endpoint => $"http://127.0.0.1:{clientPort.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>The same etcd on a Unix socket, which every network namespace can reach.</summary>
    public string UnixEndpoint => $"unix://{dataDir}/etcd.sock:0";

    public static string Binary => File.Exists("/usr/bin/etcd") ? "/usr/bin/etcd" : "etcd";

    public static EtcdServer Start()
    {
        for (int attempt = 1; ; attempt++)
        {
            var s = new EtcdServer();
            try
            {
                s.Launch();
                return s;
            }
            catch (InvalidOperationException e) when (attempt < 4 && e.Message.Contains("address already in use", StringComparison.Ordinal))
            {
                // The free port was taken between choosing it and etcd binding it (tests run in parallel, and
                // their clients' own ports come from the same range): choose again.
                s.Dispose();
            }
            catch
            {
                s.Dispose();
                throw;
            }
        }
    }

    public void Launch()
    {
        Spawn();
        WaitReady(TimeSpan.FromSeconds(20));
    }

    /// <summary>Starts the process without waiting for it to serve (a cluster member serves once a quorum has met).</summary>
    internal void Spawn()
    {
        // A killed etcd leaves its unix socket behind; a new one cannot bind over it.
        File.Delete(Path.Combine(dataDir, "etcd.sock:0"));
        var psi = new ProcessStartInfo(Binary)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = dataDir, // etcd makes its unix socket relative to it
        };
        foreach (var a in new[]
        {
            "--name", name, "--data-dir", dataDir,
            "--listen-client-urls", $"{Endpoint},unix://etcd.sock:0", "--advertise-client-urls", Endpoint,
            "--listen-peer-urls", $"http://127.0.0.1:{peerPort}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peerPort}",
            "--initial-cluster", initialCluster,
            "--log-level", "error", "--logger", "zap",
        })
        {
            psi.ArgumentList.Add(a);
        }

        process = Process.Start(psi) ?? throw new InvalidOperationException("could not start etcd");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (log)
                {
                    log.Add(e.Data);
                }
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (PidFile is { } pidFile)
        {
            File.WriteAllText(pidFile, process.Id.ToString(CultureInfo.InvariantCulture) + "\n");
        }
    }

    /// <summary>Where this etcd's process id is kept while it runs: a file in the folder CALICOSHARP_TEST_PID_DIR names
    /// (make test sets it), so that an etcd a crashed test run left behind is stopped by its id alone; null without it.</summary>
    private string? PidFile => Environment.GetEnvironmentVariable("CALICOSHARP_TEST_PID_DIR") is { Length: > 0 } dir && Directory.Exists(dir)
        ? Path.Combine(dir, name + ".pid") : null;

    /// <summary>Waits until /health says true (for a member of a cluster: it has a leader).</summary>
    internal void WaitReady(TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(1) };
        while (sw.Elapsed < timeout)
        {
            if (process!.HasExited)
            {
                lock (log)
                {
                    throw new InvalidOperationException($"etcd exited with code {process.ExitCode}: {string.Join(" | ", log.TakeLast(5))}");
                }
            }

            try
            {
                var r = http.GetAsync(new Uri(Endpoint + "/health")).GetAwaiter().GetResult();
                if (r.IsSuccessStatusCode && r.Content.ReadAsStringAsync().GetAwaiter().GetResult().Contains("true", StringComparison.Ordinal))
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
            }
            catch (TaskCanceledException)
            {
            }

            Thread.Sleep(50);
        }

        throw new TimeoutException($"etcd at {Endpoint} was not healthy within {timeout}");
    }

    /// <summary>Kills etcd; the data stays for <see cref="Launch"/>.</summary>
    public void Stop()
    {
        if (process is { HasExited: false })
        {
            Thaw();
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }

        process?.Dispose();
        process = null;
        if (PidFile is { } pidFile)
        {
            File.Delete(pidFile);
        }
    }

    public void Freeze() => Signal("STOP");

    public void Thaw() => Signal("CONT");

    private void Signal(string sig)
    {
        if (process is { HasExited: false })
        {
            using var kill = Process.Start("kill", ["-" + sig, process.Id.ToString(CultureInfo.InvariantCulture)]);
            kill.WaitForExit();
        }
    }

    public void Dispose()
    {
        Stop();
        try
        {
            Directory.Delete(dataDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }
}
