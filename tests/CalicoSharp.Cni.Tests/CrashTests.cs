using System.Text;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>The plugin killed with SIGKILL at each step of ADD and DEL (the test-only build calicosharp-faults,
/// CALICOSHARP_TEST_KILL_AT), so none of its own clean-up runs; then what a runtime does next: ADD again, then
/// DEL (or DEL again). Afterwards nothing of the pod is left: no link, route, handle, allocation, half-made claim.</summary>
[Trait("Category", "Privileged")]
public sealed class CrashTests : IDisposable
{
    private const string Handle = "k8s-pod-network.crashed";
    private readonly CniNodeLab lab = new(("10.78.0.0/16", "crash-v4"), ("fd78:1:2::/48", "crash-v6"));

    public void Dispose() => lab.Dispose();

    /// <summary>In the order ADD reaches them (IPv4 first): the claim's two phases, the allocation, then the dataplane.</summary>
    public static TheoryData<string> AddPoints() =>
    [
        "affinity-pending", "block-created", "affinity-confirmed", "allocated", "ipam",
        "veth", "host-sysctls", "host-up", "pod-sysctls", "pod-network", "host-routes",
    ];

    private string Conf() =>
        $$$"""{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"calicosharp","mtu":1400,"etcd_endpoints":"{{{lab.Etcd.UnixEndpoint}}}","nodename":"node1","ipam":{"type":"calicosharp-ipam","assign_ipv6":"true"}}""";

    /// <summary>calicosharp-faults as a runtime runs the plugin: a process in the node namespace.</summary>
    private async Task<ProcessResult> Run(string command, TestNetns pod, string? killAt = null)
    {
        var env = lab.Env(command, "crashed", pod).ToDictionary(k => k.Key, k => (string?)k.Value);
        env["CALICOSHARP_TEST_KILL_AT"] = killAt;
        var dll = RepoPaths.ProjectDll("tests/CalicoSharp.FaultPlugin", "calicosharp-faults");
        return await ProcessRunner.RunAsync("ip", ["netns", "exec", lab.Node.Name, "dotnet", dll], TimeSpan.FromSeconds(60), env, Conf());
    }

    private static void AssertKilled(ProcessResult r, string point) =>
        Assert.True(r.ExitCode == 128 + 9, $"expected the plugin killed (SIGKILL, 137) at {point}; exit {r.ExitCode}: {r.Stdout} {r.Stderr}");

    private static void AssertSucceeded(ProcessResult r, string what) =>
        Assert.True(r.ExitCode == 0, $"{what}: exit {r.ExitCode}: {r.Stdout} {r.Stderr}");

    private async Task AssertNothingLeft(TestNetns pod)
    {
        await lab.AssertNothingLeftAsync(Handle, pod, "10.78.");

        // Blocks stay the node's after DEL (they are kept while it lives); each claim is finished, none pending.
        foreach (var e in await lab.Ipam.Store.ListAsync(Keys.HostAffinityPrefix("node1"), keysOnly: false, default))
        {
            Assert.Equal(BlockAffinity.Confirmed, RecordJson.DecodeAffinity(e.Value, e.Key).State);
        }
    }

    [Theory]
    [MemberData(nameof(AddPoints))]
    public async Task ADD_killed_at_any_step_then_ADD_again_and_DEL_leave_nothing(string point)
    {
        var pod = lab.NewPod();
        AssertKilled(await Run("ADD", pod, point), point);

        var retried = await Run("ADD", pod);
        AssertSucceeded(retried, "ADD after the kill");
        var ips = PluginHarness.Parse(Encoding.UTF8.GetBytes(retried.Stdout)).GetProperty("ips").EnumerateArray()
            .Select(i => i.GetProperty("address").GetString()!).ToList();
        Assert.Equal(2, ips.Count);
        foreach (var ip in ips)
        {
            // The pod holds exactly the addresses its handle holds (a retried ADD takes no second one).
            Assert.Equal(Handle, (await lab.Ipam.LookupAsync(System.Net.IPAddress.Parse(ip.Split('/')[0])))!.HandleId);
        }

        Assert.Equal(2, (await lab.Ipam.GetUsageAsync()).Sum(u => u.InUse));
        AssertSucceeded(await Run("DEL", pod), "DEL");
        await AssertNothingLeft(pod);
    }

    [Fact]
    public async Task DEL_killed_after_its_first_release_then_DEL_again_leaves_nothing()
    {
        var pod = lab.NewPod();
        AssertSucceeded(await Run("ADD", pod), "ADD");
        AssertKilled(await Run("DEL", pod, "released"), "released");
        Assert.Equal(1, (await lab.Ipam.GetUsageAsync()).Sum(u => u.InUse));
        AssertSucceeded(await Run("DEL", pod), "DEL after the kill");
        await AssertNothingLeft(pod);
    }
}
