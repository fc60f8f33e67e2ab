using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>ippools natOutgoing in the lab: an "outside" namespace behind the ToR that knows the node addresses
/// (172.30.0.0/16) but has no route back to the pool, as a host outside the cluster.</summary>
[Trait("Category", "Privileged")]
public sealed class NatOutgoingLabTests
{
    private const string OutsideAddress = "172.30.201.2", OutsideGateway = "172.30.201.1";
    private const int Port = 7100;

    /// <summary>A TCP server that answers every connection with the address the connection came from.</summary>
    private static Process ServePeerAddress(TestNetns ns, string address)
    {
        var psi = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in new[] { "netns", "exec", ns.Name, "socat", "-t3", $"TCP-LISTEN:{Port.ToString(CultureInfo.InvariantCulture)},bind={address},fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR" })
        {
            psi.ArgumentList.Add(a);
        }
        return Process.Start(psi)!;
    }

    private static async Task SetNatOutgoingAsync(BgpLab lab, bool on)
    {
        string key = Keys.Pool("lab-pool");
        KvEntry entry = await lab.Ipam.Store.GetAsync(key, CancellationToken.None) ?? throw new InvalidOperationException("no lab pool");
        JsonNode pool = JsonNode.Parse(entry.Value)!;
        pool["spec"]!["natOutgoing"] = on;
        await lab.PutAsync(key, pool.ToJsonString());
    }

    private static async Task<bool> TableExistsAsync(LabNode n) =>
        (await ProcessRunner.RunAsync("ip", ["netns", "exec", n.Netns.Name, "nft", "list", "table", "inet", "calicosharp"], TimeSpan.FromSeconds(10), null, "")).ExitCode == 0;

    private static async Task UntilAsync(Func<Task<bool>> condition, string what, BgpLab lab, double seconds = 30)
    {
        var sw = Stopwatch.StartNew();
        while (!await condition())
        {
            if (sw.Elapsed.TotalSeconds > seconds)
            {
                throw new TimeoutException($"waited {seconds} s for {what}\n{lab.Diagnostics()}");
            }
            await Task.Delay(200);
        }
    }

    private static async Task<JsonElement> StatusAsync(LabNode n)
    {
        ProcessResult r = await BgpLab.CtlAsync("node", "status", "--bgpd-socket", n.ApiSocket, "-o", "json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        using JsonDocument d = JsonDocument.Parse(r.Stdout);
        return d.RootElement.Clone();
    }

    [Fact]
    public async Task A_pod_reaches_an_outside_address_only_with_natOutgoing_and_arrives_with_its_node_address()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 2, l => l.FabricRoute = true);
        using TestNetns outside = lab.AddOutsideHost("far", 'f', OutsideGateway, OutsideAddress);
        // The outside host knows the node addresses only: no route back to the pool.
        TestNetns.Ip("-n", outside.Name, "route", "add", "172.30.0.0/16", "via", OutsideGateway);
        LabNode node1 = lab.Nodes[0], node2 = lab.Nodes[1];
        LabPod a = await lab.AddPodAsync(node1, "nat-a");
        LabPod b = await lab.AddPodAsync(node2, "nat-b");
        using Process far = ServePeerAddress(outside, OutsideAddress);
        using Process peer = ServePeerAddress(b.Netns, b.Address);
        try
        {
            await BgpLab.WaitAsync(() => BgpLab.KernelRoutes(node1).Contains(b.Block, StringComparison.Ordinal) && BgpLab.KernelRoutes(node2).Contains(a.Block, StringComparison.Ordinal),
                "each node's block at the other", 60, lab.Diagnostics);
            await UntilAsync(async () => await ServiceLab.ConnectAsync(a.Netns, b.Address, Port) == a.Address, "pod to pod", lab);

            // Without natOutgoing the pod's own address leaves, and the outside has no way back.
            Assert.Equal("", await ServiceLab.ConnectAsync(a.Netns, OutsideAddress, Port));
            Assert.False(await TableExistsAsync(node1));

            // Applied live: the next connection arrives from node1's address.
            await SetNatOutgoingAsync(lab, true);
            await UntilAsync(async () => await ServiceLab.ConnectAsync(a.Netns, OutsideAddress, Port) == node1.Address, "the masqueraded connection", lab);
            Assert.True(await TableExistsAsync(node2));
            // Between pods the source is kept.
            Assert.Equal(a.Address, await ServiceLab.ConnectAsync(a.Netns, b.Address, Port));
            JsonElement status = await StatusAsync(node1);
            JsonElement nat = status.GetProperty("natOutgoing");
            Assert.True(nat.GetProperty("programmed").GetBoolean(), status.ToString());
            Assert.Equal([BgpLab.Pool], nat.GetProperty("masqueradePools").EnumerateArray().Select(e => e.GetString()));
            Assert.Equal("", nat.GetProperty("error").GetString());
            ProcessResult metrics = await ProcessRunner.RunAsync("ip", ["netns", "exec", node1.Netns.Name, "curl", "-s", $"http://{LabNode.MetricsAddress}/metrics"], TimeSpan.FromSeconds(10), null, "");
            Assert.Contains("calicosharp_nat_outgoing_programmed 1", metrics.Stdout, StringComparison.Ordinal);

            // trace names the masquerade on the source side.
            ProcessResult t = await BgpLab.CtlAsync("--etcd-endpoints", lab.Etcd.UnixEndpoint, "trace", OutsideAddress, "--from", "lab/nat-a", "--bgpd-socket", lab.ApiSocketTemplate, "-o", "json");
            using (JsonDocument d = JsonDocument.Parse(t.Stdout))
            {
                JsonElement hop = d.RootElement.GetProperty("hops").EnumerateArray().Single(h => h.GetProperty("hop").GetString() == "nat-outgoing");
                Assert.Equal("ok", hop.GetProperty("status").GetString());
                Assert.Equal("true", hop.GetProperty("facts").GetProperty("masquerade").GetString());
                Assert.Contains($"leaves with {node1.Name}'s address", hop.GetProperty("summary").GetString(), StringComparison.Ordinal);
            }

            // Off again, live: the table goes, the outside is unreachable again.
            await SetNatOutgoingAsync(lab, false);
            await UntilAsync(async () => !await TableExistsAsync(node1), "the table removed", lab);
            Assert.Equal("", await ServiceLab.ConnectAsync(a.Netns, OutsideAddress, Port));

            // SIGTERM (a restart) keeps the table, SIGINT (stopping for good) removes it.
            await SetNatOutgoingAsync(lab, true);
            await UntilAsync(async () => await TableExistsAsync(node1) && await TableExistsAsync(node2), "the table on both nodes", lab);
            BgpLab.StopBgpd(node1, "TERM");
            BgpLab.StopBgpd(node2, "INT");
            Assert.True(await TableExistsAsync(node1));
            Assert.False(await TableExistsAsync(node2));
            Assert.Equal(node1.Address, await ServiceLab.ConnectAsync(a.Netns, OutsideAddress, Port));
        }
        finally
        {
            foreach (Process p in new[] { far, peer })
            {
                if (!p.HasExited)
                {
                    p.Kill(entireProcessTree: true);
                    await p.WaitForExitAsync();
                }
            }
        }
    }
}
