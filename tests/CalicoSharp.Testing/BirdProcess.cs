using System.Diagnostics;

namespace CalicoSharp.Testing;

/// <summary>
/// BIRD 2 (Debian bird2) in a network namespace, with its own config, control socket and log in a temp
/// folder; killed and the folder removed on Dispose, pass or fail.
/// </summary>
public sealed class BirdProcess : IDisposable
{
    private Process? _process;

    private BirdProcess(string netns, string config)
    {
        Netns = netns;
        Directory = System.IO.Directory.CreateTempSubdirectory("calicosharp-bird-").FullName;
        ConfigPath = System.IO.Path.Combine(Directory, "bird.conf");
        File.WriteAllText(ConfigPath, config.Replace("{dir}", Directory, StringComparison.Ordinal));
    }

    public string Netns { get; }

    public string Directory { get; }

    public string ConfigPath { get; }

    public string Socket => System.IO.Path.Combine(Directory, "bird.ctl");

    public int Pid => _process?.Id ?? 0;

    /// <summary>Starts BIRD; <c>{dir}</c> in the config is replaced by its folder (for the log file).</summary>
    public static BirdProcess Start(string netns, string config)
    {
        var b = new BirdProcess(netns, config);
        try
        {
            b.Launch();
        }
        catch
        {
            b.Dispose();
            throw;
        }
        return b;
    }

    public void Launch()
    {
        File.Delete(Socket);
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { "netns", "exec", Netns, "bird", "-f", "-c", ConfigPath, "-s", Socket, "-P", System.IO.Path.Combine(Directory, "bird.pid") })
        {
            psi.ArgumentList.Add(a);
        }
        _process = Process.Start(psi)!;
        var sw = Stopwatch.StartNew();
        while (!File.Exists(Socket) || !Birdc("show status").Contains("Daemon is up", StringComparison.Ordinal))
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"bird exited {_process.ExitCode}: {_process.StandardError.ReadToEnd()}");
            }
            if (sw.Elapsed > TimeSpan.FromSeconds(10))
            {
                throw new TimeoutException("bird did not open its control socket in 10 s");
            }
            Thread.Sleep(20);
        }
    }

    /// <summary>Runs a birdc command and returns its output.</summary>
    public string Birdc(string command)
    {
        var psi = new ProcessStartInfo("birdc") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-s");
        psi.ArgumentList.Add(Socket);
        foreach (string part in command.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            psi.ArgumentList.Add(part);
        }
        using Process p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return output;
    }

    /// <summary>Writes a new config and has the running BIRD load it (birdc configure); throws when BIRD refuses it.</summary>
    public void Reconfigure(string config)
    {
        File.WriteAllText(ConfigPath, config.Replace("{dir}", Directory, StringComparison.Ordinal));
        string answer = Birdc("configure");
        if (!answer.Contains("Reconfigured", StringComparison.Ordinal) && !answer.Contains("Reconfiguration in progress", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"bird refused the new config: {answer}");
        }
    }

    /// <summary>SIGSTOP / SIGCONT: a peer that stops answering without closing anything.</summary>
    public void Freeze() => Signal("STOP");

    public void Thaw() => Signal("CONT");

    /// <summary>SIGTERM: BIRD closes its sessions with a Cease and exits.</summary>
    public void Stop()
    {
        if (_process is { HasExited: false } p)
        {
            Signal("TERM");
            if (!p.WaitForExit(10_000))
            {
                p.Kill(true);
            }
        }
    }

    private void Signal(string signal)
    {
        // The ip netns exec wrapper execs bird, so the pid is bird's.
        using Process? k = Process.Start("kill", ["-" + signal, Pid.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        k?.WaitForExit();
    }

    public string Log => File.Exists(System.IO.Path.Combine(Directory, "bird.log")) ? File.ReadAllText(System.IO.Path.Combine(Directory, "bird.log")) : "";

    public void Dispose()
    {
        if (_process is { HasExited: false } p)
        {
            Signal("CONT");
            p.Kill(true);
            p.WaitForExit(5000);
        }
        _process?.Dispose();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
