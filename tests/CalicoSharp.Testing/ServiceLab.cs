using System.Diagnostics;
using System.Globalization;

namespace CalicoSharp.Testing;

/// <summary>
/// The Service part of the lab, on top of a <see cref="BgpLab"/> started with <c>FabricRoute</c>: a client outside the
/// cluster (a namespace behind the ToR, 172.30.200.2), addresses pinned to a node (on its loopback, routed to it by the
/// ToR), TCP servers in pods that answer with the pod's name, and kube-proxy's rules on every node (written by
/// <see cref="KubeProxyRules"/>, which stands in for kube-proxy). Everything it made goes on Dispose.
/// </summary>
public sealed class ServiceLab : IAsyncDisposable
{
    public const string ClientAddress = "172.30.200.2";
    public const string ClientGateway = "172.30.200.1";
    public const string ClusterCidr = BgpLab.Pool;

    private readonly BgpLab _lab;
    private readonly List<Process> _servers = [];

    private ServiceLab(BgpLab lab, TestNetns client)
    {
        _lab = lab;
        Client = client;
    }

    public TestNetns Client { get; }

    public static ServiceLab Start(BgpLab lab)
    {
        ArgumentNullException.ThrowIfNull(lab);
        TestNetns client = lab.AddOutsideHost("outside", 'c', ClientGateway, ClientAddress);
        try
        {
            TestNetns.Ip("-n", client.Name, "route", "add", "default", "via", ClientGateway);
            return new ServiceLab(lab, client);
        }
        catch
        {
            client.Dispose();
            throw;
        }
    }

    /// <summary>Pins an address (an external IP, a load balancer IP) to a node: on its loopback, and the ToR routes it there.</summary>
    public void Pin(LabNode node, string address)
    {
        ArgumentNullException.ThrowIfNull(node);
        TestNetns.Ip("-n", node.Netns.Name, "addr", "add", address + "/32", "dev", "lo");
        TestNetns.Ip("-n", _lab.Tor.Name, "route", "replace", address + "/32", "via", node.Address);
    }

    /// <summary>A TCP server in the pod on the port that answers every connection with the pod's name.</summary>
    public void Serve(LabPod pod, int port)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        // -t3: the client sends nothing, so the closing phase starts as soon as it connects; socat's default half
        // second would end the forked shell before it answers on a loaded machine.
        foreach (string a in new[] { "netns", "exec", pod.Netns.Name, "socat", "-t3", $"TCP-LISTEN:{port.ToString(CultureInfo.InvariantCulture)},fork,reuseaddr", $"SYSTEM:echo {pod.Name}" })
        {
            psi.ArgumentList.Add(a);
        }
        _servers.Add(Process.Start(psi)!);
    }

    /// <summary>One TCP connection from a namespace; what the server answered (empty when nothing came).</summary>
    public static async Task<string> ConnectAsync(TestNetns from, string address, int port)
    {
        ArgumentNullException.ThrowIfNull(from);
        string target = address.Contains(':', StringComparison.Ordinal) ? $"[{address}]" : address;
        // -t3: stdin is empty, so the closing phase starts at once; socat's default half-second wait for the answer
        // lost it when the server's shell took longer (a loaded machine). The server waits as long (Serve).
        ProcessResult r = await ProcessRunner.RunAsync("ip", ["netns", "exec", from.Name, "socat", "-t3", "-T3", "-", $"TCP:{target}:{port.ToString(CultureInfo.InvariantCulture)},connect-timeout=3"],
            TimeSpan.FromSeconds(10), null, "").ConfigureAwait(false);
        return r.Stdout.Trim();
    }

    /// <summary>Programs every node as kube-proxy would for these Services: iptables mode, or nftables mode (the other cleared).</summary>
    public async Task ProgramAsync(IReadOnlyList<LabService> services, bool nftables = false)
    {
        foreach (LabNode n in _lab.Nodes)
        {
            if (nftables)
            {
                await KubeProxyRules.ClearIptablesAsync(n.Netns.Name).ConfigureAwait(false);
                await KubeProxyRules.ApplyNftablesAsync(n.Netns.Name, services, n.Name, ClusterCidr).ConfigureAwait(false);
            }
            else
            {
                await KubeProxyRules.ClearNftablesAsync(n.Netns.Name).ConfigureAwait(false);
                await KubeProxyRules.ApplyIptablesAsync(n.Netns.Name, services, n.Name, ClusterCidr).ConfigureAwait(false);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        foreach (Process p in _servers)
        {
            try
            {
                if (!p.HasExited)
                {
                    p.Kill(entireProcessTree: true);
                    await p.WaitForExitAsync().ConfigureAwait(false);
                }
            }
            catch (InvalidOperationException)
            {
            }
            p.Dispose();
        }
        Client.Dispose();
    }
}
