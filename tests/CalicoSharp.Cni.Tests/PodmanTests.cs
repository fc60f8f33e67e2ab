using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>The shipped network config under a real container runtime: Debian's podman 4.3 with its CNI
/// backend (libcni 1.1, which knows spec versions up to 1.0.0) runs containers on
/// cni/10-calicosharp.conflist as installed, calicosharp then portmap, in the lab's node namespace, against
/// the lab's etcd. Everything is removed, pass or fail.</summary>
[Trait("Category", "Privileged")]
public sealed class PodmanTests : IDisposable
{
    private const string Network = "k8s-pod-network";
    private const string NodeName = "podman-node";
    private const string PoolPrefix = "10.86.";

    // The node's own address, where its host ports answer (a node has one; the bare lab namespace gets it on lo).
    private const string NodeAddress = "10.87.0.1";

    private readonly CniNodeLab lab = new(("10.86.0.0/16", "podman-v4"));
    private readonly PodmanRuntime podman;

    public PodmanTests()
    {
        try
        {
            podman = new PodmanRuntime(lab.Node);
        }
        catch
        {
            lab.Dispose();
            throw;
        }
    }

    private string LogFile => Path.Combine(podman.Dir, "cni.log");

    public void Dispose()
    {
        try
        {
            podman.Dispose();
        }
        finally
        {
            lab.Dispose();
        }
    }

    /// <summary>The sample as the repository ships it, with only what differs per site put in: etcd, the node's
    /// name, the log file and bgpd's socket (a path nobody listens on: the plugin assigns against etcd itself).</summary>
    private string ShippedConflist()
    {
        var conflist = JsonNode.Parse(File.ReadAllText(Path.Combine(RepoPaths.Root, "cni", "10-calicosharp.conflist")))!.AsObject();
        Assert.Equal("1.0.0", (string?)conflist["cniVersion"]);
        Assert.Equal(Network, (string?)conflist["name"]);
        var plugins = conflist["plugins"]!.AsArray();
        Assert.Equal(["calicosharp", "portmap"], plugins.Select(p => (string?)p!["type"]));
        var nodeNameFile = Path.Combine(podman.Dir, "nodename");
        File.WriteAllText(nodeNameFile, NodeName + "\n");
        var site = new Dictionary<string, string>
        {
            ["etcd_endpoints"] = lab.Etcd.UnixEndpoint,
            ["nodename_file"] = nodeNameFile,
            ["log_file_path"] = LogFile,
            ["bgpd_socket"] = Path.Combine(podman.Dir, "no-bgpd.sock"),
        };
        var calico = plugins[0]!.AsObject();
        foreach (var (key, value) in site)
        {
            Assert.True(calico.ContainsKey(key), $"the shipped conflist has no {key}");
            calico[key] = value;
        }

        return conflist.ToJsonString();
    }

    /// <summary>The plugins as installed, built by 'make build' (JIT), each with its state in the runtime's folder.</summary>
    private void InstallPlugins()
    {
        foreach (var (name, project) in new[] { ("calicosharp", "cni/calicosharp"), ("calicosharp-ipam", "cni/calicosharp-ipam") })
        {
            podman.AddPluginScript(name, $"""
                #!/bin/sh
                export CALICOSHARP_STATE_DIR={Path.Combine(podman.Dir, "state")}
                exec dotnet {RepoPaths.ProjectDll(project, name)} "$@"
                """ + "\n");
        }

        podman.AddPlugin("portmap", "/usr/lib/cni/portmap");
    }

    [Fact]
    public async Task Podman_runs_two_containers_on_the_shipped_conflist_and_rm_leaves_nothing()
    {
        InstallPlugins();
        podman.AddNetworkConfig("10-calicosharp.conflist", ShippedConflist());
        TestNetns.Ip("-n", lab.Node.Name, "addr", "add", NodeAddress + "/32", "dev", "lo");
        const string image = "localhost/calicosharp-busybox:lab";
        await podman.ImportBusyboxAsync(image);

        var a = await podman.StartAsync(lab.Prefix + "-a", image, Network, "--publish", "8080:80");
        var b = await podman.StartAsync(lab.Prefix + "-b", image, Network);
        await AssertAttachedAsync(a);
        await AssertAttachedAsync(b);
        Assert.NotEqual(a.Address, b.Address);

        // portmap ran after calicosharp, with the address calicosharp gave.
        var nat = await NatRulesAsync();
        Assert.Contains($"id: \\\"{a.Id}\\\"", nat, StringComparison.Ordinal);
        Assert.Contains($"--to-destination {a.Address}:80", nat, StringComparison.Ordinal);
        Assert.DoesNotContain(b.Id, nat, StringComparison.Ordinal);

        foreach (var (from, to) in new[] { (a, b), (b, a) })
        {
            var ping = await podman.ExecAsync(from.Name, "ping", "-c", "1", "-W", "5", to.Address);
            Assert.True(ping.ExitCode == 0, $"{from.Name} cannot ping {to.Name} at {to.Address}: {ping.Stdout}{ping.Stderr}");
        }

        Assert.Equal($"hello from {b.Name}", await TcpAsync(b, 7001, a, b.Address, 7001));
        Assert.Equal($"hello from {a.Name}", await TcpAsync(a, 7002, b, a.Address, 7002));

        // The host port: b reaches a through the node's address, DNATed by portmap's rules.
        Assert.Equal($"hello from {a.Name}", await TcpAsync(a, 80, b, NodeAddress, 8080));

        await podman.MustAsync("rm", "--force", "--time", "0", a.Name, b.Name);
        Assert.Equal(string.Empty, await podman.MustAsync("ps", "--all", "--quiet"));
        var left = await podman.WaitForOwnProcessesAsync(TimeSpan.FromSeconds(15));
        Assert.True(left.Count == 0, "still running: " + string.Join(" | ", left.Select(p => $"{p.Pid} {p.CommandLine}")));
        await AssertDetachedAsync(a);
        await AssertDetachedAsync(b);
        Assert.All(podman.Cgroups(), g => Assert.EndsWith(podman.CgroupParent, g, StringComparison.Ordinal));
        nat = await NatRulesAsync();
        Assert.DoesNotContain("CNI-DN-", nat, StringComparison.Ordinal);
        Assert.DoesNotContain(a.Id, nat, StringComparison.Ordinal);
        Assert.DoesNotContain(a.Address, nat, StringComparison.Ordinal);
    }

