using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace CalicoSharp.Cni;

/// <summary>Everything one invocation knows.</summary>
public sealed class PluginContext
{
    public required CniEnv Env { get; init; }

    public required NetConf Conf { get; init; }

    public required string Node { get; init; }

    public Log Log { get; init; } = Log.None;
}

/// <summary>What the process boundary provides, injected so the dispatcher runs without a process.</summary>
public sealed class PluginOptions
{
    public Func<NetConf, IIpamBackend>? Ipam { get; init; }

    public Func<IDataplane>? Dataplane { get; init; }

    /// <summary>Called after each ADD step ("ipam", "veth", ...) and, with the built-in IPAM, after each of its
    /// writes (<see cref="Ipam.IpamClientOptions.AfterStep"/>); tests throw or kill the process here.</summary>
    public Action<string>? AfterStep { get; init; }

    public Func<string>? HostName { get; init; }
}

public enum PluginKind
{
    /// <summary>calicosharp: the interface plugin (veth, routes) with IPAM.</summary>
    Network,

    /// <summary>calicosharp-ipam: the standalone IPAM plugin.</summary>
    Ipam,
}

/// <summary>The CNI dispatcher (spec 1.1): env and stdin in, result or error JSON out, exit code back.</summary>
public static partial class Plugin
{
    public const string NetworkType = "calicosharp";
    public const string IpamType = "calicosharp-ipam";

    /// <summary>The variables the dispatcher reads (a delegated IPAM plugin inherits the whole environment).</summary>
    private static readonly string[] EnvironmentNames = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS", "CALICOSHARP_STATE_DIR"];

    /// <summary>The process boundary, kept thin: this process's environment, stdin and stdout. Plain
    /// blocking reads and writes: one pod's work is sequential, and the first asynchronous stream
    /// operation would start the thread pool (measured: 1.6 ms of every call).</summary>
    public static async Task<int> MainAsync(PluginKind kind, PluginOptions? options = null)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (string name in EnvironmentNames)
        {
            if (Environment.GetEnvironmentVariable(name) is { } value)
            {
                env[name] = value;
            }
        }

