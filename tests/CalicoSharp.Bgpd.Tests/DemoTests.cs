using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>make demo's lab, end to end and non-interactive, with the built executables.</summary>
[Trait("Category", "Privileged")]
public sealed class DemoTests
{
    [Fact]
    public async Task The_demo_passes_every_check_and_leaves_nothing_behind()
    {
        var output = new StringWriter();
        var demo = new LabDemo(DemoTools.Built(), output);
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        bool ok = await demo.RunAsync(cts.Token);
        string text = output.ToString();
        Assert.True(ok, text);
        Assert.Equal(
            ["routes converge", "cross-node pod-to-pod TCP", "trace reaches the pod", "trace names the block and its node", "trace names the next hop (the ToR)",
                "trace names the pod's interface", "trace names the pod", "outside client reaches both replicas via the external IP",
                "outside client reaches both replicas via node1's NodePort", "a pod reaches the Service by its cluster IP", "trace shows kube-proxy's DNAT with 50%/50% and each replica's path"],
            demo.Checks.Select(c => c.Name));
        foreach (string shown in new[] { "calicosharpctl ipam show --show-blocks", "calicosharpctl node status", "birdc show route", "route", "received \"hello from", "calicosharpctl trace", "--from external", "KUBE-SEP-" })
        {
            Assert.Contains(shown, text, StringComparison.Ordinal);
        }
        Assert.DoesNotContain(demo.LabPrefix!, TestNetns.Ip("netns", "list"), StringComparison.Ordinal);
        Assert.False(Directory.Exists(demo.LabDirectory), "the lab folder is gone");
    }

    [Fact]
    public async Task A_cancelled_demo_still_removes_its_lab()
    {
        var text = new StringWriter();
        TextWriter output = TextWriter.Synchronized(text);
        string Text()
        {
            lock (output)
            {
                return text.ToString();
            }
        }
        var demo = new LabDemo(DemoTools.Built(), output);
        using var cts = new CancellationTokenSource();
        // Cancelled while the pods are being made (the lab exists by then).
        Task<bool> run = demo.RunAsync(cts.Token);
        await BgpLab.WaitAsync(() => Text().Contains("CNI ADD", StringComparison.Ordinal), "the first pod", 120);
        await cts.CancelAsync();
        Assert.False(await run);
        Assert.Contains("interrupted", Text(), StringComparison.Ordinal);
        Assert.DoesNotContain(demo.LabPrefix!, TestNetns.Ip("netns", "list"), StringComparison.Ordinal);
        Assert.False(Directory.Exists(demo.LabDirectory));
    }
}
