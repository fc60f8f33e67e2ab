using System.Runtime.InteropServices;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;

// calicosharp-bgpd: see --help (BgpdCommandLine). Flags win over environment variables, which win over the config file.
BgpdCommandLine cl;
try
{
    cl = BgpdCommandLine.Parse(args, Environment.GetEnvironmentVariable);
}
catch (Exception e) when (e is IpamException or ArgumentException)
{
    Console.Error.WriteLine($"calicosharp-bgpd: {e.Message}");
    return 1;
}
if (cl.Help)
{
    Console.WriteLine(BgpdCommandLine.Usage);
    return 0;
}
if (cl.Error is not null || cl.Options is null)
{
    Console.Error.WriteLine($"calicosharp-bgpd: {cl.Error}\n{BgpdCommandLine.Usage}");
    return 2;
}
var log = new StderrLog(cl.LogLevel);
Daemon daemon;
ControlApi? api = null;
try
{
    daemon = new Daemon(cl.Options, log.Write);
    await daemon.StartAsync().ConfigureAwait(false);
    if (cl.ApiSocket is not null || cl.MetricsAddress is not null)
    {
        api = await ControlApi.StartAsync(daemon, cl.ApiSocket, cl.MetricsAddress, log.Write).ConfigureAwait(false);
        log.Write(BgpLogLevel.Info, $"control API on {cl.ApiSocket ?? "(off)"}{(cl.MetricsAddress is null ? "" : $", metrics on http://{cl.MetricsAddress}/metrics")}");
    }
}
catch (Exception e) when (e is ConfigException or System.Net.Sockets.SocketException or IpamException or IOException or Grpc.Core.RpcException or ArgumentException)
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
using var hup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c =>
{
    c.Cancel = true;
    _ = Task.Run(async () =>
    {
        try
        {
            await daemon.ReloadAsync().ConfigureAwait(false);
        }
        catch (ConfigException e)
        {
            log.Write(BgpLogLevel.Error, $"reload failed, keeping the running configuration: {e.Message}");
        }
    });
});
string why = await stop.Task.ConfigureAwait(false);
bool restarting = why == "SIGTERM";
log.Write(BgpLogLevel.Info, restarting
    ? $"{why}: planned restart: sessions with graceful restart close without a Cease, their peers keep our routes until we are back; the others get a Cease"
    : $"{why}: stopping for good: closing every session with Cease (administrative shutdown); peers withdraw our routes now");
await daemon.StopAsync($"calicosharp-bgpd stopping ({why})", restarting).ConfigureAwait(false);
if (api is not null)
{
    await api.DisposeAsync().ConfigureAwait(false);
}
await daemon.DisposeAsync().ConfigureAwait(false);
return 0;
