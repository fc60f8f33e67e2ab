using System.CommandLine;
using System.Globalization;
using CalicoSharp.Proto;
using Grpc.Core;
using CalicoSharp.Rpc;

namespace CalicoSharp.Ctl;

/// <summary>calicosharpctl node status / bgp routes: what a node's bgpd reports through its control API.</summary>
internal static class BgpCli
{
    public const string DefaultSocket = Proto.ControlSocket.Default;

    public static readonly Option<string> Socket = new("--bgpd-socket")
    {
        Description = $"bgpd's control API socket (default {DefaultSocket})",
        DefaultValueFactory = _ => DefaultSocket,
        Recursive = true,
    };

    /// <summary>A client for the bgpd control API on a Unix socket.</summary>
    public static GrpcClient Connect(string socketPath)
    {
        if (!File.Exists(socketPath))
        {
            throw new IOException($"bgpd's control socket {socketPath} does not exist: is calicosharp-bgpd running on this node (or give --bgpd-socket)?");
        }

        return new GrpcClient(new GrpcEndpoint("unix", "localhost", 0, socketPath), new GrpcClientOptions { MaxReceiveMessageSize = 1 << 30 });
    }

    internal static async Task<T> CallAsync<T>(string socket, Func<Proto.Bgpd.BgpdClient, CallOptions, Task<T>> call, CancellationToken ct, int seconds = 5)
    {
        await using GrpcClient client = Connect(socket);
        try
        {
            return await call(new Proto.Bgpd.BgpdClient(client.CreateCallInvoker()), new CallOptions(deadline: DateTime.UtcNow.AddSeconds(seconds), cancellationToken: ct)).ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            throw new IOException($"bgpd at {socket}: {e.Status.Detail}", e);
        }
    }

