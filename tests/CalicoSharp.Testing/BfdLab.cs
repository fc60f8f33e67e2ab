using System.Globalization;
using System.Runtime.CompilerServices;
using CalicoSharp.Ipam;

namespace CalicoSharp.Testing;

/// <summary>
/// The BGP lab with BFD: BIRD 2 as the ToR runs <c>protocol bfd</c> and <c>bfd on</c> in each node's BGP protocol;
/// the nodes get Calico Enterprise's BFDConfiguration from etcd; each node holds one block. Shared by the lab tests
/// and the failover benchmark.
/// </summary>
public static class BfdLab
{
    public const string ConfigurationKey = "/calico/resources/v3/projectcalico.org/bfdconfigurations/default";

    private static readonly ConditionalWeakTable<LabNode, string> Blocks = [];

    /// <summary>BIRD's side, both intervals <paramref name="ms"/>, idle 1 s; extra lines inside the protocol (neighbors).</summary>
    public static string BirdBfd(int ms, int multiplier = 3, string extra = "") =>
        $"protocol bfd {{ interface \"*\" {{ min rx interval {ms} ms; min tx interval {ms} ms; idle tx interval 1 s; multiplier {multiplier}; }}; {extra} }}";

    public static string Configuration(int ms, int multiplier = 3, string pattern = "*") =>
        $$$"""{"kind":"BFDConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"nodeSelector":"all()","interfaces":[{"matchPattern":"{{{pattern}}}","minimumSendInterval":"{{{ms}}}ms","minimumRecvInterval":"{{{ms}}}ms","idleSendInterval":"1s","multiplier":{{{multiplier}}}}]}}""";

    /// <summary>A lab of <paramref name="nodes"/> nodes, AS per node, BIRD with BFD (<paramref name="ms"/> ×
    /// <paramref name="multiplier"/>) on every session, a block on each node, every node's routes in the others'
    /// kernels; with <paramref name="bfd"/> the nodes get the BFDConfiguration (else BIRD's BFD finds no partner and
    /// only the hold timer detects a failure).</summary>
    public static async Task<BgpLab> StartAsync(int nodes, bool bfd, int ms = 100, int multiplier = 3, Action<BgpLab>? configure = null)
    {
        BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, nodes, l =>
        {
            l.TorExtra = BirdBfd(ms, multiplier);
            l.TorPeerExtra = _ => "bfd on;";
            configure?.Invoke(l);
        }, startBgpd: false).ConfigureAwait(false);
        try
        {
            if (bfd)
            {
                await lab.PutAsync(ConfigurationKey, Configuration(ms, multiplier)).ConfigureAwait(false);
            }
            foreach (LabNode n in lab.Nodes)
            {
                IReadOnlyList<AssignedAddress> a = await lab.Ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = $"bfd-{n.Name}", Node = n.Name, Num4 = 1 }).ConfigureAwait(false);
                Blocks.AddOrUpdate(n, a[0].Block.ToString());
                lab.StartBgpd(n);
            }
            foreach (LabNode n in lab.Nodes)
            {
                foreach (LabNode other in lab.Nodes.Where(o => o != n))
                {
                    await BgpLab.WaitAsync(() => HasRouteTo(n, other), $"{n.Name} to learn {other.Name}'s block", 60, lab.Diagnostics).ConfigureAwait(false);
                }
                if (bfd)
                {
                    await BgpLab.WaitAsync(() => BirdUp(lab, n), $"BFD between the ToR and {n.Name} Up", 30, () => lab.Bird!.Birdc("show bfd sessions") + lab.Diagnostics()).ConfigureAwait(false);
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

    /// <summary>The block the lab gave <paramref name="n"/>.</summary>
    public static string BlockOf(LabNode n) => Blocks.TryGetValue(n, out string? b) ? b : throw new InvalidOperationException($"{n.Name} has no block of the BFD lab");

    /// <summary>Whether <paramref name="other"/>'s block is in <paramref name="n"/>'s kernel (bgpd's protocol).</summary>
    public static bool HasRouteTo(LabNode n, LabNode other) => BgpLab.KernelRoutes(n).Contains(BlockOf(other) + " ", StringComparison.Ordinal);

    /// <summary>BIRD's BFD session with the node is Up.</summary>
    public static bool BirdUp(BgpLab lab, LabNode n) =>
        lab.Bird!.Birdc("show bfd sessions").Split('\n').Any(l => l.StartsWith(n.Address + " ", StringComparison.Ordinal) && l.Contains(" Up ", StringComparison.Ordinal));

    /// <summary>Drops everything on the ToR's end of the node's link, both ways (iptables in the ToR's namespace), with
    /// no interface event: the link dies silently. <paramref name="cut"/> false puts it back.</summary>
    public static void CutSilently(BgpLab lab, LabNode n, bool cut)
    {
        string torIf = $"{lab.Prefix}t{n.Index}";
        foreach ((string chain, string dir) in new[] { ("INPUT", "-i"), ("OUTPUT", "-o") })
        {
            TestNetns.Ip("netns", "exec", lab.Tor.Name, "iptables", cut ? "-I" : "-D", chain, dir, torIf, "-j", "DROP");
        }
    }

    /// <summary>CPU seconds (user + system) a process has used, from /proc.</summary>
    public static double CpuSeconds(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // Fields 14 and 15 (utime, stime) of proc(5), counted after the command's closing parenthesis.
        return (double.Parse(f[11], CultureInfo.InvariantCulture) + double.Parse(f[12], CultureInfo.InvariantCulture)) / 100.0;
    }
}
