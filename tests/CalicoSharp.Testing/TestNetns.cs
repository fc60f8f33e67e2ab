using System.Diagnostics;
using System.Globalization;

namespace CalicoSharp.Testing;

/// <summary>A named network namespace (ip netns add) that is deleted on Dispose, pass or fail. Names
/// carry a random lab prefix so that tests can run side by side.</summary>
public sealed class TestNetns : IDisposable
{
    private TestNetns(string name) => Name = name;

    public string Name { get; }

    public string Path => "/var/run/netns/" + Name;

    public static string NewLabPrefix() => "cst" + Random.Shared.Next(0x10000).ToString("x4", CultureInfo.InvariantCulture);

    public static TestNetns Create(string name)
    {
        Ip("netns", "add", name);
        var ns = new TestNetns(name);
        try
        {
            Ip("-n", name, "link", "set", "lo", "up");
        }
        catch
        {
            // Not handed out, so nobody else would delete it.
            ns.Dispose();
            throw;
        }
        return ns;
    }

    public void Dispose()
    {
        try
        {
            Ip("netns", "del", Name);
        }
        catch (InvalidOperationException)
        {
            // Already gone (a test deleted it on purpose).
        }
    }

    /// <summary>Runs ip(8) and returns its output; throws with its error when it fails.</summary>
    public static string Ip(params string[] args)
    {
        var psi = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd();
        var error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode == 0 ? output : throw new InvalidOperationException($"ip {string.Join(' ', args)}: {error.Trim()}");
    }
}
