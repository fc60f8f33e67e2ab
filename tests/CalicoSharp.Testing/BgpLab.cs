using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using CalicoSharp.Ipam;

namespace CalicoSharp.Testing;

/// <summary>Calico's two ToR designs (calico docs, "BGP peering in the data center").</summary>
public enum TorModel
{
    /// <summary>eBGP: every node its own AS, the ToR another.</summary>
    AsPerComputeServer,

    /// <summary>iBGP: nodes and ToR share the rack's AS; the ToR reflects routes with next hop self.</summary>
    AsPerRack,

    /// <summary>No BGP on the switch (a plain L2 segment): Calico's default full iBGP mesh between the nodes.</summary>
    NodeMesh,

    /// <summary>A plain L2 segment, mesh off: node1 (label route-reflector, a cluster id) reflects for the others.</summary>
    NodeRouteReflector,
}

/// <summary>A pod the CNI plugin wired: its namespace and address (and its IPAM IPv6 address in a dual-stack lab).</summary>
public sealed record LabPod(string Name, LabNode Node, TestNetns Netns, string Address)
{
    /// <summary>The pod's IPv6 address; empty unless the lab is dual stack.</summary>
    public string Address6 { get; init; } = "";

    /// <summary>The /26 block that holds the pod's address (the lab pool's block size).</summary>
    public string Block => IpNet.Enclosing(System.Net.IPAddress.Parse(Address), 26).ToString();

    /// <summary>The /122 block that holds the pod's IPv6 address (the IPv6 pool's default block size).</summary>
    public string Block6 => IpNet.Enclosing(System.Net.IPAddress.Parse(Address6), 122).ToString();
}

/// <summary>One node namespace, its link to the ToR and its bgpd.</summary>
public sealed class LabNode
{
    internal LabNode(int index, TestNetns netns, uint asn, bool sharedSegment)
    {
        Index = index;
        Netns = netns;
        As = asn;
        Address = sharedSegment ? $"172.30.0.{10 + index}" : $"172.30.{index}.2";
        PrefixLength = sharedSegment ? 24 : 30;
        TorAddress = sharedSegment ? "" : $"172.30.{index}.1";
        Address2 = $"172.31.{index}.2";
        TorAddress2 = $"172.31.{index}.1";
        Address6 = $"fd30:0:{index}::2";
        TorAddress6 = $"fd30:0:{index}::1";
    }

    public int Index { get; }

    public string Name => $"node{Index}";

    public TestNetns Netns { get; }

    /// <summary>The node's address: on its own /30 to the ToR, or on the shared /24 segment of the mesh models.</summary>
    public string Address { get; }

    public int PrefixLength { get; }

    /// <summary>The ToR's end of the node's link; empty on a shared segment (no BGP on the switch).</summary>
    public string TorAddress { get; }

    /// <summary>The node's address on its link to the second ToR (a lab with two uplinks per node), a /30.</summary>
    public string Address2 { get; }

    /// <summary>The second ToR's end of that link.</summary>
    public string TorAddress2 { get; }

    /// <summary>The node's IPv6 address on its (first) ToR link, a /64 (a dual-stack lab).</summary>
    public string Address6 { get; }

    /// <summary>The ToR's IPv6 address on the node's link.</summary>
    public string TorAddress6 { get; }

    public uint As { get; }

    public Process? Bgpd { get; internal set; }

    public string LogFile { get; internal set; } = "";

    public string StateDir { get; internal set; } = "";

    /// <summary>The node's bgpd control API socket (in the lab's folder).</summary>
    public string ApiSocket { get; internal set; } = "";

    /// <summary>Metrics, reachable inside the node's namespace.</summary>
    public const string MetricsAddress = "127.0.0.1:9179";
}

/// <summary>
/// DESIGN.md's lab: etcd (unix socket, reachable from every namespace), a ToR namespace running BIRD 2, N node
/// namespaces each linked to the ToR by a veth pair and running calicosharp-bgpd, pods wired by the CNI
/// plugin. Every namespace, process and folder goes on Dispose, pass or fail.
/// </summary>
public sealed class BgpLab : IAsyncDisposable
{
    public const string Pool = "10.244.0.0/16";

