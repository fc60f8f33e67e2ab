using System.Diagnostics;
using System.Globalization;
using System.Text.Json;

namespace CalicoSharp.Testing;

/// <summary>Where the demo finds the three executables: the published NativeAOT ones, or the built dlls.</summary>
public sealed record DemoTools(string[] Cni, string[] Bgpd, string[] Ctl)
{
    /// <summary>The NativeAOT executables in a folder (make publish's out/bin).</summary>
    public static DemoTools Published(string bin) => new(
        [Path.Combine(bin, "calicosharp")], [Path.Combine(bin, "calicosharp-bgpd")], [Path.Combine(bin, "calicosharpctl")]);

    /// <summary>The built dlls, run through 'dotnet' (what make test has).</summary>
    public static DemoTools Built() => new(
        ["dotnet", RepoPaths.ProjectDll("cni/calicosharp", "calicosharp")],
        ["dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd")],
        ["dotnet", RepoPaths.ProjectDll("ipam/calicosharpctl", "calicosharpctl")]);
}

/// <summary>One thing the demo proves, and whether it held.</summary>
public sealed record DemoCheck(string Name, bool Passed, string Detail);

/// <summary>
/// make demo: DESIGN.md's lab (etcd, a ToR running BIRD 2, three nodes running bgpd, two pods per node wired by the
/// CNI plugin), shown step by step with what each step means, checked, and removed at the end — also on failure or
/// Ctrl-C (cancel the token).
/// </summary>
public sealed class LabDemo(DemoTools tools, TextWriter output)
{
    private readonly List<DemoCheck> _checks = [];
    private BgpLab? _lab;
    private ServiceLab? _services;

    public IReadOnlyList<DemoCheck> Checks => _checks;

    /// <summary>The lab's namespace prefix and folder, once it has started (to verify they are gone afterwards).</summary>
    public string? LabPrefix => _lab?.Prefix;

    public string? LabDirectory => _lab?.Directory;

    /// <summary>When set (and only when the input is a terminal), waits for Enter before cleaning up, so the lab can be explored.</summary>
    public Func<CancellationToken, Task>? BeforeCleanup { get; init; }

