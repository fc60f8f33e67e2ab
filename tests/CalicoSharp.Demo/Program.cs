using System.Runtime.InteropServices;
using CalicoSharp.Testing;

// make demo: the lab of DESIGN.md, shown and checked, then removed. Usage: CalicoSharp.Demo [--bin DIR]
// (DIR: the published NativeAOT executables; without it the built dlls run through 'dotnet').
// Exit 0 when every check passed. Ctrl-C or SIGTERM stops it and still removes everything.
string? bin = null;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--bin" && i + 1 < args.Length)
    {
        bin = args[++i];
    }
    else
    {
        Console.Error.WriteLine($"demo: unknown argument '{args[i]}' (usage: CalicoSharp.Demo [--bin DIR])");
        return 2;
    }
}
if (Environment.UserName != "root")
{
    Console.Error.WriteLine("demo: run as root (it makes network namespaces and veth pairs)");
    return 1;
}
using var cts = new CancellationTokenSource();
void Stop(PosixSignalContext c)
{
    c.Cancel = true;
    cts.Cancel();
}
using PosixSignalRegistration sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
using PosixSignalRegistration sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
using PosixSignalRegistration sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, Stop);

DemoTools tools = bin is null ? DemoTools.Built() : DemoTools.Published(Path.GetFullPath(bin));
var demo = new LabDemo(tools, Console.Out)
{
    // Only a terminal is asked to press Enter; piped or CI input never waits.
    BeforeCleanup = Console.IsInputRedirected || Environment.GetEnvironmentVariable("DEMO_PAUSE") == "0" ? null : async ct =>
    {
        Console.WriteLine("\nThe lab is still up: look around (ip netns, ip -n <ns> route, birdc -s <lab>/bird.ctl). Press Enter to clean up.");
        await Task.WhenAny(Task.Run(Console.ReadLine, CancellationToken.None), Task.Delay(Timeout.Infinite, ct)).ConfigureAwait(false);
    },
};
return await demo.RunAsync(cts.Token).ConfigureAwait(false) ? 0 : 1;
