using System.Runtime.InteropServices;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;

// calicosharp-bgpd --config <file> [--log-level debug|info|warning|error]
string? configPath = null;
BgpLogLevel level = BgpLogLevel.Info;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--config" when i + 1 < args.Length:
            configPath = args[++i];
            break;
        case "--log-level" when i + 1 < args.Length:
            if (!Enum.TryParse(args[++i], true, out level))
            {
                Console.Error.WriteLine($"calicosharp-bgpd: unknown log level '{args[i]}' (debug, info, warning, error)");
                return 2;
            }
            break;
        case "-h" or "--help":
            Console.WriteLine("usage: calicosharp-bgpd --config <file.json> [--log-level debug|info|warning|error]");
            return 0;
        default:
            Console.Error.WriteLine($"calicosharp-bgpd: unknown argument '{args[i]}' (see --help)");
            return 2;
    }
}
if (configPath is null)
{
    Console.Error.WriteLine("calicosharp-bgpd: --config <file> is required");
    return 2;
}
var log = new StderrLog(level);
Daemon daemon;
try
{
    daemon = new Daemon(DaemonConfig.Load(configPath), log.Write);
    await daemon.StartAsync().ConfigureAwait(false);
}
catch (Exception e) when (e is ConfigException or System.Net.Sockets.SocketException)
{
    Console.Error.WriteLine($"calicosharp-bgpd: {e.Message}");
    return 1;
}
var stop = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
{
    c.Cancel = true;
    stop.TrySetResult("SIGTERM");
});
using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c =>
{
    c.Cancel = true;
    stop.TrySetResult("SIGINT");
});
string why = await stop.Task.ConfigureAwait(false);
log.Write(BgpLogLevel.Info, $"{why}: closing every session with Cease (administrative shutdown)");
await daemon.StopAsync($"calicosharp-bgpd stopping ({why})").ConfigureAwait(false);
await daemon.DisposeAsync().ConfigureAwait(false);
return 0;