    /// <summary>Runs the demo; true when every check passed. Everything it made is gone when it returns.</summary>
    public async Task<bool> RunAsync(CancellationToken ct)
    {
        try
        {
            await StepsAsync(ct).ConfigureAwait(false);
            if (BeforeCleanup is not null)
            {
                await BeforeCleanup(ct).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            output.WriteLine("\ninterrupted");
            _checks.Add(new DemoCheck("finished", false, "interrupted"));
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException or IOException or JsonException)
        {
            output.WriteLine($"\ndemo failed: {e.Message}");
            if (_lab is not null)
            {
                output.WriteLine(_lab.Diagnostics());
            }
            _checks.Add(new DemoCheck("finished", false, e.Message));
        }
        finally
        {
            Title("Cleaning up: bgpd, BIRD and etcd stopped, every namespace and folder removed");
            if (_services is not null)
            {
                await _services.DisposeAsync().ConfigureAwait(false);
            }
            if (_lab is not null)
            {
                await _lab.DisposeAsync().ConfigureAwait(false);
            }
        }
        output.WriteLine();
        foreach (DemoCheck c in _checks)
        {
            output.WriteLine($"  [{(c.Passed ? "ok" : "FAILED")}] {c.Name}{(c.Detail.Length > 0 ? ": " + c.Detail : "")}");
        }
        bool ok = _checks.Count > 0 && _checks.All(c => c.Passed);
        output.WriteLine(ok ? "demo: every check passed" : "demo: some checks failed");
        return ok;
    }

    private void Title(string text) => output.WriteLine($"\n\u001b[1m== {text}\u001b[0m");

    private void Explain(string text) => output.WriteLine(text);

    private void Check(string name, bool passed, string detail = "") => _checks.Add(new DemoCheck(name, passed, detail));

    private async Task StepsAsync(CancellationToken ct)
    {
        Title("Building the lab: etcd, a ToR switch running BIRD 2, three nodes running calicosharp-bgpd");
        _lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 3, l =>
        {
            l.BgpdCommand = tools.Bgpd;
            l.CniCommand = tools.Cni;
            l.FabricRoute = true;
        }).ConfigureAwait(false);
        BgpLab lab = _lab;
        ct.ThrowIfCancellationRequested();
        Explain($"""
            Each machine is a network namespace on this host (prefix {lab.Prefix}):
              {lab.Prefix}-tor     the Top-of-Rack switch: BIRD 2, AS {BgpLab.TorAsPerCompute}, one link to each node
              {string.Join("\n  ", lab.Nodes.Select(n => $"{n.Netns.Name}   {n.Name}: {n.Address}/30 (ToR {n.TorAddress}), AS {n.As}, calicosharp-bgpd"))}
            etcd holds the IP pool {BgpLab.Pool}, the nodes' blocks and the BGP peers ({lab.Etcd.UnixEndpoint}).
            Calico's "AS per compute server" design: every node peers with its ToR over eBGP.
            Below, calicosharpctl runs with --etcd-endpoints {lab.Etcd.UnixEndpoint}; $LAB is {lab.Directory}.
            """);

        Title("Pods start: the CNI plugin wires two pods on every node");
        Explain("""
            For each pod the runtime runs the plugin with CNI_COMMAND=ADD: IPAM claims a /26 block for the node (first pod)
            and gives the pod the next address; the plugin makes a veth pair (cali... on the node, eth0 in the pod),
            the pod's /32 and default route via 169.254.1.1, and the node's /32 host route to the pod.
            """);
        var pods = new List<LabPod>();
        foreach (LabNode n in lab.Nodes)
        {
            for (int i = 1; i <= 2; i++)
            {
                ct.ThrowIfCancellationRequested();
                var sw = Stopwatch.StartNew();
                LabPod pod = await lab.AddPodAsync(n, $"{n.Name}-pod{i}").ConfigureAwait(false);
                pods.Add(pod);
                output.WriteLine($"  CNI ADD {pod.Name,-12} on {n.Name}: {pod.Address,-14} ({sw.ElapsedMilliseconds} ms)");
            }
        }

        Title("bgpd sees each new block in etcd, blackholes it locally and announces it; the ToR passes it on");
        var sw2 = Stopwatch.StartNew();
        await BgpLab.WaitAsync(() => lab.Nodes.All(n => lab.Nodes.Where(m => m != n).All(m =>
                BgpLab.KernelRoutes(n).Contains(pods.First(p => p.Node == m).Block, StringComparison.Ordinal))),
            "every node to learn every other node's block", 60, lab.Diagnostics, ct).ConfigureAwait(false);
        output.WriteLine($"  every node has a kernel route to every other node's block ({sw2.ElapsedMilliseconds} ms after the last pod)");
        Check("routes converge", true, $"{sw2.ElapsedMilliseconds} ms");

        string socket = lab.ApiSocketTemplate;
        Title("IPAM: the pool, and one block per node (what each bgpd announces)");
        await CtlAsync(["ipam", "show", "--show-blocks"], ct).ConfigureAwait(false);

        LabNode node1 = lab.Nodes[0];
        Title($"{node1.Name}'s BGP session with its ToR (like calicoctl node status)");
        await CtlAsync(["node", "status", "--bgpd-socket", node1.ApiSocket], ct).ConfigureAwait(false);

        Title("The ToR's routes (BIRD): each node's block, learned from that node");
        Show("birdc show route", lab.Bird!.Birdc("show route"));

        Title($"{node1.Name}'s kernel routes: its own block blackholed, the others via the ToR (proto 81 = calicosharp), /32s to its pods");
        Show($"ip -n {node1.Netns.Name} route", TestNetns.Ip("-n", node1.Netns.Name, "route"));

        LabPod from = pods.First(p => p.Node == node1);
        LabPod to = pods.Last(p => p.Node != node1);
        Title($"TCP from {from.Name} ({from.Address}) to {to.Name} ({to.Address}) on {to.Node.Name}: pod → {from.Node.Name} → ToR → {to.Node.Name} → pod");
        bool tcp = await BgpLab.TcpExchangeAsync(from, to).ConfigureAwait(false);
        output.WriteLine(tcp ? $"  {to.Name} received \"hello from {from.Name} ({from.Address}) to {to.Name}\"" : "  the message did not arrive");
        Check("cross-node pod-to-pod TCP", tcp, $"{from.Name} → {to.Name}");

        Title($"The packet's path, hop by hop, from the sources that decide it: calicosharpctl trace {to.Address} --from lab/{from.Name}");
        var traceWatch = Stopwatch.StartNew();
        await CtlAsync(["trace", to.Address, "--from", "lab/" + from.Name, "--bgpd-socket", socket], ct, allowFailure: true).ConfigureAwait(false);
        long traceMs = traceWatch.ElapsedMilliseconds;
        output.WriteLine($"  (answered in {traceMs} ms)");
        ProcessResult json = await RunCtlAsync(["trace", to.Address, "--from", "lab/" + from.Name, "--bgpd-socket", socket, "-o", "json"], ct).ConfigureAwait(false);
        CheckTrace(json, to, from.Node);
        await ServiceStepsAsync(lab, pods, socket, ct).ConfigureAwait(false);
    }