    /// <summary>ADD ran for the container: its address is in etcd under the container's handle on this node,
    /// its host veth (named after the container id: podman passes no K8S_POD_NAMESPACE) routes it, and
    /// libcni cached the attachment for DEL.</summary>
    private async Task AssertAttachedAsync(PodmanContainer c)
    {
        Assert.StartsWith(PoolPrefix, c.Address, StringComparison.Ordinal);
        Assert.Contains($"calicosharp ADD {c.Id} done", await File.ReadAllTextAsync(LogFile), StringComparison.Ordinal);
        var lookup = await lab.Ipam.LookupAsync(IPAddress.Parse(c.Address));
        Assert.NotNull(lookup);
        Assert.True(lookup.Allocated);
        Assert.Equal($"{Network}.{c.Id}", lookup.HandleId);
        Assert.Equal(NodeName, lookup.Attributes?["node"]);
        Assert.Contains($"{c.Address} dev cali{c.Id[..11]} scope link", TestNetns.Ip("-n", lab.Node.Name, "route"), StringComparison.Ordinal);
        Assert.True(File.Exists(CacheEntry(c)), $"libcni's cache has no {CacheEntry(c)}");
        Assert.NotEmpty(PodmanRuntime.MountsUnder(c.SandboxKey));
        Assert.Equal("conmon", File.ReadAllText($"/proc/{c.ConmonPid}/comm").Trim());
        Assert.Contains(podman.Cgroups(), g => g.EndsWith("/libpod-" + c.Id, StringComparison.Ordinal));
    }

    /// <summary>DEL ran for the container and nothing of it is left: no veth, host route, handle, allocation,
    /// libcni cache entry, network namespace or runc state.</summary>
    private async Task AssertDetachedAsync(PodmanContainer c)
    {
        Assert.Contains($"calicosharp DEL {c.Id} done", await File.ReadAllTextAsync(LogFile), StringComparison.Ordinal);
        await lab.AssertNothingLeftAsync($"{Network}.{c.Id}", null, PoolPrefix);
        Assert.False((await lab.Ipam.LookupAsync(IPAddress.Parse(c.Address)))?.Allocated ?? false);
        Assert.False(File.Exists(CacheEntry(c)), $"{CacheEntry(c)} is left");
        if (Directory.Exists(PodmanRuntime.CniCacheDir))
        {
            Assert.DoesNotContain(Directory.EnumerateFiles(PodmanRuntime.CniCacheDir), f => f.Contains(c.Id, StringComparison.Ordinal));
        }

        Assert.Empty(PodmanRuntime.MountsUnder(c.SandboxKey));
        Assert.False(File.Exists(c.SandboxKey), $"{c.SandboxKey} is left");
        Assert.False(Directory.Exists(Path.Combine(PodmanRuntime.RuncStateDir, c.Id)));
    }

    private static string CacheEntry(PodmanContainer c) => Path.Combine(PodmanRuntime.CniCacheDir, $"{Network}-{c.Id}-eth0");

    private async Task<string> NatRulesAsync()
    {
        var r = await ProcessRunner.RunAsync("ip", ["netns", "exec", lab.Node.Name, "iptables-save", "-t", "nat"], TimeSpan.FromSeconds(30));
        Assert.True(r.ExitCode == 0, r.Stderr);
        return r.Stdout;
    }

    /// <summary>One TCP connection from <paramref name="client"/> to address:port, answered by a one-shot busybox
    /// nc listening on <paramref name="listenPort"/> in <paramref name="server"/>; returns what the client read.</summary>
    private async Task<string> TcpAsync(PodmanContainer server, int listenPort, PodmanContainer client, string address, int port)
    {
        await podman.MustAsync("exec", "--detach", server.Name, "sh", "-c", $"echo 'hello from {server.Name}' | nc -l -p {listenPort}");

        // The listener starts in the background: a connection it refuses is tried again, within a bound.
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var r = await podman.ExecAsync(client.Name, "sh", "-c", $"nc -w 3 {address} {port} </dev/null");
            if (r.Stdout.Trim().Length > 0 || sw.Elapsed > TimeSpan.FromSeconds(10))
            {
                return r.Stdout.Trim();
            }

            await Task.Delay(200);
        }
    }
}