    /// <summary>The IPv6 pool of a dual-stack lab (blocks of Calico's default /122).</summary>
    public const string Pool6 = "fd10:244::/112";

    public const uint TorAsPerCompute = 65100;
    public const uint RackAs = 64512;

    /// <summary>Every pod namespace the lab made, registered the moment it exists (also those of pods whose ADD failed
    /// midway): DisposeAsync removes each.</summary>
    private readonly List<TestNetns> _podNetns = [];

    private BgpLab(string prefix, TorModel model)
    {
        Prefix = prefix;
        Model = model;
        Directory = System.IO.Directory.CreateTempSubdirectory("calicosharp-lab-").FullName;
    }

    public string Prefix { get; }

    public TorModel Model { get; }

    public string Directory { get; }

    public EtcdServer Etcd { get; private set; } = null!;

    public IpamClient Ipam { get; private set; } = null!;

    public TestNetns Tor { get; private set; } = null!;

    /// <summary>The ToR's BIRD; null in the models without BGP on the switch.</summary>
    public BirdProcess? Bird { get; private set; }

    /// <summary>The second ToR of a lab with <see cref="Uplinks"/> 2; null otherwise.</summary>
    public TestNetns? Tor2 { get; private set; }

    /// <summary>The second ToR's BIRD.</summary>
    public BirdProcess? Bird2 { get; private set; }

    /// <summary>Dual stack (the ToR models only): IPv6 addresses on the ToR links, an IPv6 pool, an IPv6 BGP session
    /// (MP-BGP, Calico's second bgppeer per node) beside the IPv4 one, and the CNI plugin assigning both families.</summary>
    public bool Ipv6 { get; set; }

    /// <summary>Uplinks per node (the ToR models only): 2 adds a second ToR namespace with its own BIRD (the same AS
    /// as the first), linked to every node on 172.31.&lt;node&gt;.0/30, so each node has two equal paths (ECMP).</summary>
    public int Uplinks { get; set; } = 1;

    public List<LabNode> Nodes { get; } = [];

    /// <summary>How bgpd is started: the published binary when given, else the built dll through 'dotnet'. The
    /// default is looked up when first used, so a lab given published binaries (make demo) needs no JIT build.</summary>
    public string[] BgpdCommand
    {
        get => field ??= ["dotnet", RepoPaths.ProjectDll("bgpd/calicosharp-bgpd", "calicosharp-bgpd")];
        set;
    }

    /// <summary>How the CNI plugin is run; like <see cref="BgpdCommand"/>, the built dll unless set.</summary>
    public string[] CniCommand
    {
        get => field ??= ["dotnet", RepoPaths.ProjectDll("cni/calicosharp", "calicosharp")];
        set;
    }

    /// <summary>Whether the ToR sets itself as the next hop of what it passes on (else, as a route reflector does by
    /// default, the originating node stays the next hop, which the others reach through the fabric route).</summary>
    public bool TorNextHopSelf { get; set; } = true;

    /// <summary>Give each node a route to every node address (172.30.0.0/16) via its ToR, as a fabric would.</summary>
    public bool FabricRoute { get; set; }

    /// <summary>Extra BIRD config for the ToR protocols (e.g. an MD5 password).</summary>
    public Func<LabNode, string>? TorPeerExtra { get; set; }

    /// <summary>Extra top-level BIRD config for the ToR (e.g. a <c>protocol bfd</c>).</summary>
    public string? TorExtra { get; set; }