    /// <summary>The first half of the journey: a Service, kube-proxy's NAT (written by the lab's stand-in), a client outside the cluster.</summary>
    private async Task ServiceStepsAsync(BgpLab lab, List<LabPod> pods, string socket, CancellationToken ct)
    {
        const string clusterIp = "10.96.0.10", externalIp = "172.30.250.10";
        const int port = 80, targetPort = 8080, nodePort = 30080;
        LabNode node1 = lab.Nodes[0];
        LabPod a = pods.First(p => p.Node == lab.Nodes[1]), b = pods.First(p => p.Node == lab.Nodes[2]), client = pods.First(p => p.Node == node1);
        Title("A Service: web, two replicas, reached by cluster IP, an external IP pinned to node1, and a NodePort");
        Explain($"""
            Most connections start at a Service, not at a pod. The Service lab/web has two replicas, {a.Name} ({a.Address}) and
            {b.Name} ({b.Address}), each answering on port {targetPort} with its name. It has the cluster IP {clusterIp}:{port}, the
            external IP {externalIp} (pinned to node1: the ToR routes it there) and the NodePort {nodePort} on every node.
            kube-proxy cannot run here, so a lab helper (KubeProxyRules) writes each node's NAT exactly as kube-proxy's
            iptables mode would: KUBE-SERVICES -> KUBE-SVC-/KUBE-EXT- -> KUBE-SEP- with -m statistic, DNAT, KUBE-MARK-MASQ.
            A client outside the cluster is a namespace behind the ToR ({ServiceLab.ClientAddress}).
            """);
        _services = ServiceLab.Start(lab);
        _services.Serve(a, targetPort);
        _services.Serve(b, targetPort);
        _services.Pin(node1, externalIp);
        var web = new LabService("lab", "web", clusterIp, [new LabServicePort("http", port, TargetPort: targetPort, NodePort: nodePort)],
            [new LabEndpoint(a.Address, a.Node.Name), new LabEndpoint(b.Address, b.Node.Name)]) { ExternalIps = [externalIp] };
        await _services.ProgramAsync([web]).ConfigureAwait(false);
        string svcChain = KubeProxyRules.ServiceChain("lab/web:http", "tcp");
        Show($"ip netns exec {node1.Netns.Name} iptables-save -t nat | grep {svcChain}",
            string.Join('\n', (await ProcessRunner.RunAsync("ip", ["netns", "exec", node1.Netns.Name, "iptables-save", "-t", "nat"], TimeSpan.FromSeconds(30)).ConfigureAwait(false))
                .Stdout.Split('\n').Where(l => l.Contains(svcChain, StringComparison.Ordinal) && l.StartsWith("-A", StringComparison.Ordinal))));

        async Task<Dictionary<string, int>> Connect(TestNetns from, string address, int p, int n)
        {
            var seen = new Dictionary<string, int>(StringComparer.Ordinal);
            for (int i = 0; i < n; i++)
            {
                ct.ThrowIfCancellationRequested();
                string answer = await ServiceLab.ConnectAsync(from, address, p).ConfigureAwait(false);
                seen[answer.Length == 0 ? "(no answer)" : answer] = seen.GetValueOrDefault(answer.Length == 0 ? "(no answer)" : answer) + 1;
            }
            output.WriteLine($"  {n} connections to {address}:{p}: {string.Join(", ", seen.OrderBy(x => x.Key, StringComparer.Ordinal).Select(x => $"{x.Value} answered by {x.Key}"))}");
            return seen;
        }
        bool Both(Dictionary<string, int> seen) => seen.Keys.Order(StringComparer.Ordinal).SequenceEqual(new[] { a.Name, b.Name }.Order(StringComparer.Ordinal));

        Title($"The outside client connects to the external IP {externalIp}:{port} and to node1's NodePort {node1.Address}:{nodePort}");
        Dictionary<string, int> viaExternal = await Connect(_services.Client, externalIp, port, 20).ConfigureAwait(false);
        Check("outside client reaches both replicas via the external IP", Both(viaExternal), string.Join(", ", viaExternal.Select(x => $"{x.Key} {x.Value}")));
        Dictionary<string, int> viaNodePort = await Connect(_services.Client, node1.Address, nodePort, 20).ConfigureAwait(false);
        Check("outside client reaches both replicas via node1's NodePort", Both(viaNodePort), string.Join(", ", viaNodePort.Select(x => $"{x.Key} {x.Value}")));

        Title($"A pod on node1 ({client.Name}) connects to the cluster IP {clusterIp}:{port}");
        Dictionary<string, int> viaCluster = await Connect(client.Netns, clusterIp, port, 4).ConfigureAwait(false);
        Check("a pod reaches the Service by its cluster IP", viaCluster.Keys.All(k => k == a.Name || k == b.Name), string.Join(", ", viaCluster.Select(x => $"{x.Key} {x.Value}")));

        Title($"The whole journey of the outside client's packet: calicosharpctl trace {externalIp}:{port} --from external");
        Explain("node1 owns the external IP, so the fabric delivers the packet there; node1's bgpd reads node1's rules (iptables -S, chain by chain as the packet enters them) and evaluates them.");
        await CtlAsync(["trace", $"{externalIp}:{port}", "--from", "external", "--bgpd-socket", socket], ct, allowFailure: true).ConfigureAwait(false);
        ProcessResult r = await RunCtlAsync(["trace", $"{externalIp}:{port}", "--from", "external", "--bgpd-socket", socket, "-o", "json"], ct).ConfigureAwait(false);
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        JsonElement root = d.RootElement;
        JsonElement[] paths = [.. root.GetProperty("service").GetProperty("paths").EnumerateArray()];
        JsonElement[] eps = [.. root.GetProperty("endpoints").EnumerateArray()];
        bool half = paths.Length == 2 && paths.All(p => Math.Abs(p.GetProperty("probability").GetDouble() - 0.5) < 1e-6 && p.GetProperty("dnat").GetBoolean());
        bool each = eps.Length == 2 && eps.All(e => e.GetProperty("reachable").GetBoolean())
            && eps.Select(e => e.GetProperty("address").GetString()).Order(StringComparer.Ordinal).SequenceEqual(new[] { a.Address, b.Address }.Order(StringComparer.Ordinal));
        Check("trace shows kube-proxy's DNAT with 50%/50% and each replica's path", r.ExitCode == 0 && half && each && root.GetProperty("node").GetString() == node1.Name,
            $"exit {r.ExitCode}, handled by {root.GetProperty("node").GetString()}, {paths.Length} paths, {eps.Count(e => e.GetProperty("reachable").GetBoolean())} reach their pod");
    }