    public static Command NodeCommands(TextWriter o, Func<ParseResult, bool> json)
    {
        var node = new Command("node", "this node's BGP daemon");
        var status = new Command("status", "the node's BGP sessions (like calicoctl node status)");
        status.SetAction(async (p, ct) =>
        {
            string socket = p.GetValue(Socket)!;
            NodeStatus s = await CallAsync(socket, (c, opt) => c.GetStatusAsync(new StatusRequest(), opt).ResponseAsync, ct).ConfigureAwait(false);
            PeersReply peers = await CallAsync(socket, (c, opt) => c.ListPeersAsync(new PeersRequest(), opt).ResponseAsync, ct).ConfigureAwait(false);
            if (json(p))
            {
                Output.Json(o, w =>
                {
                    w.WriteStartObject();
                    w.WriteString("node", s.NodeName);
                    w.WriteString("routerId", s.RouterId);
                    w.WriteNumber("asNumber", s.AsNumber);
                    w.WriteString("started", DateTimeOffset.FromUnixTimeMilliseconds(s.StartedUnixMs).ToString("o", CultureInfo.InvariantCulture));
                    w.WriteNumber("routes", s.Routes);
                    w.WriteStringArray("ownBlocks", s.OwnBlocks);
                    w.WriteString("etcdError", s.EtcdError);
                    w.WriteNumber("kernelOperations", s.KernelOperations);
                    w.WriteNumber("kernelErrors", s.KernelErrors);
                    w.WriteObjectArray("skipped", s.Skipped, static (w, r) =>
                    {
                        w.WriteString("key", r.Key);
                        w.WriteString("reason", r.Reason);
                    });
                    w.WriteNumber("applyErrors", s.ApplyErrors);
                    if (s.NatOutgoing is { } nat)
                    {
                        w.WriteStartObject("natOutgoing");
                        w.WriteString("table", nat.Table);
                        w.WriteBoolean("programmed", nat.Programmed);
                        w.WriteStringArray("masqueradePools", nat.MasqueradePools);
                        w.WriteString("error", nat.Error);
                        w.WriteNumber("updates", nat.Updates);
                        w.WriteNumber("errors", nat.Errors);
                        w.WriteNumber("lastProgramMs", nat.LastProgramMs);
                        w.WriteEndObject();
                    }
                    w.WriteObjectArray("serviceRanges", s.ServiceRanges, static (w, r) =>
                    {
                        w.WriteString("cidr", r.Cidr);
                        w.WriteString("kind", r.Kind);
                    });
                    w.WriteNumber("serviceRoutesRefused", s.ServiceRoutesRefused);
                    w.WriteObjectArray("peers", peers.Peers, static (w, x) =>
                    {
                        w.WriteString("name", x.Name);
                        w.WriteString("address", x.Address);
                        w.WriteNumber("asNumber", x.AsNumber);
                        w.WriteString("type", x.Type);
                        w.WriteString("state", x.State);
                        w.WriteString("since", DateTimeOffset.FromUnixTimeMilliseconds(x.StateSinceUnixMs).ToString("o", CultureInfo.InvariantCulture));
                        w.WriteString("lastError", x.LastError);
                        w.WriteNumber("prefixesReceived", x.PrefixesReceived);
                        w.WriteNumber("prefixesAccepted", x.PrefixesAccepted);
                        w.WriteNumber("prefixesRefused", x.PrefixesRefused);
                        w.WriteNumber("prefixesAdvertised", x.PrefixesAdvertised);
                        w.WriteString("routerId", x.RouterId);
                        if (x.Bfd is { } b)
                        {
                            w.WriteStartObject("bfd");
                            w.WriteString("state", b.State);
                            w.WriteString("remoteState", b.RemoteState);
                            w.WriteString("diagnostic", b.Diagnostic);
                            w.WriteString("since", DateTimeOffset.FromUnixTimeMilliseconds(b.StateSinceUnixMs).ToString("o", CultureInfo.InvariantCulture));
                            w.WriteNumber("minTxMs", b.MinTxUs / 1000.0);
                            w.WriteNumber("minRxMs", b.MinRxUs / 1000.0);
                            w.WriteNumber("idleTxMs", b.IdleTxUs / 1000.0);
                            w.WriteNumber("multiplier", b.Multiplier);
                            w.WriteNumber("txIntervalMs", b.TxIntervalUs / 1000.0);
                            w.WriteNumber("detectionTimeMs", b.DetectionTimeUs / 1000.0);
                            w.WriteNumber("remoteMultiplier", b.RemoteMultiplier);
                            w.WriteNumber("upTransitions", b.UpTransitions);
                            w.WriteNumber("downTransitions", b.DownTransitions);
                            w.WriteNumber("packetsSent", b.PacketsSent);
                            w.WriteNumber("packetsReceived", b.PacketsReceived);
                            w.WriteString("source", b.Source);
                            w.WriteEndObject();
                        }
                    });
                    w.WriteEndObject();
                });
                return Cli.ExitOk;
            }
            TimeSpan up = DateTimeOffset.UtcNow - DateTimeOffset.FromUnixTimeMilliseconds(s.StartedUnixMs);
            o.WriteLine($"calicosharp-bgpd on {s.NodeName} is running (up {Duration(up)}): AS {s.AsNumber}, router id {s.RouterId}, {s.Routes} prefixes in the RIB");
            o.WriteLine($"own blocks: {(s.OwnBlocks.Count == 0 ? "none" : string.Join(", ", s.OwnBlocks))}");
            if (s.EtcdError.Length > 0)
            {
                o.WriteLine($"etcd: {s.EtcdError}");
            }
            foreach (SkippedResource r in s.Skipped)
            {
                o.WriteLine($"skipped: {r.Key}: {r.Reason}");
            }
            if (s.NatOutgoing is { } nat)
            {
                o.WriteLine(nat.Error.Length > 0 ? $"natOutgoing: ERROR {nat.Error}"
                    : nat.Programmed ? $"natOutgoing: masquerading {string.Join(", ", nat.MasqueradePools)} toward addresses outside every pool (nftables table {nat.Table}, last update {nat.LastProgramMs.ToString("0.#", CultureInfo.InvariantCulture)} ms)"
                    : "natOutgoing: no pool has it");
            }
            if (s.ServiceRanges.Count > 0 || s.ServiceRoutesRefused > 0)
            {
                o.WriteLine($"service ranges advertised: {(s.ServiceRanges.Count == 0 ? "none" : string.Join(", ", s.ServiceRanges.Select(r => $"{r.Cidr} ({r.Kind})")))}; {s.ServiceRoutesRefused} routes from peers inside them refused");
            }
            o.WriteLine();
            Output.Table(o, ["PEER ADDRESS", "PEER TYPE", "AS", "STATE", "SINCE", "PREFIXES (RX/REF/ACC/ADV)", "INFO"],
                peers.Peers.Select(x => (IReadOnlyList<string>)
                [
                    x.Address, x.Type, x.AsNumber.ToString(CultureInfo.InvariantCulture), x.State,
                    DateTimeOffset.FromUnixTimeMilliseconds(x.StateSinceUnixMs).ToLocalTime().ToString("HH:mm:ss", CultureInfo.InvariantCulture),
                    $"{x.PrefixesReceived}/{x.PrefixesRefused}/{x.PrefixesAccepted}/{x.PrefixesAdvertised}",
                    x.State == "Established" ? (x.RoutesStale ? "restarting (stale routes kept)" : "") : x.LastError,
                ]));
            if (peers.Peers.Any(x => x.Bfd is not null))
            {
                o.WriteLine();
                static string Ms(uint us) => (us / 1000.0).ToString("0.###", CultureInfo.InvariantCulture) + " ms";
                Output.Table(o, ["BFD PEER", "STATE", "REMOTE", "SINCE", "TX/RX/IDLE × MULT (CONFIGURED)", "TX INTERVAL", "DETECTION", "UP/DOWN", "DIAGNOSTIC"],
                    peers.Peers.Where(x => x.Bfd is not null).Select(x => (IReadOnlyList<string>)
                    [
                        x.Address, x.Bfd.State, x.Bfd.RemoteState,
                        DateTimeOffset.FromUnixTimeMilliseconds(x.Bfd.StateSinceUnixMs).ToLocalTime().ToString("HH:mm:ss", CultureInfo.InvariantCulture),
                        $"{Ms(x.Bfd.MinTxUs)}/{Ms(x.Bfd.MinRxUs)}/{Ms(x.Bfd.IdleTxUs)} × {x.Bfd.Multiplier}",
                        Ms(x.Bfd.TxIntervalUs), x.Bfd.DetectionTimeUs == 0 ? "-" : Ms(x.Bfd.DetectionTimeUs),
                        $"{x.Bfd.UpTransitions}/{x.Bfd.DownTransitions}", x.Bfd.Diagnostic == "None" ? "" : x.Bfd.Diagnostic,
                    ]));
            }
            return Cli.ExitOk;
        });
        node.Subcommands.Add(status);
        return node;
    }