        // File descriptors 0 and 1 as plain files: System.Console would start its signal-handling thread.
        using var stdin = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(0, ownsHandle: false), FileAccess.Read, 0);
        byte[] config = ReadToEnd(stdin);
        using var stdout = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(1, ownsHandle: false), FileAccess.Write, 0);
        return await RunAsync(kind, env, config, stdout, options).ConfigureAwait(false);
    }

    /// <summary>A stream to its end in plain reads: Stream.CopyTo rents an 80 KiB buffer from the shared array
    /// pool, and setting the pool up and faulting the buffer in cost 0.4 ms of every call (measured) for a
    /// config of a few hundred bytes.</summary>
    private static byte[] ReadToEnd(Stream stream)
    {
        var buffer = new byte[4096];
        int length = 0;
        while (true)
        {
            if (length == buffer.Length)
            {
                Array.Resize(ref buffer, buffer.Length * 2);
            }

            int n = stream.Read(buffer, length, buffer.Length - length);
            if (n == 0)
            {
                return buffer.AsSpan(0, length).ToArray();
            }

            length += n;
        }
    }

    /// <summary>Ends this process with <paramref name="code"/> at once (_exit): by then the answer is written to
    /// stdout and every log line to its file, so the runtime's orderly shutdown has nothing left to do for the
    /// plugin, and it took a measurable part of a process that lives a few milliseconds (measured: ADD went from
    /// 0.49-0.51x to 0.48-0.49x of ptp + host-local; VERSION 0.2-0.6 ms faster).</summary>
    public static void EndProcess(int code) => ExitNow(code);

    [LibraryImport("libc.so.6", EntryPoint = "_exit")]
    private static partial void ExitNow(int code);

    public static bool SupportsCheck(string version) => version is "0.4.0" or "1.0.0" or "1.1.0";

    public static bool SupportsGcAndStatus(string version) => version == "1.1.0";

    public static async Task<int> RunAsync(PluginKind kind, IReadOnlyDictionary<string, string> env, byte[] stdin, Stream stdout, PluginOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(stdin);
        ArgumentNullException.ThrowIfNull(stdout);
        options ??= new PluginOptions();
        string version = GuessVersion(stdin);
        Log log = Log.None;
        try
        {
            var cniEnv = CniEnv.Parse(env);
            if (cniEnv.Command == "VERSION")
            {
                await WriteAsync(stdout, VersionJson(version)).ConfigureAwait(false);
                return 0;
            }

            var conf = NetConf.Parse(stdin);
            version = conf.CniVersion;
            log = new Log(conf.LogFilePath, conf.LogLevel, $"{(kind == PluginKind.Ipam ? IpamType : NetworkType)} {cniEnv.Command} {cniEnv.ContainerId} ");
            var ctx = new PluginContext { Env = cniEnv, Conf = conf, Node = NodeName(conf, options), Log = log };
            if (kind == PluginKind.Network && conf.Type != NetworkType)
            {
                log.Warning($"config type is '{conf.Type}', running as {NetworkType}");
            }

            switch (cniEnv.Command)
            {
                case "CHECK" when !SupportsCheck(version):
                case "STATUS" or "GC" when !SupportsGcAndStatus(version):
                    throw new CniException(CniCode.IncompatibleVersion, $"{cniEnv.Command} is not defined for CNI version {version}",
                        cniEnv.Command == "CHECK" ? "CHECK needs cniVersion 0.4.0 or later" : $"{cniEnv.Command} needs cniVersion 1.1.0");
            }

            var stateDir = env.GetValueOrDefault("CALICOSHARP_STATE_DIR");
            using var ipam = (options.Ipam ?? (c => DefaultIpam(c, stateDir, ctx.Log, options.AfterStep)))(conf);
            var dataplane = kind == PluginKind.Network ? (options.Dataplane ?? (() => new LinuxDataplane()))() : null;
            var result = cniEnv.Command switch
            {
                "ADD" => await AddAsync(ctx, ipam, dataplane, options.AfterStep ?? (_ => { })).ConfigureAwait(false),
                "DEL" => await DelAsync(ctx, ipam, dataplane).ConfigureAwait(false),
                "CHECK" => await CheckAsync(ctx, ipam, dataplane).ConfigureAwait(false),
                "GC" => await GcAsync(ctx, ipam).ConfigureAwait(false),
                _ => await StatusAsync(ctx, ipam).ConfigureAwait(false),
            };
            if (result is not null)
            {
                await WriteAsync(stdout, result.ToJson(version)).ConfigureAwait(false);
            }

            log.Info("done");
            return 0;
        }
        catch (CniException e)
        {
            log.Error($"code {e.Code}: {e.Message}{(e.Details is null ? string.Empty : $" ({e.Details})")}");
            await WriteAsync(stdout, ErrorJson(version, e.Code, e.Message, e.Details)).ConfigureAwait(false);
            return 1;
        }
        catch (Netlink.NetlinkException e)
        {
            log.Error(e.Message);
            await WriteAsync(stdout, ErrorJson(version, CniCode.DataplaneFailure, e.Message, null)).ConfigureAwait(false);
            return 1;
        }
        catch (IOException e)
        {
            log.Error(e.ToString());
            await WriteAsync(stdout, ErrorJson(version, CniCode.IoFailure, e.Message, null)).ConfigureAwait(false);
            return 1;
        }
#pragma warning disable CA1031 // the runtime must always get the spec's error JSON, whatever broke
        catch (Exception e)
#pragma warning restore CA1031
        {
            log.Error(e.ToString());
            await WriteAsync(stdout, ErrorJson(version, CniCode.InternalError, $"internal error: {e.Message}", e.GetType().Name)).ConfigureAwait(false);
            return 1;
        }
    }

    private static IIpamBackend DefaultIpam(NetConf conf, string? stateDir, Log log, Action<string>? afterStep) =>
        conf.Ipam.Type == IpamType ? CalicoIpamBackend.Create(conf, stateDir, log, afterStep) : new ExecIpamBackend();

    private static async Task<CniResult> AddAsync(PluginContext ctx, IIpamBackend ipam, IDataplane? dataplane, Action<string> step)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        if (dataplane is null)
        {
            var result = await ipam.AddAsync(ctx).ConfigureAwait(false);
            ctx.Log.Debug(FormattableString.Invariant($"timing ipam={System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds:0.00}ms"));
            return result;
        }

        // When IPAM knows the families beforehand it may make the pod's interfaces while its answer is on the
        // way (bgpd assigning); a failure there is kept until IPAM has answered, so both halves are undone.
        IPreparedPod? prepared = null;
        Exception? prepareFailed = null;
        TimeSpan prepareTime = TimeSpan.Zero;
        var families = ipam.FamiliesOf(ctx);
        void PrepareMeanwhile(PodFamilies f)
        {
            long p = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                prepared = dataplane.Prepare(ctx, f, step);
            }
            catch (Exception e)
            {
                prepareFailed = e;
            }

            prepareTime = System.Diagnostics.Stopwatch.GetElapsedTime(p);
        }

        CniResult ips;
        try
        {
            ips = families is { } f
                ? await ipam.AddAsync(ctx, () => PrepareMeanwhile(f)).ConfigureAwait(false)
                : await ipam.AddAsync(ctx).ConfigureAwait(false);
        }
        catch (Exception e) when (prepared is not null || prepareFailed is not null)
        {
            // IPAM failed and gave back what it took itself; the interfaces made meanwhile go.
            ctx.Log.Error($"ADD failed, undoing: {e.Message}");
            prepared?.Dispose();
            Undo(() => dataplane.UndoAdd(ctx), ctx);
            throw;
        }

        var ipamTime = System.Diagnostics.Stopwatch.GetElapsedTime(start) - prepareTime;
        try
        {
            if (prepareFailed is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(prepareFailed);
            }

            step("ipam");
            long netlinkStart = System.Diagnostics.Stopwatch.GetTimestamp();
            prepared ??= dataplane.Prepare(ctx, PodFamilies.Of(ips.Ips), step);
            var interfaces = prepared.Complete(ips.Ips, step);
            ctx.Log.Debug(FormattableString.Invariant(
                $"timing ipam={ipamTime.TotalMilliseconds:0.00}ms netlink={(prepareTime + System.Diagnostics.Stopwatch.GetElapsedTime(netlinkStart)).TotalMilliseconds:0.00}ms"));
            var routes = new List<CniRoute>();
            if (ips.Ips.Any(i => !i.IsIPv6))
            {
                routes.Add(new CniRoute(Ipam.IpNet.Parse("0.0.0.0/0"), LinuxDataplane.GatewayV4));
            }

            if (ips.Ips.Any(i => i.IsIPv6))
            {
                routes.Add(new CniRoute(Ipam.IpNet.Parse("::/0"), LinuxDataplane.GatewayV6));
            }

            return new CniResult
            {
                Interfaces = interfaces,
                Ips = [.. ips.Ips.Select(i => i with { PrefixLength = i.IsIPv6 ? 128 : 32, Gateway = null, Interface = 1 })],
                Routes = routes,
                Dns = ips.Dns,
            };
        }
        catch (Exception e)
        {
            // ADD compensates: nothing of this pod stays in the kernel or in IPAM.
            ctx.Log.Error($"ADD failed, undoing: {e.Message}");
            Undo(() => dataplane.UndoAdd(ctx), ctx);
            await UndoAsync(() => ipam.DelAsync(ctx), ctx).ConfigureAwait(false);
            throw;
        }
        finally
        {
            prepared?.Dispose();
        }
    }

    private static void Undo(Action action, PluginContext ctx)
    {
        try
        {
            action();
        }
        catch (Exception e) when (e is Netlink.NetlinkException or CniException or IOException)
        {
            ctx.Log.Error($"undo failed: {e.Message}");
        }
    }

    private static async Task UndoAsync(Func<Task> action, PluginContext ctx)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (CniException e)
        {
            ctx.Log.Error($"undo failed: {e.Message}");
        }
    }

    private static async Task<CniResult?> DelAsync(PluginContext ctx, IIpamBackend ipam, IDataplane? dataplane)
    {
        // DEL forgives: a missing netns, link or handle is success. The kernel's veth removal takes
        // ~16 ms, so the release runs beside it, the teardown on a thread of its own (etcd's calls run on
        // this one, blocking); a new pod that gets the address at once still works, because ADD replaces
        // the /32 route.
        Exception? teardownError = null;
        Thread? teardown = null;
        if (dataplane is not null)
        {
            teardown = new Thread(() =>
            {
                try
                {
                    dataplane.Teardown(ctx);
                }
#pragma warning disable CA1031 // carried to the calling thread, which rethrows it
                catch (Exception e)
#pragma warning restore CA1031
                {
                    teardownError = e;
                }
            }, 256 * 1024) { Name = "teardown", IsBackground = true };
            teardown.Start();
        }

        try
        {
            await ipam.DelAsync(ctx).ConfigureAwait(false);
        }
        finally
        {
            teardown?.Join();
        }

        if (teardownError is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(teardownError);
        }

        return null;
    }

    private static async Task<CniResult?> CheckAsync(PluginContext ctx, IIpamBackend ipam, IDataplane? dataplane)
    {
        var prev = ctx.Conf.PrevResult ?? throw new CniException(CniCode.InvalidConfig, "invalid network config: CHECK needs prevResult");
        await ipam.CheckAsync(ctx, prev).ConfigureAwait(false);
        dataplane?.Check(ctx, prev);
        return null;
    }

    private static async Task<CniResult?> GcAsync(PluginContext ctx, IIpamBackend ipam)
    {
        if (ctx.Conf.ValidAttachments is { } valid)
        {
            await ipam.GcAsync(ctx, valid).ConfigureAwait(false);
        }
        else
        {
            ctx.Log.Info("GC without cni.dev/valid-attachments: nothing released");
        }

        return null;
    }

    private static async Task<CniResult?> StatusAsync(PluginContext ctx, IIpamBackend ipam)
    {
        await ipam.StatusAsync(ctx).ConfigureAwait(false);
        return null;
    }

    private static string NodeName(NetConf conf, PluginOptions options)
    {
        if (!string.IsNullOrWhiteSpace(conf.NodeName))
        {
            return conf.NodeName.Trim();
        }

        try
        {
            if (File.Exists(conf.NodeNameFile) && File.ReadAllText(conf.NodeNameFile).Trim() is { Length: > 0 } fromFile)
            {
                return fromFile;
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return (options.HostName ?? (() => Environment.MachineName))().Trim().ToLowerInvariant();
    }

    /// <summary>The cniVersion on stdin if it can be read, for VERSION and for early errors: one pass of a reader
    /// over the bytes (validating them whole), not a second document of the config that NetConf parses.</summary>
    private static string GuessVersion(byte[] stdin)
    {
        try
        {
            var reader = new Utf8JsonReader(stdin);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return "1.1.0";
            }

            string? version = null;
            while (reader.Read())
            {
                if (reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1 && reader.ValueTextEquals("cniVersion"u8))
                {
                    reader.Read();
                    version = reader.TokenType == JsonTokenType.String ? reader.GetString() : null;
                }
            }

            return version is not null && NetConf.SupportedVersions.Contains(version) ? version : "1.1.0";
        }
        catch (JsonException)
        {
            return "1.1.0";
        }
    }

    public static byte[] VersionJson(string version)
    {
        var sb = new StringBuilder();
        sb.Append("{\"cniVersion\":\"").Append(version).Append("\",\"supportedVersions\":[");
        sb.Append(string.Join(',', NetConf.SupportedVersions.Select(v => $"\"{v}\"")));
        sb.Append("]}\n");
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    public static byte[] ErrorJson(string version, int code, string msg, string? details)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, JsonOut.Options))
        {
            w.WriteStartObject();
            w.WriteString("cniVersion", version);
            w.WriteNumber("code", code);
            w.WriteString("msg", msg);
            if (details is not null)
            {
                w.WriteString("details", details);
            }

            w.WriteEndObject();
        }

        return ms.ToArray();
    }

    private static Task WriteAsync(Stream stdout, byte[] bytes)
    {
        // Blocking: the console stream's asynchronous write would hop to the thread pool.
        stdout.Write(bytes);
        stdout.Flush();
        return Task.CompletedTask;
    }
}
