using System.Globalization;
using CalicoSharp.Bgp;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd;

/// <summary>
/// calicosharp-bgpd's flags and environment, parsed apart from the process (Program stays thin and this is tested
/// without one). Flags win over environment variables, which win over the config file.
/// </summary>
public sealed record BgpdCommandLine
{
    public const string Usage = """
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

    /// <summary>What the daemon is started with (null with <see cref="Help"/> or <see cref="Error"/>).</summary>
    public DaemonOptions? Options { get; init; }

    /// <summary>The control API socket; null: off.</summary>
    public string? ApiSocket { get; init; }

    public string? MetricsAddress { get; init; }

    public BgpLogLevel LogLevel { get; init; } = BgpLogLevel.Info;

    /// <summary>--help: print <see cref="Usage"/> and exit 0.</summary>
    public bool Help { get; init; }

    /// <summary>A bad command line: say this (and the usage) and exit 2.</summary>
    public string? Error { get; init; }

    /// <summary>Parses <paramref name="args"/>, reading NODENAME, IP, IP6, AS, ETCD_ENDPOINTS and CALICOSHARP_STATE_DIR
    /// through <paramref name="environment"/>. A malformed etcd endpoint throws (as the datastore would at start).</summary>
    public static BgpdCommandLine Parse(IReadOnlyList<string> args, Func<string, string?> environment)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(environment);
        string? config = null, node = environment("NODENAME"), ip4 = environment("IP"), ip6 = environment("IP6"), asText = environment("AS"),
            etcd = environment(EtcdOptions.EnvironmentVariable), stateDir = environment("CALICOSHARP_STATE_DIR");
        bool kernel = true;
        string? apiSocket = ControlApi.DefaultSocket, metrics = null, secrets = null;
        BgpLogLevel level = BgpLogLevel.Info;
        int? peerMaxPrefixes = null;
        for (int i = 0; i < args.Count; i++)
        {
            string flag = args[i];
            string? Next() => i + 1 < args.Count ? args[++i] : null;
            string? missing = null;
            string? Value()
            {
                string? v = Next();
                missing = v is null ? $"{flag} needs a value" : null;
                return v;
            }
            switch (flag)
            {
                case "--config": config = Value(); break;
                case "--node-name": node = Value(); break;
                case "--ipv4-address": ip4 = Value(); break;
                case "--ipv6-address": ip6 = Value(); break;
                case "--as": asText = Value(); break;
                case "--etcd-endpoints": etcd = Value(); break;
                case "--no-kernel": kernel = false; break;
                case "--api-socket": apiSocket = Value(); break;
                case "--metrics-address": metrics = Value(); break;
                case "--secrets-dir": secrets = Value(); break;
                case "--state-dir": stateDir = Value(); break;
                case "--peer-max-prefixes":
                    if (!int.TryParse(Next(), NumberStyles.None, CultureInfo.InvariantCulture, out int max))
                    {
                        return new BgpdCommandLine { Error = "--peer-max-prefixes is a number of prefixes (0: no limit)" };
                    }
                    peerMaxPrefixes = max;
                    break;
                case "--log-level":
                    if (!Enum.TryParse(Next(), true, out level) || !Enum.IsDefined(level))
                    {
                        return new BgpdCommandLine { Error = "--log-level is debug, info, warning or error" };
                    }
                    break;
                case "-h" or "--help":
                    return new BgpdCommandLine { Help = true };
                default:
                    return new BgpdCommandLine { Error = $"unknown argument '{flag}'" };
            }
            if (missing is not null)
            {
                return new BgpdCommandLine { Error = missing };
            }
        }
        uint? asn = null;
        if (!string.IsNullOrEmpty(asText))
        {
            if (!uint.TryParse(asText, NumberStyles.None, CultureInfo.InvariantCulture, out uint a) || a == 0)
            {
                return new BgpdCommandLine { Error = $"AS '{asText}' is not a number from 1 to 4294967295" };
            }
            asn = a;
        }
        return new BgpdCommandLine
        {
            Options = new DaemonOptions
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
            },
            ApiSocket = apiSocket is "none" or "" ? null : apiSocket,
            MetricsAddress = metrics,
            LogLevel = level,
        };
    }
}
