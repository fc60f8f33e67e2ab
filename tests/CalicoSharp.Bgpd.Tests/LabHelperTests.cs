using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>The lab's own helpers leave nothing behind when a step fails midway.</summary>
[Trait("Category", "Privileged")]
public class LabHelperTests
{
    [Fact]
    public async Task A_pod_whose_cni_add_fails_midway_leaves_no_namespace_and_gets_a_del()
    {
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.NodeMesh, nodes: 1, startBgpd: false);
        string calls = Path.Combine(lab.Directory, "cni-calls");
        // A plugin that "succeeds" with output that is no CNI result: AddPodAsync fails after the ADD ran.
        lab.CniCommand = ["sh", "-c", $"echo \"$CNI_COMMAND\" >> {calls}; echo not-a-cni-result"];
        await Assert.ThrowsAnyAsync<System.Text.Json.JsonException>(() => lab.AddPodAsync(lab.Nodes[0], "broken"));
        Assert.DoesNotContain($"{lab.Prefix}-broken", TestNetns.Ip("netns", "list"), StringComparison.Ordinal);
        Assert.Equal(["ADD", "DEL"], File.ReadAllLines(calls));
    }
}
