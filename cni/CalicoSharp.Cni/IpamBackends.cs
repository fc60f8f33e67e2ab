using System.Diagnostics;
using CalicoSharp.Ipam;

namespace CalicoSharp.Cni;

/// <summary>Where a pod's addresses come from.</summary>
public interface IIpamBackend : IDisposable
{
    Task<CniResult> AddAsync(PluginContext ctx);

    /// <summary>ADD that may run <paramref name="whileWaiting"/> (once) while its answer is on its way; one
    /// that cannot overlap does not run it.</summary>
    Task<CniResult> AddAsync(PluginContext ctx, Action whileWaiting) => AddAsync(ctx);

    /// <summary>The families ADD will return, when known before it runs; null: unknown until it answers.</summary>
    PodFamilies? FamiliesOf(PluginContext ctx) => null;

    Task DelAsync(PluginContext ctx);

    Task CheckAsync(PluginContext ctx, CniResult prev);

    Task GcAsync(PluginContext ctx, IReadOnlyList<(string ContainerId, string IfName)> valid);

    Task StatusAsync(PluginContext ctx);
}

/// <summary>The built-in IPAM: CalicoSharp's allocator against etcd. Handle "&lt;network&gt;.&lt;container id&gt;".</summary>
public sealed class CalicoIpamBackend(IpamClient client, NodeAgent? agent = null) : IIpamBackend
{
    public static CalicoIpamBackend Create(NetConf conf, string? stateDirectory = null, Log? log = null, Action<string>? afterStep = null)
    {
        ArgumentNullException.ThrowIfNull(conf);
        var endpoints = conf.EtcdEndpoints.Count > 0 ? conf.EtcdEndpoints : ["http://127.0.0.1:2379"];
        try
        {
            var store = new EtcdKvStore(new EtcdOptions { Endpoints = EtcdOptions.ParseEndpoints(string.Join(',', endpoints)), Timeout = conf.EtcdTimeout, Blocking = true });
            var options = IpamClientOptions.InStateDirectory(stateDirectory, conf.EtcdTimeout) with { AfterStep = afterStep };
            return new CalicoIpamBackend(new IpamClient(store, options), NodeAgent.Find(conf, log ?? Log.None));
        }
        catch (IpamException e)
        {
            throw new CniException(CniCode.InvalidConfig, "invalid network config: " + e.Message);
        }
    }

    public static string HandleOf(PluginContext ctx) => $"{ctx.Conf.Name}.{ctx.Env.ContainerId}";

    public PodFamilies? FamiliesOf(PluginContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        return new PodFamilies(ctx.Conf.Ipam.AssignIpv4, ctx.Conf.Ipam.AssignIpv6);
    }

    public Task<CniResult> AddAsync(PluginContext ctx) => AddAsync(ctx, null);

    /// <summary>Through bgpd, <paramref name="whileWaiting"/> runs while bgpd assigns; against etcd itself the
    /// I/O leaves no gap for it and it does not run.</summary>
    public async Task<CniResult> AddAsync(PluginContext ctx, Action? whileWaiting)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var ipam = ctx.Conf.Ipam;
        var attrs = new Dictionary<string, string>(StringComparer.Ordinal) { ["containerID"] = ctx.Env.ContainerId };
        if (ctx.Env.PodNamespace is { } ns)
        {
            attrs["namespace"] = ns;
        }

        if (ctx.Env.PodName is { } pod)
        {
            attrs["pod"] = pod;
        }