    public static async Task<BgpLab> StartAsync(TorModel model, int nodes = 3, Action<BgpLab>? configure = null, bool startBgpd = true)
    {
        var lab = new BgpLab(TestNetns.NewLabPrefix(), model);
        try
        {
            configure?.Invoke(lab);
            bool segment = model is TorModel.NodeMesh or TorModel.NodeRouteReflector;
            if (segment && (lab.Ipv6 || lab.Uplinks != 1))
            {
                throw new ArgumentException("IPv6 and two uplinks are built for the ToR models only");
            }
            if (lab.Uplinks is not (1 or 2))
            {
                throw new ArgumentException($"Uplinks is 1 or 2, not {lab.Uplinks}");
            }
            lab.Etcd = EtcdServer.Start();
            lab.Ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [lab.Etcd.UnixEndpoint] }));
            await lab.Ipam.AddPoolAsync(new PoolRequest { Cidr = Pool, Name = "lab-pool" }).ConfigureAwait(false);
            if (lab.Ipv6)
            {
                await lab.Ipam.AddPoolAsync(new PoolRequest { Cidr = Pool6, Name = "lab-pool-v6" }).ConfigureAwait(false);
            }
            await lab.PutAsync("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
                $$$"""{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":{{{RackAs}}},"nodeToNodeMeshEnabled":false,"logSeverityScreen":"Info"}}""").ConfigureAwait(false);
            lab.Tor = TestNetns.Create(lab.Prefix + "-tor");
            Sysctl(lab.Tor, "net.ipv4.ip_forward=1");
            if (lab.Ipv6)
            {
                Sysctl(lab.Tor, "net.ipv6.conf.all.forwarding=1");
            }
            if (lab.Uplinks == 2)
            {
                lab.Tor2 = TestNetns.Create(lab.Prefix + "-tor2");
                Sysctl(lab.Tor2, "net.ipv4.ip_forward=1");
            }
            if (segment)
            {
                // The switch is a bridge: the nodes share one L2 segment and peer with each other.
                TestNetns.Ip("-n", lab.Tor.Name, "link", "add", "br0", "type", "bridge");
                TestNetns.Ip("-n", lab.Tor.Name, "link", "set", "br0", "up");
                await lab.PutAsync("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
                    $$$"""{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":{{{RackAs}}},"nodeToNodeMeshEnabled":{{{(model == TorModel.NodeMesh ? "true" : "false")}}}}}""").ConfigureAwait(false);
            }
            if (model == TorModel.NodeRouteReflector)
            {
                // Calico's route reflector recipe: label the reflector, give it a cluster id, one bgppeer.
                await lab.PutAsync("/calico/resources/v3/projectcalico.org/nodes/node1",
                    """{"kind":"Node","apiVersion":"projectcalico.org/v3","metadata":{"name":"node1","labels":{"route-reflector":"true"}},"spec":{"bgp":{"routeReflectorClusterID":"244.0.0.1"}}}""").ConfigureAwait(false);
                await lab.PutAsync("/calico/resources/v3/projectcalico.org/bgppeers/peer-with-route-reflectors",
                    """{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"peer-with-route-reflectors"},"spec":{"nodeSelector":"!has(route-reflector)","peerSelector":"has(route-reflector)"}}""").ConfigureAwait(false);
            }
            for (int i = 1; i <= nodes; i++)
            {
                uint asn = model == TorModel.AsPerComputeServer ? 65000u + (uint)i : RackAs;
                var node = new LabNode(i, TestNetns.Create($"{lab.Prefix}-node{i}"), asn, segment)
                {
                    LogFile = Path.Combine(lab.Directory, $"bgpd-node{i}.log"),
                    StateDir = Path.Combine(lab.Directory, $"state-node{i}"),
                    ApiSocket = lab.ApiSocketTemplate.Replace("{node}", $"node{i}", StringComparison.Ordinal),
                };
                lab.Nodes.Add(node);
                string torIf = $"{lab.Prefix}t{i}";
                string nodeIf = $"{lab.Prefix}n{i}";
                TestNetns.Ip("link", "add", torIf, "netns", lab.Tor.Name, "type", "veth", "peer", "name", nodeIf, "netns", node.Netns.Name);
                if (segment)
                {
                    TestNetns.Ip("-n", lab.Tor.Name, "link", "set", torIf, "master", "br0");
                }
                else
                {
                    TestNetns.Ip("-n", lab.Tor.Name, "addr", "add", node.TorAddress + "/30", "dev", torIf);
                }
                TestNetns.Ip("-n", node.Netns.Name, "addr", "add", $"{node.Address}/{node.PrefixLength}", "dev", nodeIf);
                TestNetns.Ip("-n", lab.Tor.Name, "link", "set", torIf, "up");
                TestNetns.Ip("-n", node.Netns.Name, "link", "set", nodeIf, "up");
                Sysctl(node.Netns, "net.ipv4.ip_forward=1");
                if (lab.Ipv6)
                {
                    // nodad: the link is usable at once (BGP binds to the address), as on the IPv4 side.
                    TestNetns.Ip("-n", lab.Tor.Name, "addr", "add", node.TorAddress6 + "/64", "dev", torIf, "nodad");
                    TestNetns.Ip("-n", node.Netns.Name, "addr", "add", node.Address6 + "/64", "dev", nodeIf, "nodad");
                    Sysctl(node.Netns, "net.ipv6.conf.all.forwarding=1");
                    // Calico's way for IPv6: a second bgppeer, to the ToR's IPv6 address (MP-BGP, AFI 2).
                    await lab.PutAsync($"/calico/resources/v3/projectcalico.org/bgppeers/tor-node{i}-v6",
                        $$$"""{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor-node{{{i}}}-v6"},"spec":{"node":"node{{{i}}}","peerIP":"{{{node.TorAddress6}}}","asNumber":{{{(model == TorModel.AsPerComputeServer ? TorAsPerCompute : RackAs)}}}}}""").ConfigureAwait(false);
                }
                if (lab.Tor2 is not null)
                {
                    string tor2If = $"{lab.Prefix}u{i}";
                    string node2If = $"{lab.Prefix}v{i}";
                    TestNetns.Ip("link", "add", tor2If, "netns", lab.Tor2.Name, "type", "veth", "peer", "name", node2If, "netns", node.Netns.Name);
                    TestNetns.Ip("-n", lab.Tor2.Name, "addr", "add", node.TorAddress2 + "/30", "dev", tor2If);
                    TestNetns.Ip("-n", node.Netns.Name, "addr", "add", node.Address2 + "/30", "dev", node2If);
                    TestNetns.Ip("-n", lab.Tor2.Name, "link", "set", tor2If, "up");
                    TestNetns.Ip("-n", node.Netns.Name, "link", "set", node2If, "up");
                    // The node's address (its BGP identity, the IPv4 next hop it announces) is on the first link;
                    // Calico's sourceAddress "None" lets the session to the second ToR leave from this link's own
                    // address, which is then the next hop that ToR gets.
                    await lab.PutAsync($"/calico/resources/v3/projectcalico.org/bgppeers/tor2-node{i}",
                        $$$"""{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor2-node{{{i}}}"},"spec":{"node":"node{{{i}}}","peerIP":"{{{node.TorAddress2}}}","asNumber":{{{(model == TorModel.AsPerComputeServer ? TorAsPerCompute : RackAs)}}},"sourceAddress":"None"}}""").ConfigureAwait(false);
                }
                if (lab.FabricRoute && !segment)
                {
                    TestNetns.Ip("-n", node.Netns.Name, "route", "add", "172.30.0.0/16", "via", node.TorAddress);
                }
                if (segment)
                {
                    continue;
                }
                await lab.PutAsync($"/calico/resources/v3/projectcalico.org/bgppeers/tor-node{i}",
                    $$$"""{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor-node{{{i}}}"},"spec":{"node":"node{{{i}}}","peerIP":"{{{node.TorAddress}}}","asNumber":{{{(model == TorModel.AsPerComputeServer ? TorAsPerCompute : RackAs)}}}{{{lab.PeerSpecExtra?.Invoke(node) ?? ""}}}}}""").ConfigureAwait(false);
            }
            if (!segment)
            {
                lab.Bird = BirdProcess.Start(lab.Tor.Name, lab.TorConfig());
            }
            if (lab.Tor2 is not null)
            {
                lab.Bird2 = BirdProcess.Start(lab.Tor2.Name, lab.TorConfig(2));
            }
            if (!lab.AddressFlag)
            {
                // What calico/node's start-up writes: each node's record with its BGP address (the subnet's length).
                foreach (LabNode n in lab.Nodes)
                {
                    await lab.PutNodeAddressAsync(n, $"{n.Address}/{n.PrefixLength}").ConfigureAwait(false);
                }
            }
            if (startBgpd)
            {
                foreach (LabNode n in lab.Nodes)
                {
                    lab.StartBgpd(n);
                }
            }
            return lab;
        }
        catch
        {
            await lab.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Each node's bgpd control socket, with "{node}" for the node's name (calicosharpctl's --bgpd-socket form).</summary>
    public string ApiSocketTemplate => Path.Combine(Directory, "bgpd-{node}.sock");

    /// <summary>Runs the built calicosharpctl with these arguments.</summary>
    public static Task<ProcessResult> CtlAsync(params string[] args) =>
        ProcessRunner.RunDllAsync(RepoPaths.ProjectDll("ipam/calicosharpctl", "calicosharpctl"), args, TimeSpan.FromSeconds(30));

    /// <summary>bgpd's --secrets-dir: a secretKeyRef {name, key} is the file &lt;this&gt;/&lt;name&gt;/&lt;key&gt;.</summary>
    public string SecretsDirectory => Path.Combine(Directory, "secrets");

    /// <summary>Extra JSON fields for each node's bgppeers spec (starting with a comma).</summary>
    public Func<LabNode, string>? PeerSpecExtra { get; set; }

    private static void Sysctl(TestNetns ns, string setting) =>
        RunChecked("ip", "netns", "exec", ns.Name, "sysctl", "-q", "-w", setting);

    private static void RunChecked(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)}: {err}");
        }
    }

    /// <summary>BIRD's config for the ToR (<paramref name="tor"/> 2: the second ToR of a two-uplink lab, whose links
    /// are 172.31.&lt;node&gt;.0/30; it has no IPv6 sessions).</summary>
    public string TorConfig(int tor = 1)
    {
        var sb = new StringBuilder();
        bool ibgp = Model == TorModel.AsPerRack;
        bool v6 = Ipv6 && tor == 1;
        uint torAs = ibgp ? RackAs : TorAsPerCompute;
        sb.Append(CultureInfo.InvariantCulture, $$"""
            log "{dir}/bird.log" all;
            router id {{(tor == 1 ? "172.30.0.1" : "172.31.0.1")}};
            protocol device { scan time 1; }
            {{TorExtra}}
            protocol direct { ipv4;{{(v6 ? " ipv6;" : "")}} }
            protocol kernel { ipv4 { import none; export filter { if source = RTS_BGP then accept; reject; }; }; merge paths on; }
            # Outside the pools: nodes must not install these.
            protocol static foreign { ipv4; route 192.168.77.0/24 blackhole; route 0.0.0.0/0 blackhole; }
            template bgp node {
              local as {{torAs}};
              hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 2;
              graceful restart on;
              {{(ibgp ? "rr client; direct;" : "")}}
              ipv4 { import all; export all; {{(TorNextHopSelf ? "next hop self;" : "")}} };
            }

            """);
        if (v6)
        {
            // The IPv6 side: its own kernel protocol and sessions with an ipv6 channel (MP-BGP).
            sb.Append(CultureInfo.InvariantCulture, $$"""
                protocol kernel { ipv6 { import none; export filter { if source = RTS_BGP then accept; reject; }; }; merge paths on; }
                protocol static foreign6 { ipv6; route fd99:77::/48 blackhole; route ::/0 blackhole; }
                template bgp node6 {
                  local as {{torAs}};
                  hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 2;
                  graceful restart on;
                  {{(ibgp ? "rr client; direct;" : "")}}
                  ipv6 { import all; export all; {{(TorNextHopSelf ? "next hop self;" : "")}} };
                }

                """);
        }
        foreach (LabNode n in Nodes)
        {
            (string nodeAddress, string torAddress) = tor == 1 ? (n.Address, n.TorAddress) : (n.Address2, n.TorAddress2);
            // The second ToR only listens, as a ToR with a listen range for its servers does: the node must open
            // that session itself, from its address on the second link.
            sb.Append(CultureInfo.InvariantCulture, $"protocol bgp node{n.Index} from node {{ neighbor {nodeAddress} as {n.As}; source address {torAddress}; {(tor == 2 ? "passive on; " : "")}{TorPeerExtra?.Invoke(n)} }}\n");
            if (v6)
            {
                sb.Append(CultureInfo.InvariantCulture, $"protocol bgp node{n.Index}v6 from node6 {{ neighbor {n.Address6} as {n.As}; source address {n.TorAddress6}; {TorPeerExtra?.Invoke(n)} }}\n");
            }
        }
        return sb.ToString();
    }

    public async Task PutAsync(string key, string json)
    {
        KvTxnResult r = await Ipam.Store.TxnAsync([], [KvOp.Put(key, Encoding.UTF8.GetBytes(json))], CancellationToken.None).ConfigureAwait(false);
        if (!r.Succeeded)
        {
            throw new InvalidOperationException($"etcd put {key} failed");
        }
    }

    /// <summary>Start bgpd with <c>--ipv4-address</c> (the default); false: without, so it takes its address from its
    /// nodes record, which the lab writes as calico/node would (<see cref="PutNodeAddressAsync"/> changes it).</summary>
    public bool AddressFlag { get; set; } = true;

    /// <summary>Writes the node's nodes record with this <c>spec.bgp.ipv4Address</c> (the ToR models' AS per node too).</summary>
    public Task PutNodeAddressAsync(LabNode n, string ipv4Address) =>
        PutAsync(Keys.Node(n.Name), "{\"kind\":\"Node\",\"apiVersion\":\"projectcalico.org/v3\",\"metadata\":{\"name\":\"" + n.Name
            + "\"},\"spec\":{\"bgp\":{\"ipv4Address\":\"" + ipv4Address + "\"}}}");

    /// <summary>The node's link toward the ToR or the segment (its BGP address is on it).</summary>
    public string NodeInterface(LabNode n) => $"{Prefix}n{n.Index}";

    public void StartBgpd(LabNode n, params string[] extra)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { "netns", "exec", n.Netns.Name }.Concat(BgpdCommand).Concat(
        [
            "--node-name", n.Name, .. AddressFlag ? ["--ipv4-address", $"{n.Address}/{n.PrefixLength}"] : Array.Empty<string>(), "--etcd-endpoints", Etcd.UnixEndpoint, "--log-level", "debug",
            "--api-socket", n.ApiSocket, "--metrics-address", LabNode.MetricsAddress, "--secrets-dir", SecretsDirectory, "--state-dir", n.StateDir,
        ]).Concat(Model == TorModel.AsPerComputeServer ? ["--as", n.As.ToString(CultureInfo.InvariantCulture)] : [])
            .Concat(Ipv6 ? ["--ipv6-address", n.Address6 + "/64"] : []).Concat(extra))
        {
            psi.ArgumentList.Add(a);
        }
        var p = new Process { StartInfo = psi };
        var log = new StreamWriter(n.LogFile, append: true) { AutoFlush = true };
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (log)
                {
                    log.WriteLine(e.Data);
                }
            }
        };
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (log)
                {
                    log.WriteLine(e.Data);
                }
            }
        };
        p.Exited += (_, _) =>
        {
            lock (log)
            {
                log.WriteLine($"--- bgpd exited {p.ExitCode}");
            }
        };
        p.EnableRaisingEvents = true;
        p.Start();
        p.BeginErrorReadLine();
        p.BeginOutputReadLine();
        n.Bgpd = p;
    }

    /// <summary>A host outside the cluster, behind the ToR: a namespace of its own (named <paramref name="name"/> after
    /// the lab's prefix) with a /30 veth to the ToR — the ToR's end <paramref name="gateway"/>, the host's
    /// <paramref name="address"/> — both ends up. <paramref name="tag"/> (one letter) tells its interfaces apart; the
    /// caller adds the host's routes.</summary>
    public TestNetns AddOutsideHost(string name, char tag, string gateway, string address)
    {
        TestNetns host = TestNetns.Create($"{Prefix}-{name}");
        try
        {
            string torIf = $"{Prefix}t{tag}", hostIf = $"{Prefix}h{tag}";
            TestNetns.Ip("link", "add", torIf, "netns", Tor.Name, "type", "veth", "peer", "name", hostIf, "netns", host.Name);
            TestNetns.Ip("-n", Tor.Name, "addr", "add", gateway + "/30", "dev", torIf);
            TestNetns.Ip("-n", host.Name, "addr", "add", address + "/30", "dev", hostIf);
            TestNetns.Ip("-n", Tor.Name, "link", "set", torIf, "up");
            TestNetns.Ip("-n", host.Name, "link", "set", hostIf, "up");
            return host;
        }
        catch
        {
            host.Dispose();
            throw;
        }
    }

    /// <summary>Sends a signal to the node's bgpd and waits for it to exit (SIGKILL: a crash; SIGTERM: a planned stop).</summary>
    public static void StopBgpd(LabNode n, string signal = "TERM")
    {
        if (n.Bgpd is { HasExited: false } p)
        {
            using Process? k = Process.Start("kill", ["-" + signal, p.Id.ToString(CultureInfo.InvariantCulture)]);
            k?.WaitForExit();
            if (!p.WaitForExit(10_000))
            {
                p.Kill(true);
            }
            // WaitForExit(timeout) does not wait for the redirected output: without this, the last lines (how the
            // sessions were closed) could reach the log after the next bgpd opened it at the old end, and be overwritten.
            p.WaitForExit();
        }
    }

    /// <summary>Runs CNI ADD for a new pod on the node (the plugin process inside the node namespace). The pod's
    /// namespace is registered for the lab's cleanup as soon as it exists; an ADD that fails or times out midway is
    /// followed by a CNI DEL (the plugin removes its veth and releases the address) and the namespace goes at once.</summary>
    public async Task<LabPod> AddPodAsync(LabNode node, string name)
    {
        TestNetns ns = TestNetns.Create($"{Prefix}-{name}");
        // Before anything else can fail: whatever happens from here, DisposeAsync removes the namespace.
        _podNetns.Add(ns);
        string conf = $$$"""{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"calicosharp","mtu":1400,"etcd_endpoints":"{{{Etcd.UnixEndpoint}}}","nodename":"{{{node.Name}}}","bgpd_socket":"{{{node.ApiSocket}}}","ipam":{"type":"calicosharp-ipam"{{{(Ipv6 ? ",\"assign_ipv6\":\"true\"" : "")}}}}}""";
        Task<ProcessResult> Cni(string command) => ProcessRunner.RunAsync("ip", new[] { "netns", "exec", node.Netns.Name }.Concat(CniCommand), TimeSpan.FromSeconds(60),
            new Dictionary<string, string?>
            {
                ["CNI_COMMAND"] = command,
                ["CNI_CONTAINERID"] = $"{Prefix}-{name}",
                ["CNI_NETNS"] = ns.Path,
                ["CNI_IFNAME"] = "eth0",
                ["CNI_PATH"] = "/usr/lib/cni",
                ["CNI_ARGS"] = $"IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={name}",
                ["CALICOSHARP_STATE_DIR"] = node.StateDir,
            }, conf);
        try
        {
            ProcessResult r = await Cni("ADD").ConfigureAwait(false);
            if (r.ExitCode != 0)
            {
                throw new InvalidOperationException($"CNI ADD for {name} on {node.Name} failed: {r.Stdout} {r.Stderr}");
            }
            using JsonDocument d = JsonDocument.Parse(r.Stdout);
            string[] ips = [.. d.RootElement.GetProperty("ips").EnumerateArray().Select(e => e.GetProperty("address").GetString()!.Split('/')[0])];
            var pod = new LabPod(name, node, ns, ips.First(a => !a.Contains(':', StringComparison.Ordinal)))
            {
                Address6 = ips.FirstOrDefault(a => a.Contains(':', StringComparison.Ordinal)) ?? "",
            };
            return pod;
        }
        catch
        {
            // What the ADD may have done before it failed (a veth in the node, an address in IPAM) is undone by DEL,
            // best effort; the namespace goes whatever DEL says.
            try
            {
                await Cni("DEL").ConfigureAwait(false);
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
            {
            }
            ns.Dispose();
            _podNetns.Remove(ns);
            throw;
        }
    }

    /// <summary>A TCP exchange from one pod to another (nc), through the nodes and the ToR; with
    /// <paramref name="ipv6"/>, between their IPv6 addresses.</summary>
    public static async Task<bool> TcpExchangeAsync(LabPod from, LabPod to, int port = 7000, bool ipv6 = false)
    {
        string toAddress = ipv6 ? to.Address6 : to.Address;
        string fromAddress = ipv6 ? from.Address6 : from.Address;
        var server = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "netns", "exec", to.Netns.Name, "timeout", "10", "nc", "-l", "-N", toAddress, port.ToString(CultureInfo.InvariantCulture) })
        {
            server.ArgumentList.Add(a);
        }
        using Process s = Process.Start(server)!;
        Task<string> received = s.StandardOutput.ReadToEndAsync();
        string message = $"hello from {from.Name} ({fromAddress}) to {to.Name}";
        for (int attempt = 0; attempt < 20; attempt++)
        {
            await Task.Delay(100).ConfigureAwait(false);
            ProcessResult c = await ProcessRunner.RunAsync("ip", ["netns", "exec", from.Netns.Name, "timeout", "5", "nc", "-N", "-w", "2", toAddress, port.ToString(CultureInfo.InvariantCulture)],
                TimeSpan.FromSeconds(10), null, message + "\n").ConfigureAwait(false);
            if (c.ExitCode == 0)
            {
                break;
            }
        }
        await s.WaitForExitAsync().ConfigureAwait(false);
        return (await received.ConfigureAwait(false)).Contains(message, StringComparison.Ordinal);
    }

    /// <summary>The node's routes of bgpd's protocol (ip route show proto 81).</summary>
    public static string KernelRoutes(LabNode n) => TestNetns.Ip("-n", n.Netns.Name, "route", "show", "proto", "81");

    /// <summary>The node's IPv6 routes of bgpd's protocol (ip -6 route show proto 81).</summary>
    public static string KernelRoutes6(LabNode n) => TestNetns.Ip("-6", "-n", n.Netns.Name, "route", "show", "proto", "81");

    public static async Task WaitAsync(Func<bool> condition, string what, double seconds = 30, Func<string>? diagnostics = null, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            ct.ThrowIfCancellationRequested();
            if (sw.Elapsed.TotalSeconds > seconds)
            {
                throw new TimeoutException($"waited {seconds} s for {what}\n{diagnostics?.Invoke()}");
            }
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
    }

    public string Diagnostics()
    {
        var sb = new StringBuilder();
        foreach (LabNode n in Nodes)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"--- {n.Name} routes:\n{TestNetns.Ip("-n", n.Netns.Name, "route")}");
            if (Ipv6)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"--- {n.Name} IPv6 routes:\n{TestNetns.Ip("-6", "-n", n.Netns.Name, "route")}");
            }
            if (File.Exists(n.LogFile))
            {
                string[] lines = File.ReadAllLines(n.LogFile);
                sb.AppendLine(CultureInfo.InvariantCulture, $"--- {n.Name} bgpd log (last 40):\n{string.Join("\n", lines.TakeLast(40))}");
            }
        }
        sb.AppendLine(CultureInfo.InvariantCulture, $"--- tor routes:\n{TestNetns.Ip("-n", Tor.Name, "route")}");
        sb.AppendLine(Bird?.Birdc("show protocols"));
        if (Tor2 is not null)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"--- tor2 routes:\n{TestNetns.Ip("-n", Tor2.Name, "route")}");
            sb.AppendLine(Bird2?.Birdc("show protocols"));
        }
        return sb.ToString();
    }

    public async ValueTask DisposeAsync()
    {
        // Each step on its own: one failing must not leave the rest behind.
        foreach (LabNode n in Nodes)
        {
            try
            {
                StopBgpd(n, "KILL");
            }
            catch (InvalidOperationException)
            {
            }
            n.Bgpd?.Dispose();
        }
        var steps = new List<Action>();
        steps.AddRange(_podNetns.Select(ns => (Action)ns.Dispose));
        steps.Add(() => Bird?.Dispose());
        steps.Add(() => Bird2?.Dispose());
        steps.AddRange(Nodes.Select(n => (Action)n.Netns.Dispose));
        steps.Add(() => Tor?.Dispose());
        steps.Add(() => Tor2?.Dispose());
        steps.Add(() => Ipam?.Dispose());
        steps.Add(() => Etcd?.Dispose());
        var errors = new List<Exception>();
        foreach (Action step in steps)
        {
            try
            {
                step();
            }
            catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException)
            {
                errors.Add(e);
            }
        }
        try
        {
            System.IO.Directory.Delete(Directory, true);
        }
        catch (IOException)
        {
        }
        await Task.CompletedTask.ConfigureAwait(false);
        if (errors.Count > 0)
        {
            throw new AggregateException("lab cleanup", errors);
        }
    }
}
