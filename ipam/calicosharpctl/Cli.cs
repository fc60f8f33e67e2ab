using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Text.Json;
using CalicoSharp.Ipam;

namespace CalicoSharp.Ctl;

/// <summary>calicosharpctl: the operator's tool for pools and IPAM (and, with bgpd, node status).</summary>
internal static class Cli
{
    /// <summary>Exit codes: 0 done, 1 failed or problems found, 2 bad arguments, 3 etcd unavailable.</summary>
    public const int ExitOk = 0;
    public const int ExitFailed = 1;
    public const int ExitUsage = 2;
    public const int ExitUnavailable = 3;

    private static readonly Option<string?> Endpoints = new("--etcd-endpoints")
    {
        Description = "etcd endpoints, comma-separated (default: $ETCD_ENDPOINTS, else http://127.0.0.1:2379)",
        Recursive = true,
    };

    private static readonly Option<double> TimeoutSeconds = new("--timeout")
    {
        Description = "seconds to wait for etcd before failing",
        DefaultValueFactory = _ => 5,
        Recursive = true,
    };

    private static readonly Option<string> OutputFormat = new("--output", "-o")
    {
        Description = "output: table or json (for 'ipam check' also a file to write the JSON report to)",
        DefaultValueFactory = _ => "table",
        Recursive = true,
    };

    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var root = new RootCommand("calicosharpctl: manage CalicoSharp IP pools and IPAM in etcd, and look at a node's bgpd");
        root.Options.Add(Endpoints);
        root.Options.Add(TimeoutSeconds);
        root.Options.Add(OutputFormat);
        root.Subcommands.Add(PoolCommands(stdout));
        root.Subcommands.Add(IpamCommands(stdout));
        root.Options.Add(BgpCli.Socket);
        root.Subcommands.Add(BgpCli.NodeCommands(stdout, Json));
        root.Subcommands.Add(BgpCli.BgpCommands(stdout, Json));
        root.Subcommands.Add(Tracer.Command(stdout, Json, Connect));
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors)
            {
                await stderr.WriteLineAsync($"error: {e.Message}").ConfigureAwait(false);
            }

            await stderr.WriteLineAsync("run 'calicosharpctl --help' for usage").ConfigureAwait(false);
            return ExitUsage;
        }

        try
        {
            return await parse.InvokeAsync(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false }).ConfigureAwait(false);
        }
        catch (IpamException e)
        {
            await stderr.WriteLineAsync($"error: {e.Message}").ConfigureAwait(false);
            return e.Kind switch
            {
                IpamErrorKind.InvalidArgument => ExitUsage,
                IpamErrorKind.DatastoreUnavailable => ExitUnavailable,
                _ => ExitFailed,
            };
        }
        catch (UsageException e)
        {
            await stderr.WriteLineAsync($"error: {e.Message}").ConfigureAwait(false);
            return ExitUsage;
        }
        catch (IOException e)
        {
            await stderr.WriteLineAsync($"error: {e.Message}").ConfigureAwait(false);
            return ExitFailed;
        }
    }

    private static IpamClient Connect(ParseResult p)
    {
        var text = p.GetValue(Endpoints) ?? Environment.GetEnvironmentVariable(EtcdOptions.EnvironmentVariable) ?? "http://127.0.0.1:2379";
        double secs = p.GetValue(TimeoutSeconds);
        if (secs <= 0 || double.IsNaN(secs) || secs > 3600)
        {
            throw new UsageException($"--timeout must be between 0 and 3600 seconds, not {secs}");
        }

        var timeout = TimeSpan.FromSeconds(secs);
        return new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = EtcdOptions.ParseEndpoints(text), Timeout = timeout, Blocking = true }), new IpamClientOptions { Timeout = timeout });
    }

    private static bool Json(ParseResult p) => p.GetValue(OutputFormat) switch
    {
        "json" => true,
        "table" or "wide" => false,
        var other when p.CommandResult.Command.Name == "check" => other is null,
        var other => throw new UsageException($"unknown output format '{other}': use table or json"),
    };

    // ---- pool -------------------------------------------------------------------------------------

    private static Command PoolCommands(TextWriter o)
    {
        var pool = new Command("pool", "IP pools: add, list, disable, enable, delete");

        var cidr = new Option<string>("--cidr") { Description = "the pool's CIDR, e.g. 10.244.0.0/16 or fd00:10:244::/56", Required = true };
        var name = new Option<string?>("--name") { Description = "pool name (default: derived from the CIDR)" };
        var blockSize = new Option<int>("--block-size") { Description = "prefix length of the pool's blocks (IPv4 20-32, default 26; IPv6 116-128, default 122)" };
        var selector = new Option<string?>("--node-selector") { Description = "which nodes may use the pool, e.g. \"rack == 'r1'\" (default all())" };
        var disabled = new Option<bool>("--disabled") { Description = "create the pool disabled" };
        var add = new Command("add", "create an IP pool") { cidr, name, blockSize, selector, disabled };
        add.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            var created = await c.AddPoolAsync(new PoolRequest
            {
                Cidr = p.GetValue(cidr)!,
                Name = p.GetValue(name),
                BlockSize = p.GetValue(blockSize),
                NodeSelector = p.GetValue(selector),
                Disabled = p.GetValue(disabled),
            }, ct).ConfigureAwait(false);
            WritePools(o, [created], Json(p));
            return ExitOk;
        });

        var list = new Command("list", "list IP pools");
        list.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            WritePools(o, await c.ListPoolsAsync(ct).ConfigureAwait(false), Json(p));
            return ExitOk;
        });

        pool.Subcommands.Add(add);
        pool.Subcommands.Add(list);
        pool.Subcommands.Add(PoolNameCommand("disable", "stop claiming new blocks from a pool (allocated addresses stay)", o, async (c, n, ct) => await c.SetPoolDisabledAsync(n, true, ct).ConfigureAwait(false)));
        pool.Subcommands.Add(PoolNameCommand("enable", "enable a disabled pool", o, async (c, n, ct) => await c.SetPoolDisabledAsync(n, false, ct).ConfigureAwait(false)));
        pool.Subcommands.Add(PoolNameCommand("delete", "delete a pool (refused while any of its addresses is in use)", o, async (c, n, ct) =>
        {
            await c.DeletePoolAsync(n, ct).ConfigureAwait(false);
            return null;
        }));
        return pool;
    }

    private static Command PoolNameCommand(string verb, string description, TextWriter o, Func<IpamClient, string, CancellationToken, Task<IpPool?>> act)
    {
        var arg = new Argument<string>("name") { Description = "pool name" };
        var cmd = new Command(verb, description) { arg };
        cmd.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            var name = p.GetValue(arg)!;
            var pool = await act(c, name, ct).ConfigureAwait(false);
            if (pool is not null)
            {
                WritePools(o, [pool], Json(p));
            }
            else if (Json(p))
            {
                Output.Json(o, w =>
                {
                    w.WriteStartObject();
                    w.WriteString("deleted", name);
                    w.WriteEndObject();
                });
            }
            else
            {
                o.WriteLine($"pool {name} deleted");
            }

            return ExitOk;
        });
        return cmd;
    }

    private static void WritePools(TextWriter o, IReadOnlyList<IpPool> pools, bool json)
    {
        if (json)
        {
            Output.JsonList(o, "pools", pools, (w, p) =>
            {
                w.WriteString("name", p.Name);
                w.WriteString("cidr", p.Cidr.ToString());
                w.WriteNumber("blockSize", p.BlockSize);
                w.WriteString("nodeSelector", p.Selector.Text);
                w.WriteBoolean("disabled", p.Disabled);
            });
            return;
        }

        Output.Table(o, ["NAME", "CIDR", "BLOCK SIZE", "SELECTOR", "DISABLED"],
            pools.Select(p => (IReadOnlyList<string>)[p.Name, p.Cidr.ToString(), p.BlockSize.ToString(CultureInfo.InvariantCulture), p.Selector.Text, p.Disabled ? "true" : "false"]));
    }

    // ---- ipam -------------------------------------------------------------------------------------

    private static Command IpamCommands(TextWriter o)
    {
        var ipam = new Command("ipam", "IP address management: show, assign, release, check, configure");
        ipam.Subcommands.Add(ShowCommand(o));
        ipam.Subcommands.Add(AssignCommand(o));
        ipam.Subcommands.Add(ReleaseCommand(o));
        ipam.Subcommands.Add(CheckCommand(o));
        ipam.Subcommands.Add(ConfigureCommand(o));
        return ipam;
    }

    private static Command ShowCommand(TextWriter o)
    {
        var showBlocks = new Option<bool>("--show-blocks") { Description = "list each pool's blocks" };
        var showBorrowed = new Option<bool>("--show-borrowed") { Description = "list addresses borrowed from other nodes' blocks" };
        var ip = new Option<string?>("--ip") { Description = "show what IPAM knows of one address" };
        var cmd = new Command("show", "pool and block usage") { showBlocks, showBorrowed, ip };
        cmd.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            bool json = Json(p);
            if (p.GetValue(ip) is { } ipText)
            {
                var addr = ParseIp(ipText);
                var info = await c.LookupAsync(addr, ct).ConfigureAwait(false);
                WriteLookup(o, addr, info, json);
                return info is { Allocated: true } ? ExitOk : ExitFailed;
            }

            var usage = await c.GetUsageAsync(ct).ConfigureAwait(false);
            var borrowed = p.GetValue(showBorrowed) ? await c.GetBorrowedAsync(ct).ConfigureAwait(false) : null;
            if (json)
            {
                Output.Json(o, w =>
                {
                    w.WriteStartObject();
                    w.WriteStartArray("pools");
                    foreach (var u in usage)
                    {
                        w.WriteStartObject();
                        w.WriteString("name", u.Name);
                        w.WriteString("cidr", u.Cidr.ToString());
                        w.WriteNumber("total", u.Total);
                        w.WriteNumber("inUse", u.InUse);
                        w.WriteNumber("free", u.Free);
                        w.WriteStartArray("blocks");
                        foreach (var b in u.Blocks)
                        {
                            w.WriteStartObject();
                            w.WriteString("cidr", b.Cidr.ToString());
                            w.WriteString("affinity", b.Affinity);
                            w.WriteNumber("total", b.Total);
                            w.WriteNumber("inUse", b.InUse);
                            w.WriteNumber("free", b.Free);
                            w.WriteEndObject();
                        }

                        w.WriteEndArray();
                        w.WriteEndObject();
                    }

                    w.WriteEndArray();
                    if (borrowed is not null)
                    {
                        w.WriteStartArray("borrowed");
                        foreach (var b in borrowed)
                        {
                            w.WriteStartObject();
                            w.WriteString("ip", b.Address.ToString());
                            w.WriteString("block", b.Block.ToString());
                            w.WriteString("blockNode", b.BlockNode);
                            w.WriteString("borrowingNode", b.BorrowingNode);
                            w.WriteString("handle", b.HandleId);
                            w.WriteEndObject();
                        }

                        w.WriteEndArray();
                    }

                    w.WriteEndObject();
                });
                return ExitOk;
            }

            var rows = new List<IReadOnlyList<string>>();
            foreach (var u in usage)
            {
                rows.Add(["pool " + u.Name, u.Cidr.ToString(), Num(u.Total), Num((UInt128)u.InUse), Percent(u.InUse, u.Total), Num(u.Free), u.Disabled ? "disabled" : string.Empty]);
                if (p.GetValue(showBlocks))
                {
                    foreach (var b in u.Blocks)
                    {
                        rows.Add(["  block", b.Cidr.ToString(), Num((UInt128)b.Total), Num((UInt128)b.InUse), Percent(b.InUse, (UInt128)b.Total), Num((UInt128)b.Free), b.Affinity ?? "(no affinity)"]);
                    }
                }
            }

            Output.Table(o, ["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "USE", "IPS FREE", "AFFINITY"], rows);
            if (borrowed is not null)
            {
                o.WriteLine();
                Output.Table(o, ["BORROWED IP", "BLOCK", "BLOCK OWNER", "BORROWING NODE", "HANDLE"],
                    borrowed.Select(b => (IReadOnlyList<string>)[b.Address.ToString(), b.Block.ToString(), b.BlockNode ?? "-", b.BorrowingNode ?? "-", b.HandleId ?? "-"]));
            }

            return ExitOk;
        });
        return cmd;
    }

    private static void WriteLookup(TextWriter o, IPAddress addr, IpLookup? info, bool json)
    {
        if (json)
        {
            Output.Json(o, w =>
            {
                w.WriteStartObject();
                w.WriteString("ip", addr.ToString());
                w.WriteBoolean("allocated", info?.Allocated == true);
                w.WriteString("pool", info?.Pool);
                w.WriteString("block", info?.Block.ToString());
                w.WriteString("blockNode", info?.BlockNode);
                w.WriteString("handle", info?.HandleId);
                if (info?.SequenceNumber is { } seq)
                {
                    w.WriteNumber("sequenceNumber", seq);
                }

                w.WriteStartObject("attributes");
                foreach (var (k, v) in (info?.Attributes ?? new Dictionary<string, string>()).OrderBy(x => x.Key, StringComparer.Ordinal))
                {
                    w.WriteString(k, v);
                }

                w.WriteEndObject();
                w.WriteEndObject();
            });
            return;
        }

        if (info is null)
        {
            o.WriteLine($"{addr} is not in any allocation block");
            return;
        }

        o.WriteLine(info.Allocated ? $"{addr} is in use" : $"{addr} is not assigned");
        o.WriteLine($"  pool:   {info.Pool ?? "(none)"}");
        o.WriteLine($"  block:  {info.Block} (node {info.BlockNode ?? "none"})");
        if (info.Allocated)
        {
            o.WriteLine($"  handle: {info.HandleId ?? "(none)"}");
            o.WriteLine($"  sequence number: {info.SequenceNumber}");
            foreach (var (k, v) in (info.Attributes ?? new Dictionary<string, string>()).OrderBy(x => x.Key, StringComparer.Ordinal))
            {
                o.WriteLine($"  {k}: {v}");
            }
        }
    }

    private static Command AssignCommand(TextWriter o)
    {
        var node = new Option<string>("--node") { Description = "node the addresses are for", Required = true };
        var handle = new Option<string>("--handle") { Description = "handle that will hold the addresses", Required = true };
        var num4 = new Option<int>("--ipv4") { Description = "number of IPv4 addresses to auto-assign" };
        var num6 = new Option<int>("--ipv6") { Description = "number of IPv6 addresses to auto-assign" };
        var ip = new Option<string?>("--ip") { Description = "assign this one address instead" };
        var pools = new Option<string[]>("--pool") { Description = "pool name or CIDR to take addresses from (repeatable)", AllowMultipleArgumentsPerToken = false };
        var attrs = new Option<string[]>("--attribute") { Description = "allocation attribute key=value (repeatable), e.g. namespace=default" };
        var cmd = new Command("assign", "assign addresses to a handle (reserve them by hand)") { node, handle, num4, num6, ip, pools, attrs };
        cmd.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            var attributes = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var a in p.GetValue(attrs) ?? [])
            {
                int eq = a.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0)
                {
                    throw new UsageException($"--attribute '{a}' is not key=value");
                }

                attributes[a[..eq]] = a[(eq + 1)..];
            }

            IReadOnlyList<AssignedAddress> got;
            if (p.GetValue(ip) is { } one)
            {
                got = [await c.AssignIpAsync(ParseIp(one), p.GetValue(handle)!, p.GetValue(node)!, attributes, ct).ConfigureAwait(false)];
            }
            else
            {
                // --pool takes names or CIDRs of either family: sort them by the pool's family.
                var named = p.GetValue(pools) ?? [];
                var known = named.Length == 0 ? [] : await c.ListPoolsAsync(ct).ConfigureAwait(false);
                bool IsV6(string x) => known.FirstOrDefault(k => k.Name == x)?.IsIPv6 ?? x.Contains(':', StringComparison.Ordinal);
                int n4 = p.GetValue(num4), n6 = p.GetValue(num6);
                got = await c.AutoAssignAsync(new AutoAssignRequest
                {
                    HandleId = p.GetValue(handle)!,
                    Node = p.GetValue(node)!,
                    Num4 = n4 == 0 && n6 == 0 ? 1 : n4,
                    Num6 = n6,
                    Attributes = attributes,
                    Ipv4Pools = [.. named.Where(x => !IsV6(x))],
                    Ipv6Pools = [.. named.Where(IsV6)],
                }, ct).ConfigureAwait(false);
            }

            WriteAddresses(o, got, Json(p));
            return ExitOk;
        });
        return cmd;
    }

    private static void WriteAddresses(TextWriter o, IReadOnlyList<AssignedAddress> list, bool json)
    {
        if (json)
        {
            Output.JsonList(o, "addresses", list, (w, a) =>
            {
                w.WriteString("ip", a.Address.ToString());
                w.WriteString("block", a.Block.ToString());
                w.WriteNumber("sequenceNumber", a.SequenceNumber);
            });
            return;
        }

        Output.Table(o, ["IP", "BLOCK", "SEQUENCE"], list.Select(a => (IReadOnlyList<string>)[a.Address.ToString(), a.Block.ToString(), a.SequenceNumber.ToString(CultureInfo.InvariantCulture)]));
    }

    private static Command ReleaseCommand(TextWriter o)
    {
        var ip = new Option<string[]>("--ip") { Description = "release this address (repeatable)" };
        var seq = new Option<ulong?>("--sequence") { Description = "with one --ip: release only if its allocation still has this sequence number" };
        var handle = new Option<string?>("--handle") { Description = "release every address of this handle" };
        var node = new Option<string?>("--node") { Description = "release a node's blocks: empty ones deleted, the others un-affined" };
        var report = new Option<string?>("--from-report") { Description = "repair what an 'ipam check' report found" };
        var cmd = new Command("release", "release addresses, a handle, a node's blocks, or a check report's findings") { ip, seq, handle, node, report };
        cmd.SetAction(async (p, ct) =>
        {
            var ips = p.GetValue(ip) ?? [];
            int chosen = (ips.Length > 0 ? 1 : 0) + (p.GetValue(handle) is null ? 0 : 1) + (p.GetValue(node) is null ? 0 : 1) + (p.GetValue(report) is null ? 0 : 1);
            if (chosen != 1)
            {
                throw new UsageException("give exactly one of --ip, --handle, --node, --from-report");
            }

            if (p.GetValue(seq) is not null && ips.Length != 1)
            {
                throw new UsageException("--sequence goes with exactly one --ip");
            }

            using var c = Connect(p);
            bool json = Json(p);
            if (ips.Length > 0)
            {
                var reqs = ips.Select(x => new ReleaseRequest(ParseIp(x), p.GetValue(seq))).ToList();
                var freed = await c.ReleaseAsync(reqs, ct).ConfigureAwait(false);
                Summary(o, json, "released", freed.Count, freed.Select(f => f.ToString()));
                foreach (var miss in reqs.Select(r => r.Address).Where(a => !freed.Contains(a)))
                {
                    await Console.Error.WriteLineAsync($"warning: {miss} was not allocated{(p.GetValue(seq) is null ? string.Empty : " with that sequence number")}; nothing released").ConfigureAwait(false);
                }

                return freed.Count == reqs.Count ? ExitOk : ExitFailed;
            }

            if (p.GetValue(handle) is { } h)
            {
                int n = await c.ReleaseByHandleAsync(h, ct).ConfigureAwait(false);
                Summary(o, json, "released", n, [$"handle {h}"]);
                return ExitOk;
            }

            if (p.GetValue(node) is { } nd)
            {
                var r = await c.ReleaseNodeAsync(nd, ct).ConfigureAwait(false);
                if (json)
                {
                    Output.Json(o, w =>
                    {
                        w.WriteStartObject();
                        w.WriteString("node", nd);
                        w.WriteNumber("blocksDeleted", r.BlocksDeleted);
                        w.WriteNumber("blocksUnaffined", r.BlocksUnaffined);
                        w.WriteNumber("affinitiesRemoved", r.AffinitiesRemoved);
                        w.WriteEndObject();
                    });
                }
                else
                {
                    o.WriteLine($"node {nd}: {r.BlocksDeleted} empty block(s) deleted, {r.BlocksUnaffined} block(s) with addresses in use un-affined, {r.AffinitiesRemoved} affinit(ies) removed");
                }

                return ExitOk;
            }

            var path = p.GetValue(report)!;
            var parsed = RecordJson.DecodeReport(await File.ReadAllBytesAsync(path, ct).ConfigureAwait(false), path);
            var result = await c.RepairAsync(parsed, ct).ConfigureAwait(false);
            Summary(o, json, "repaired", result.Repaired, result.Actions);
            if (result.Skipped > 0 && !json)
            {
                o.WriteLine($"{result.Skipped} finding(s) no longer held and were left alone");
            }

            return ExitOk;
        });
        return cmd;
    }

    private static void Summary(TextWriter o, bool json, string verb, int count, IEnumerable<string> items)
    {
        if (json)
        {
            Output.Json(o, w =>
            {
                w.WriteStartObject();
                w.WriteNumber(verb, count);
                w.WriteStringArray("items", items);
                w.WriteEndObject();
            });
            return;
        }

        o.WriteLine($"{verb} {count}");
        foreach (var i in items)
        {
            o.WriteLine("  " + i);
        }
    }

    private static Command CheckCommand(TextWriter o)
    {
        var live = new Option<string?>("--live-handles") { Description = "file of live handle ids, one per line: allocations of other handles are leaks" };
        var cmd = new Command("check", "check IPAM for leaks and inconsistencies; exit 1 when it finds any") { live };
        cmd.SetAction(async (p, ct) =>
        {
            HashSet<string>? handles = null;
            if (p.GetValue(live) is { } file)
            {
                handles = [.. (await File.ReadAllLinesAsync(file, ct).ConfigureAwait(false)).Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#'))];
            }

            using var c = Connect(p);
            var report = await c.CheckAsync(handles, ct).ConfigureAwait(false);
            var format = p.GetValue(OutputFormat) ?? "table";
            if (format == "json")
            {
                o.WriteLine(System.Text.Encoding.UTF8.GetString(RecordJson.Encode(report)));
            }
            else
            {
                if (format != "table")
                {
                    await File.WriteAllBytesAsync(format, RecordJson.Encode(report), ct).ConfigureAwait(false);
                }

                o.WriteLine($"checked {report.Blocks} block(s), {report.Allocations} allocation(s), {report.Handles} handle(s), {report.Affinities} affinit(ies){(handles is null ? " (no --live-handles: leak check skipped)" : string.Empty)}");
                foreach (var g in report.Problems.GroupBy(x => x.Kind))
                {
                    o.WriteLine($"{g.Key}: {g.Count()}");
                    foreach (var x in g)
                    {
                        o.WriteLine("  " + x.Message);
                    }
                }

                o.WriteLine(report.Problems.Count == 0 ? "no problems found" : $"{report.Problems.Count} problem(s) found{(format != "table" ? $"; report written to {format} (repair: calicosharpctl ipam release --from-report {format})" : string.Empty)}");
            }

            return report.Problems.Count == 0 ? ExitOk : ExitFailed;
        });
        return cmd;
    }

    private static Command ConfigureCommand(TextWriter o)
    {
        var strict = new Option<bool?>("--strict-affinity") { Description = "true: never borrow addresses from other nodes' blocks" };
        var maxBlocks = new Option<int?>("--max-blocks-per-host") { Description = "blocks one node may hold per IP version (0: default 20)" };
        var auto = new Option<bool?>("--auto-allocate-blocks") { Description = "false: nodes never claim new blocks" };
        var cmd = new Command("configure", "show or change the IPAM config") { strict, maxBlocks, auto };
        cmd.SetAction(async (p, ct) =>
        {
            using var c = Connect(p);
            var s = p.GetValue(strict);
            var m = p.GetValue(maxBlocks);
            var a = p.GetValue(auto);
            var config = s is null && m is null && a is null
                ? await c.GetConfigAsync(ct).ConfigureAwait(false)
                : await c.ConfigureAsync(s, m, a, ct).ConfigureAwait(false);
            if (Json(p))
            {
                Output.Json(o, w =>
                {
                    w.WriteStartObject();
                    w.WriteBoolean("strictAffinity", config.StrictAffinity);
                    w.WriteBoolean("autoAllocateBlocks", config.AutoAllocateBlocks);
                    w.WriteNumber("maxBlocksPerHost", config.EffectiveMaxBlocksPerHost);
                    w.WriteEndObject();
                });
            }
            else
            {
                o.WriteLine($"StrictAffinity:     {config.StrictAffinity.ToString().ToLowerInvariant()}");
                o.WriteLine($"AutoAllocateBlocks: {config.AutoAllocateBlocks.ToString().ToLowerInvariant()}");
                o.WriteLine($"MaxBlocksPerHost:   {config.EffectiveMaxBlocksPerHost}");
            }

            return ExitOk;
        });
        return cmd;
    }

    private static IPAddress ParseIp(string text) =>
        IPAddress.TryParse(text, out var a) && !text.Contains('/', StringComparison.Ordinal) ? a : throw new UsageException($"'{text}' is not an IP address");

    private static string Num(UInt128 n) => n.ToString(CultureInfo.InvariantCulture);

    private static string Percent(long used, UInt128 total) =>
        total == 0 ? "0%" : ((double)used / (double)total * 100).ToString(used == 0 ? "0" : "0.##", CultureInfo.InvariantCulture) + "%";
}

/// <summary>A command line that cannot be acted on.</summary>
internal sealed class UsageException(string message) : Exception(message);
