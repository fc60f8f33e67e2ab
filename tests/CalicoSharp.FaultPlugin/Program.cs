using System.Runtime.InteropServices;
using CalicoSharp.Cni;

// calicosharp-faults: the calicosharp plugin that kills itself with SIGKILL right after the step named by
// CALICOSHARP_TEST_KILL_AT (an ADD step such as "veth", or an IPAM write such as "affinity-pending"): a crash,
// where nothing of the plugin's own clean-up runs. Without the variable it is the plugin, unchanged.
string? killAt = Environment.GetEnvironmentVariable(FaultPoints.Variable);
var options = new PluginOptions
{
    AfterStep = step =>
    {
        if (step == killAt)
        {
            FaultPoints.KillSelf();
        }
    },
};
Plugin.EndProcess(await Plugin.MainAsync(PluginKind.Network, options).ConfigureAwait(false));

internal static partial class FaultPoints
{
    public const string Variable = "CALICOSHARP_TEST_KILL_AT";

    public static void KillSelf()
    {
        _ = Kill(GetPid(), 9);
        throw new InvalidOperationException("SIGKILL did not end the process");
    }

    [LibraryImport("libc.so.6", EntryPoint = "getpid")]
    private static partial int GetPid();

    [LibraryImport("libc.so.6", EntryPoint = "kill")]
    private static partial int Kill(int pid, int signal);
}
