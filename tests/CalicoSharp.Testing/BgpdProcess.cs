using System.Diagnostics;

namespace CalicoSharp.Testing;

/// <summary>A calicosharp-bgpd process for tests and benchmarks: started with the given command line, its
/// output drained, ready once its control socket exists; killed (with its process tree) on dispose.</summary>
public sealed class BgpdProcess : IDisposable
{
    private readonly Process process;

    private BgpdProcess(Process process) => this.process = process;

    /// <summary>Starts <paramref name="command"/> (e.g. "ip netns exec ns dotnet calicosharp-bgpd.dll" or the
    /// published binary) with <paramref name="args"/> and waits up to 30 s for <paramref name="socket"/>.</summary>
    public static BgpdProcess Start(IEnumerable<string> command, IEnumerable<string> args, string socket)
    {
        var all = command.Concat(args).ToList();
        var psi = new ProcessStartInfo(all[0]) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in all.Skip(1))
        {
            psi.ArgumentList.Add(a);
        }

        var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {all[0]}");
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        var b = new BgpdProcess(p);
        var sw = Stopwatch.StartNew();
        while (!File.Exists(socket))
        {
            if (p.HasExited || sw.Elapsed > TimeSpan.FromSeconds(30))
            {
                b.Dispose();
                throw new InvalidOperationException($"bgpd did not open {socket}");
            }

            Thread.Sleep(50);
        }

        return b;
    }

    public void Dispose()
    {
        try
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }

        process.Dispose();
    }
}
