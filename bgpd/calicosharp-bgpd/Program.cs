using System.Globalization;
using System.Runtime.InteropServices;
using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;

// calicosharp-bgpd: see --help. Flags win over environment variables, which win over the config file.
const string Usage = """
    usage: calicosharp-bgpd [options]
      --config <file>           local config file (JSON, Calico's field names); SIGHUP reloads it
      --node-name <name>        this node (env NODENAME; default: the host name)
      --ipv4-address <cidr>     this node's BGP IPv4 address, e.g. 10.0.0.2/24 (env IP)
      --ipv6-address <cidr>     this node's BGP IPv6 address (env IP6)
      --as <number>             this node's AS (env AS; default: the node record, the file, bgpconfigurations, 64512)
      --etcd-endpoints <list>   comma-separated etcd endpoints, http://host:port or unix:///path (env ETCD_ENDPOINTS)
      --no-kernel               do not program routes into the kernel (a route server)
      --api-socket <path>       control API (gRPC) Unix socket (default /run/calicosharp/bgpd.sock; "none" turns it off)
      --metrics-address <a:p>   serve Prometheus metrics at http://<a:p>/metrics (default: off)
      --secrets-dir <dir>       where a bgppeer's password secretKeyRef {name, key} is read: <dir>/<name>/<key>
                                (default /etc/calicosharp/secrets, e.g. a mounted Kubernetes secret)
      --state-dir <dir>         the node's state folder, shared with the CNI plugin (IPAM block hints, host
                                lock; default /var/lib/calicosharp, env CALICOSHARP_STATE_DIR)
      --peer-max-prefixes <n>   most routes kept from one peer from etcd (bgppeers, node mesh) before its session
                                is closed with Cease/maximum prefixes (default: the file's peerMaxPrefixes, else
                                100000; 0: no limit)
      --log-level <level>       debug, info (default), warning, error
    signals: SIGTERM  a planned restart (systemctl restart, an upgrade): sessions with graceful restart close
                      without a Cease, so peers keep this node's routes until it is back (RFC 4724)
             SIGINT   stop for good: every peer gets a Cease and withdraws this node's routes at once
             SIGHUP   read the config file again
    """;
string? config = null, node = Environment.GetEnvironmentVariable("NODENAME"), ip4 = Environment.GetEnvironmentVariable("IP"),
    ip6 = Environment.GetEnvironmentVariable("IP6"), asText = Environment.GetEnvironmentVariable("AS"),
    etcd = Environment.GetEnvironmentVariable(EtcdOptions.EnvironmentVariable);
bool kernel = true;
string? apiSocket = ControlApi.DefaultSocket, metrics = null, secrets = null, stateDir = Environment.GetEnvironmentVariable("CALICOSHARP_STATE_DIR");
BgpLogLevel level = BgpLogLevel.Info;
int? peerMaxPrefixes = null;
for (int i = 0; i < args.Length; i++)
{
    string? Next() => i + 1 < args.Length ? args[++i] : null;
    switch (args[i])
    {
        case "--config": config = Next(); break;
        case "--node-name": node = Next(); break;
        case "--ipv4-address": ip4 = Next(); break;
        case "--ipv6-address": ip6 = Next(); break;
        case "--as": asText = Next(); break;
        case "--etcd-endpoints": etcd = Next(); break;
        case "--no-kernel": kernel = false; break;
        case "--api-socket": apiSocket = Next(); break;
        case "--metrics-address": metrics = Next(); break;
        case "--secrets-dir": secrets = Next(); break;
        case "--state-dir": stateDir = Next(); break;
        case "--peer-max-prefixes":
            if (!int.TryParse(Next(), NumberStyles.None, CultureInfo.InvariantCulture, out int max))
            {
                Console.Error.WriteLine("calicosharp-bgpd: --peer-max-prefixes is a number of prefixes (0: no limit)");
                return 2;
            }
            peerMaxPrefixes = max;
            break;
        case "--log-level":
            if (!Enum.TryParse(Next(), true, out level))
            {
                Console.Error.WriteLine("calicosharp-bgpd: --log-level is debug, info, warning or error");
                return 2;
            }
            break;
        case "-h" or "--help":
            Console.WriteLine(Usage);
            return 0;
        default:
            Console.Error.WriteLine($"calicosharp-bgpd: unknown argument '{args[i]}'\n{Usage}");
            return 2;
    }
}
uint? asn = null;
if (!string.IsNullOrEmpty(asText))
{
    if (!uint.TryParse(asText, NumberStyles.None, CultureInfo.InvariantCulture, out uint a) || a == 0)
    {
        Console.Error.WriteLine($"calicosharp-bgpd: AS '{asText}' is not a number from 1 to 4294967295");
        return 2;
    }
    asn = a;
}
var log = new StderrLog(level);
Daemon daemon;
ControlApi? api = null;
try
{
    daemon = new Daemon(new DaemonOptions
    {
        ConfigFile = config,
        NodeName = node,
        Ipv4Address = string.IsNullOrEmpty(ip4) ? null : ip4,
        Ipv6Address = string.IsNullOrEmpty(ip6) ? null : ip6,
        AsNumber = asn,
        EtcdEndpoints = string.IsNullOrEmpty(etcd) ? [] : EtcdOptions.ParseEndpoints(etcd),
        Kernel = kernel,
        PeerMaxPrefixes = peerMaxPrefixes,
        SecretsDirectory = secrets ?? DaemonOptions.DefaultSecretsDirectory,
        StateDirectory = string.IsNullOrEmpty(stateDir) ? IpamClientOptions.DefaultStateDirectory : stateDir,
    }, log.Write);
    await daemon.StartAsync().ConfigureAwait(false);
    if (apiSocket is not "none" and not "" || metrics is not null)
    {
        api = await ControlApi.StartAsync(daemon, apiSocket is "none" or "" ? null : apiSocket, metrics, log.Write).ConfigureAwait(false);
        log.Write(BgpLogLevel.Info, $"control API on {(apiSocket is "none" or "" ? "(off)" : apiSocket)}{(metrics is null ? "" : $", metrics on http://{metrics}/metrics")}");
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