        var request = new AutoAssignRequest
        {
            HandleId = HandleOf(ctx),
            Node = ctx.Node,
            Num4 = ipam.AssignIpv4 ? 1 : 0,
            Num6 = ipam.AssignIpv6 ? 1 : 0,
            Attributes = attrs,
            Ipv4Pools = ipam.Ipv4Pools,
            Ipv6Pools = ipam.Ipv6Pools,
            ReuseExisting = true,
        };
        var got = await Map(() => Task.FromResult(agent?.TryAssign(request, whileWaiting))).ConfigureAwait(false);
        if (got is not null)
        {
            ctx.Log.Debug($"allocated by bgpd at {agent!.Socket}");
        }
        else
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            using var hostLock = await Map(() => client.LockNodeAsync(ctx.Node)).ConfigureAwait(false);
            ctx.Log.Debug(FormattableString.Invariant($"timing etcd-connect+lock={System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds:0.00}ms"));
            got = await Map(() => client.AutoAssignAsync(request)).ConfigureAwait(false);
        }

        ctx.Log.Info($"assigned {string.Join(", ", got.Select(a => a.Address))} to {HandleOf(ctx)} on {ctx.Node}");

        // As a standalone IPAM plugin the result suits interface plugins such as ptp: the address with
        // its block's prefix and a gateway (the link-local one every pod uses, which ptp puts on the host
        // end). No routes: a gateway outside the prefix is not reachable before ptp adds its link route.
        // The calicosharp plugin itself gives the pod a /32 or /128 instead.
        return new CniResult
        {
            Ips = [.. got.Select(a => new CniIp(a.Address, a.Block.PrefixLength, a.Block.IsIPv6 ? LinuxDataplane.GatewayV6 : LinuxDataplane.GatewayV4, null))],
        };
    }

    public async Task DelAsync(PluginContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        // Directly, also with bgpd running: measured, DEL through bgpd was no faster (the release overlaps the
        // veth's removal already, and bgpd's turn-taking serialises it behind ADDs).
        using var hostLock = await Map(() => client.LockNodeAsync(ctx.Node)).ConfigureAwait(false);
        int n = await Map(() => client.ReleaseByHandleAsync(HandleOf(ctx))).ConfigureAwait(false);
        ctx.Log.Info($"released {n} address(es) of {HandleOf(ctx)}");
    }

    public async Task CheckAsync(PluginContext ctx, CniResult prev)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(prev);
        var held = await Map(() => client.AddressesOfHandleAsync(HandleOf(ctx))).ConfigureAwait(false);
        foreach (var ip in prev.Ips)
        {
            if (!held.Any(h => h.Address.Equals(ip.Address)))
            {
                throw new CniException(CniCode.CheckFailed, $"CHECK failed: {ip.Address} is not allocated to {HandleOf(ctx)} in IPAM");
            }
        }
    }

    public async Task GcAsync(PluginContext ctx, IReadOnlyList<(string ContainerId, string IfName)> valid)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ArgumentNullException.ThrowIfNull(valid);
        var live = valid.Select(v => $"{ctx.Conf.Name}.{v.ContainerId}").ToHashSet(StringComparer.Ordinal);
        foreach (var handle in await Map(() => client.HandlesOfNetworkOnNodeAsync(ctx.Conf.Name, ctx.Node)).ConfigureAwait(false))
        {
            if (!live.Contains(handle))
            {
                int n = await Map(() => client.ReleaseByHandleAsync(handle)).ConfigureAwait(false);
                ctx.Log.Info($"GC: released {n} address(es) of {handle}, whose attachment is gone");
            }
        }
    }

    public async Task StatusAsync(PluginContext ctx)
    {
        IReadOnlyList<IpPool> pools;
        try
        {
            pools = await client.ListPoolsAsync().ConfigureAwait(false);
        }
        catch (IpamException e) when (e.Kind == IpamErrorKind.DatastoreUnavailable)
        {
            throw new CniException(CniCode.NotAvailable, "IPAM is not available: etcd cannot be reached", e.Message);
        }

        if (!pools.Any(p => !p.Disabled))
        {
            throw new CniException(CniCode.NotAvailable, "IPAM is not available: there is no enabled IP pool");
        }
    }

    public void Dispose()
    {
        agent?.Dispose();
        client.Dispose();
    }

    /// <summary>IPAM errors in CNI terms.</summary>
    private static async Task<T> Map<T>(Func<Task<T>> call)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (IpamException e)
        {
            throw new CniException(e.Kind switch
            {
                IpamErrorKind.DatastoreUnavailable => CniCode.TryAgainLater,
                IpamErrorKind.Conflict => CniCode.TryAgainLater,
                IpamErrorKind.PoolExhausted => CniCode.PoolExhausted,
                IpamErrorKind.BlockLimitReached => CniCode.BlockLimitReached,
                IpamErrorKind.AddressInUse => CniCode.AddressInUse,
                IpamErrorKind.InvalidArgument => CniCode.InvalidConfig,
                _ => CniCode.IpamFailure,
            }, e.Message);
        }
    }
}

