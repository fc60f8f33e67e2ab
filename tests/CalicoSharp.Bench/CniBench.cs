using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bench;

/// <summary>CNI ADD and DEL of the published NativeAOT plugin against the reference ptp + host-local
/// plugins, same procedure in one run: a fresh namespace per pod, the plugins run as processes inside a
/// node namespace (the timing harness runs there too, so no 'ip netns exec' is timed), each invoked as
/// kubelet's runtime (containerd, CRI-O) invokes it: kubelet's CNI_ARGS with the pod's namespace, name,
/// sandbox id and UID, a 64-hex container id, CNI_PATH, CNI_IFNAME eth0. The runtime's VERSION call (made
/// once when it loads the network) is not counted.</summary>
internal static partial class CniBench
{
    private const int Pods = 60;
    private const int Concurrent = 110;
    private const int BreakdownPods = 10;
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    public static async Task RunAsync(TextWriter o)
    {
        var bin = Path.Combine(RepoPaths.Root, "out", "bin");
        if (!File.Exists(Path.Combine(bin, "calicosharp")) || !File.Exists("/usr/lib/cni/ptp"))
        {
            o.WriteLine("CNI benchmark skipped: needs out/bin/calicosharp (make publish) and /usr/lib/cni/ptp (containernetworking-plugins)");
            return;
        }

        using var etcd = EtcdServer.Start();
        using (var ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint] })))
        {
            await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.88.0.0/16", Name = "bench" });
        }

        var prefix = TestNetns.NewLabPrefix();
        var work = Directory.CreateTempSubdirectory("calicosharp-cnibench-").FullName;
        var namespaces = new List<TestNetns>();
        try
        {
            var node = TestNetns.Create(prefix + "-node");
            namespaces.Add(node);
            var names = new List<string>();
            for (int i = 0; i < 3 * Pods + Concurrent + (2 * BreakdownPods); i++)
            {
                var ns = TestNetns.Create($"{prefix}-p{i}");
                namespaces.Add(ns);
                names.Add(ns.Name);
            }

            await File.WriteAllLinesAsync(Path.Combine(work, "pods"), names);
            var self = typeof(CniBench).Assembly.Location;
            var r = await ProcessRunner.RunAsync("ip", ["netns", "exec", node.Name, "dotnet", self, "cni-inner", bin, etcd.UnixEndpoint, work], TimeSpan.FromMinutes(10));
            o.Write(r.Stdout);
            if (r.ExitCode != 0)
            {
                o.WriteLine($"CNI benchmark failed: {r.Stderr.Trim()}");
            }
        }
        finally
        {
            foreach (var ns in namespaces)
            {
                ns.Dispose();
            }

            Directory.Delete(work, true);
        }
    }

    /// <summary>Runs inside the node namespace.</summary>
    public static async Task<int> InnerAsync(string bin, string etcdEndpoint, string work, TextWriter o)
    {
        var pods = await File.ReadAllLinesAsync(Path.Combine(work, "pods"));
        var log = Path.Combine(work, "cni.log");
        var debugLog = Path.Combine(work, "cni-debug.log");
        var directLog = Path.Combine(work, "cni-direct.log");
        var state = Path.Combine(work, "state");
        var socket = Path.Combine(work, "bgpd.sock");
        // As deployed: the node's bgpd runs and allocates for the plugin, the log at the shipped conflist's level
        // (info). "Direct": the plugin alone against etcd. The breakdown comes from a separate pass at debug
        // level, whose timing lines are not part of the timed runs.
        string Conf(string bgpdSocket, string level, string logFile) =>
            $$$"""{"cniVersion":"1.0.0","name":"bench","type":"calicosharp","mtu":1500,"etcd_endpoints":"{{{etcdEndpoint}}}","nodename":"bench-node","bgpd_socket":"{{{bgpdSocket}}}","log_level":"{{{level}}}","log_file_path":"{{{logFile}}}","ipam":{"type":"calicosharp-ipam"}}""";
        var ours = Conf(socket, "info", log);
        var direct = Conf(string.Empty, "info", log);
        var debug = (Through: Conf(socket, "debug", debugLog), Direct: Conf(string.Empty, "debug", directLog));
        var reference = $$$"""{"cniVersion":"1.0.0","name":"ref","type":"ptp","ipMasq":false,"mtu":1500,"ipam":{"type":"host-local","subnet":"10.89.0.0/16","dataDir":"{{{Path.Combine(work, "host-local")}}}"}}""";
        // The node's bgpd (in the bench's node namespace), only as the plugin's allocator: no peers, no kernel routes.
        using (BgpdProcess.Start([Path.Combine(bin, "calicosharp-bgpd")], ["--node-name", "bench-node", "--ipv4-address", "10.255.255.1/32", "--as", "64512",
            "--etcd-endpoints", etcdEndpoint, "--no-kernel", "--api-socket", socket, "--state-dir", state, "--log-level", "warning"], socket))
        {
            await MeasureAsync(o, bin, pods, (debugLog, directLog), state, (ours, direct, reference), debug);
        }

        return 0;
    }

    private static async Task MeasureAsync(TextWriter o, string bin, string[] pods, (string Through, string Direct) debugLogs, string state,
        (string Ours, string Direct, string Reference) confs, (string Through, string Direct) debugConfs)
    {
        var (ours, direct, reference) = confs;
        // Warm the file cache for both, then measure.
        await Exec(Path.Combine(bin, "calicosharp"), "VERSION", "x", "/none", "{}", state);
        await Exec("/usr/lib/cni/ptp", "VERSION", "x", "/none", "{}", state);
        var start = new List<double>();
        for (int i = 0; i < 20; i++)
        {
            start.Add((await Exec(Path.Combine(bin, "calicosharp"), "VERSION", "x", "/none", "{\"cniVersion\":\"1.0.0\"}", state)).Ms);
        }

        // Interleaved in rounds of 10 pods, so that a slow patch of the machine hits all three alike.
        var ourAdd = new List<double>();
        var ourDel = new List<double>();
        var directAdd = new List<double>();
        var directDel = new List<double>();
        var refAdd = new List<double>();
        var refDel = new List<double>();
        for (int round = 0; round < Pods / 10; round++)
        {
            var (a, d) = await Sequential(Path.Combine(bin, "calicosharp"), ours, pods.AsSpan(round * 10, 10).ToArray(), $"c{round}-", state);
            ourAdd.AddRange(a);
            ourDel.AddRange(d);
            (a, d) = await Sequential(Path.Combine(bin, "calicosharp"), direct, pods.AsSpan(Pods + (round * 10), 10).ToArray(), $"d{round}-", state);
            directAdd.AddRange(a);
            directDel.AddRange(d);
            (a, d) = await Sequential("/usr/lib/cni/ptp", reference, pods.AsSpan((2 * Pods) + (round * 10), 10).ToArray(), $"r{round}-", state);
            refAdd.AddRange(a);
            refDel.AddRange(d);
        }

        double oa = Median(ourAdd), ra = Median(refAdd), rd = Median(refDel), da = Median(directAdd);
        o.WriteLine($"CNI ADD ({Pods} pods each, fresh netns each): calicosharp (bgpd allocating) median {oa:0.0} ms; ptp+host-local median {ra:0.0} ms; ratio {oa / ra:0.00} (aim <= 0.5)");
        o.WriteLine($"  calicosharp without bgpd (plugin against etcd itself) median {da:0.0} ms; ratio {da / ra:0.00}");
        // DEL releases directly either way (through bgpd it was no faster): two samples of one path.
        double del = Median(ourDel.Concat(directDel));
        o.WriteLine($"CNI DEL: calicosharp median {del:0.0} ms; ptp+host-local median {rd:0.0} ms; ratio {del / rd:0.00} (aim <= 0.8)");

        // Where ADD's time goes: process start (a VERSION call), IPAM (bgpd's answer, or etcd's), netlink; from the
        // debug pass's timing lines.
        var breakdown = pods[((3 * Pods) + Concurrent)..];
        await Sequential(Path.Combine(bin, "calicosharp"), debugConfs.Through, breakdown[..BreakdownPods], "bt-", state);
        await Sequential(Path.Combine(bin, "calicosharp"), debugConfs.Direct, breakdown[BreakdownPods..], "bd-", state);
        var timings = TimingLine().Matches(await File.ReadAllTextAsync(debugLogs.Through)).Select(m => (Ipam: double.Parse(m.Groups[1].Value, Inv), Netlink: double.Parse(m.Groups[2].Value, Inv))).ToList();
        var directTimings = TimingLine().Matches(await File.ReadAllTextAsync(debugLogs.Direct)).Select(m => (Ipam: double.Parse(m.Groups[1].Value, Inv), Netlink: double.Parse(m.Groups[2].Value, Inv))).ToList();
        o.WriteLine($"  ADD breakdown (medians, {BreakdownPods} pods at log level debug): process start+exit {Median(start):0.0} ms, IPAM {Median(timings.Select(t => t.Ipam)):0.0} ms through bgpd ({Median(directTimings.Select(t => t.Ipam)):0.0} ms without), netlink {Median(timings.Select(t => t.Netlink)):0.0} ms");

        // 110 pods at once on one node.
        var batch = pods[(3 * Pods)..((3 * Pods) + Concurrent)];
        var sw = Stopwatch.StartNew();
        var runs = batch.Select((ns, i) => Exec(Path.Combine(bin, "calicosharp"), "ADD", $"burst{i}", "/var/run/netns/" + ns, ours, state)).ToList();
        var results = await Task.WhenAll(runs);
        var wall = sw.Elapsed;
        var failed = results.Count(r => r.Code != 0);
        var ips = results.Where(r => r.Code == 0).Select(r => AddressLine().Match(r.Stdout).Groups[1].Value).ToList();
        o.WriteLine($"{Concurrent} concurrent ADDs on one node: {wall.TotalSeconds:0.00} s wall (aim < 2 s), {failed} failed, {ips.Count - ips.Distinct().Count()} duplicate addresses");
        if (failed > 0)
        {
            o.WriteLine("  first failure: " + results.First(r => r.Code != 0).Stdout.Replace('\n', ' '));
        }

        await Task.WhenAll(batch.Select((ns, i) => Exec(Path.Combine(bin, "calicosharp"), "DEL", $"burst{i}", "/var/run/netns/" + ns, ours, state)));
    }

    private static async Task<(List<double> Add, List<double> Del)> Sequential(string plugin, string conf, string[] pods, string idPrefix, string state)
    {
        var add = new List<double>();
        var del = new List<double>();
        for (int i = 0; i < pods.Length; i++)
        {
            var a = await Exec(plugin, "ADD", $"{idPrefix}{i}", "/var/run/netns/" + pods[i], conf, state);
            if (a.Code != 0)
            {
                throw new InvalidOperationException($"{plugin} ADD failed: {a.Stdout}");
            }

            add.Add(a.Ms);
        }

        for (int i = 0; i < pods.Length; i++)
        {
            var d = await Exec(plugin, "DEL", $"{idPrefix}{i}", "/var/run/netns/" + pods[i], conf, state);
            if (d.Code != 0)
            {
                throw new InvalidOperationException($"{plugin} DEL failed: {d.Stdout}");
            }

            del.Add(d.Ms);
        }

        return (add, del);
    }

    private static async Task<(int Code, double Ms, string Stdout)> Exec(string plugin, string command, string id, string netns, string conf, string state)
    {
        var psi = new ProcessStartInfo(plugin) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var (containerId, podArgs) = AsKubelet(id);
        psi.Environment["CNI_COMMAND"] = command;
        psi.Environment["CNI_CONTAINERID"] = containerId;
        psi.Environment["CNI_NETNS"] = netns;
        psi.Environment["CNI_IFNAME"] = "eth0";
        psi.Environment["CNI_PATH"] = $"{Path.GetDirectoryName(plugin)}:/usr/lib/cni";
        psi.Environment["CNI_ARGS"] = podArgs;
        psi.Environment["CALICOSHARP_STATE_DIR"] = state;
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync();
        var err = p.StandardError.ReadToEndAsync();
        await p.StandardInput.WriteAsync(conf);
        p.StandardInput.Close();
        await p.WaitForExitAsync();
        var ms = sw.Elapsed.TotalMilliseconds;
        await err;
        return (p.ExitCode, ms, await output);
    }

    /// <summary>What kubelet's runtime passes for a pod: the sandbox's container id (64 hex digits) and kubelet's
    /// CNI_ARGS, derived from the bench's short pod id so that ADD and DEL of one pod agree.</summary>
    private static (string ContainerId, string CniArgs) AsKubelet(string id)
    {
#pragma warning disable CA5351 // not security: a stable stand-in for a runtime's random sandbox id
        string hex = Convert.ToHexStringLower(System.Security.Cryptography.MD5.HashData(Encoding.UTF8.GetBytes(id)));
#pragma warning restore CA5351
        string containerId = hex + hex;
        string uid = $"{hex[..8]}-{hex[8..12]}-4{hex[13..16]}-8{hex[17..20]}-{hex[20..32]}";
        return (containerId, $"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=web-{id};K8S_POD_INFRA_CONTAINER_ID={containerId};K8S_POD_UID={uid}");
    }

    private static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToList();
        return s.Count == 0 ? double.NaN : s.Count % 2 == 1 ? s[s.Count / 2] : (s[(s.Count / 2) - 1] + s[s.Count / 2]) / 2;
    }

    [GeneratedRegex(@"timing ipam=([0-9.]+)ms netlink=([0-9.]+)ms")]
    private static partial Regex TimingLine();

    [GeneratedRegex(@"timing etcd-connect\+lock=([0-9.]+)ms")]
    private static partial Regex ConnectLine();

    [GeneratedRegex("\"address\": \"([0-9.]+)/32\"")]
    private static partial Regex AddressLine();
}