    private void CheckTrace(ProcessResult r, LabPod to, LabNode source)
    {
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        JsonElement root = d.RootElement;
        Dictionary<string, JsonElement> hops = root.GetProperty("hops").EnumerateArray().ToDictionary(h => h.GetProperty("hop").GetString()!, h => h);
        string Fact(string hop, string key) => hops.TryGetValue(hop, out JsonElement h) && h.GetProperty("facts").TryGetProperty(key, out JsonElement v) ? v.GetString() ?? "" : "";
        Check("trace reaches the pod", r.ExitCode == 0 && root.GetProperty("brokenAt").ValueKind == JsonValueKind.Null, $"exit {r.ExitCode}");
        Check("trace names the block and its node", Fact("ipam", "block") == to.Block && Fact("ipam", "node") == to.Node.Name,
            $"{Fact("ipam", "block")} on {Fact("ipam", "node")}");
        Check("trace names the next hop (the ToR)", Fact("source-route", "nextHop") == source.TorAddress && Fact("source-route", "gateway") == source.TorAddress,
            Fact("source-route", "nextHop"));
        string expectedIf = Netlink.HostInterface.Name("lab", to.Name, "");
        Check("trace names the pod's interface", Fact("pod", "interface") == expectedIf && Fact("destination-route", "device") == expectedIf, Fact("pod", "interface"));
        Check("trace names the pod", Fact("pod", "pod") == to.Name && Fact("pod", "namespace") == "lab", $"{Fact("pod", "namespace")}/{Fact("pod", "pod")}");
    }

    private void Show(string command, string text)
    {
        output.WriteLine($"$ {command}");
        output.WriteLine(text.TrimEnd());
    }

    private Task<ProcessResult> RunCtlAsync(IEnumerable<string> args, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        return ProcessRunner.RunAsync(tools.Ctl[0], tools.Ctl.Skip(1).Concat(["--etcd-endpoints", _lab!.Etcd.UnixEndpoint]).Concat(args), TimeSpan.FromSeconds(30));
    }

    private async Task CtlAsync(string[] args, CancellationToken ct, bool allowFailure = false)
    {
        output.WriteLine($"$ calicosharpctl {string.Join(' ', args.Select(a => a.Replace(_lab!.Directory, "$LAB", StringComparison.Ordinal)))}");
        ProcessResult r = await RunCtlAsync(args, ct).ConfigureAwait(false);
        output.Write(r.Stdout);
        output.Write(r.Stderr);
        if (r.ExitCode != 0 && !allowFailure)
        {
            throw new InvalidOperationException($"calicosharpctl {string.Join(' ', args)} exited {r.ExitCode}");
        }
    }
}