    public static Command BgpCommands(TextWriter o, Func<ParseResult, bool> json)
    {
        var bgp = new Command("bgp", "the node's BGP routes");
        var prefix = new Option<string?>("--prefix") { Description = "one prefix, or an address (longest match)" };
        var routes = new Command("routes", "every path of every prefix and why the best won") { prefix };
        routes.SetAction(async (p, ct) =>
        {
            RoutesReply r = await CallAsync(p.GetValue(Socket)!, (c, opt) => c.ListRoutesAsync(new RoutesRequest { Prefix = p.GetValue(prefix) ?? "" }, opt).ResponseAsync, ct).ConfigureAwait(false);
            if (json(p))
            {
                Output.JsonList(o, "routes", r.Routes, (w, x) =>
                {
                    w.WriteString("prefix", x.Prefix);
                    w.WriteString("reason", x.Reason);
                    w.WriteString("kernel", x.Kernel);
                    w.WriteObjectArray("paths", x.Paths, static (w, path) =>
                    {
                        w.WriteString("peer", path.Peer);
                        w.WriteString("peerAddress", path.PeerAddress);
                        w.WriteString("asPath", path.AsPath);
                        w.WriteString("nextHop", path.NextHop);
                        w.WriteNumber("localPref", path.LocalPref);
                        if (path.HasMed)
                        {
                            w.WriteNumber("med", path.Med);
                        }
                        w.WriteString("origin", path.Origin);
                        w.WriteBoolean("best", path.Best);
                        w.WriteBoolean("multipath", path.Multipath);
                        w.WriteBoolean("stale", path.Stale);
                    });
                });
                return Cli.ExitOk;
            }
            if (r.Routes.Count == 0)
            {
                o.WriteLine(p.GetValue(prefix) is { } f ? $"no route for {f}" : "no routes");
                return p.GetValue(prefix) is null ? Cli.ExitOk : Cli.ExitFailed;
            }
            Output.Table(o, ["PREFIX", "", "PEER", "NEXT HOP", "AS PATH", "LOCAL PREF", "KERNEL", "WHY BEST"],
                r.Routes.SelectMany(x => x.Paths.Select((path, i) => (IReadOnlyList<string>)
                [
                    i == 0 ? x.Prefix : "",
                    path.Best ? "*" : path.Multipath ? "=" : "",
                    path.Peer + (path.Stale ? " (stale)" : ""),
                    path.NextHop.Length > 0 ? path.NextHop : "-",
                    path.AsPath.Length > 0 ? path.AsPath : "(local)",
                    path.LocalPref.ToString(CultureInfo.InvariantCulture),
                    i == 0 ? x.Kernel : "",
                    i == 0 ? x.Reason : "",
                ])));
            o.WriteLine("* best, = equal-cost (installed too), x rejected by import policy");
            return Cli.ExitOk;
        });
        bgp.Subcommands.Add(routes);
        return bgp;
    }

    private static string Duration(TimeSpan t) => t.TotalDays >= 1 ? $"{(int)t.TotalDays}d{t.Hours}h" : t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes}m" : t.TotalMinutes >= 1 ? $"{(int)t.TotalMinutes}m{t.Seconds}s" : $"{t.Seconds}s";
}