/// <summary>Any other CNI IPAM plugin, found in CNI_PATH and run per the spec: same environment, the
/// network config on stdin, the result on stdout.</summary>
public sealed class ExecIpamBackend : IIpamBackend
{
    public async Task<CniResult> AddAsync(PluginContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        var output = await RunAsync(ctx, "ADD", ctx.Conf.Raw).ConfigureAwait(false);
        var r = CniResult.Parse(output);
        if (r.Ips.Count == 0)
        {
            throw new CniException(CniCode.DelegateFailed, $"IPAM plugin {ctx.Conf.Ipam.Type} returned no address");
        }

        // The pod gets each address as a host route (/32, /128), whatever prefix the plugin gave.
        return new CniResult { Ips = [.. r.Ips.Select(i => i with { PrefixLength = i.IsIPv6 ? 128 : 32, Gateway = null, Interface = null })], Dns = r.Dns };
    }

    public Task DelAsync(PluginContext ctx) => RunAsync(ctx, "DEL", ctx.Conf.Raw);

    public Task CheckAsync(PluginContext ctx, CniResult prev) => ctx.Conf.CniVersion is "0.3.0" or "0.3.1" ? Task.CompletedTask : RunAsync(ctx, "CHECK", ctx.Conf.Raw);

    public Task GcAsync(PluginContext ctx, IReadOnlyList<(string ContainerId, string IfName)> valid) =>
        Plugin.SupportsGcAndStatus(ctx.Conf.CniVersion) ? RunAsync(ctx, "GC", ctx.Conf.Raw) : Task.CompletedTask;

    public Task StatusAsync(PluginContext ctx) =>
        Plugin.SupportsGcAndStatus(ctx.Conf.CniVersion) ? RunAsync(ctx, "STATUS", ctx.Conf.Raw) : Task.CompletedTask;

    public void Dispose()
    {
    }

    private static async Task<byte[]> RunAsync(PluginContext ctx, string command, byte[] stdin)
    {
        var type = ctx.Conf.Ipam.Type;
        var path = ctx.Env.Path.Split(':', StringSplitOptions.RemoveEmptyEntries).Select(d => Path.Combine(d, type)).FirstOrDefault(File.Exists)
            ?? throw new CniException(CniCode.InvalidConfig, $"IPAM plugin {type} not found in CNI_PATH ({ctx.Env.Path})");
        var psi = new ProcessStartInfo(path)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.Environment["CNI_COMMAND"] = command;
        psi.Environment["CNI_CONTAINERID"] = ctx.Env.ContainerId;
        psi.Environment["CNI_NETNS"] = ctx.Env.Netns;
        psi.Environment["CNI_IFNAME"] = ctx.Env.IfName;
        psi.Environment["CNI_PATH"] = ctx.Env.Path;
        psi.Environment["CNI_ARGS"] = ctx.Env.RawArgs;
        using var p = Process.Start(psi) ?? throw new CniException(CniCode.DelegateFailed, $"could not start {path}");
        var outTask = ReadAllAsync(p.StandardOutput.BaseStream);
        var errTask = p.StandardError.ReadToEndAsync();
        await p.StandardInput.BaseStream.WriteAsync(stdin).ConfigureAwait(false);
        p.StandardInput.Close();
        await p.WaitForExitAsync().ConfigureAwait(false);
        var output = await outTask.ConfigureAwait(false);
        var err = await errTask.ConfigureAwait(false);
        ctx.Log.Debug($"{type} {command} exited {p.ExitCode}");
        if (p.ExitCode != 0)
        {
            string msg = err.Trim();
            int code = CniCode.DelegateFailed;
            try
            {
                using var doc = System.Text.Json.JsonDocument.Parse(output);
                msg = NetConf.Str(doc.RootElement, "msg") ?? msg;
                if (doc.RootElement.TryGetProperty("code", out var c) && c.TryGetInt32(out var n))
                {
                    code = n;
                }
            }
            catch (System.Text.Json.JsonException)
            {
            }

            throw new CniException(code, $"IPAM plugin {type} {command} failed: {msg}");
        }

        return output;
    }

    private static async Task<byte[]> ReadAllAsync(Stream s)
    {
        using var ms = new MemoryStream();
        await s.CopyToAsync(ms).ConfigureAwait(false);
        return ms.ToArray();
    }
}
