using CalicoSharp.Ipam;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>What the plugin's lab tests stand on: a real etcd with the given pools, a node namespace (where
/// the plugin works), throwaway pod namespaces and a state folder. Everything goes on dispose.</summary>
internal sealed class CniNodeLab : IDisposable
{
    private readonly List<TestNetns> pods = [];

    public CniNodeLab(params (string Cidr, string Name)[] pools)
    {
        Node = TestNetns.Create(Prefix + "-node1");
        NodeNs = NetNs.Open(Node.Path);
        Ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [Etcd.Endpoint] }));
        foreach (var (cidr, name) in pools)
        {
            Ipam.AddPoolAsync(new PoolRequest { Cidr = cidr, Name = name }).GetAwaiter().GetResult();
        }
    }

    public EtcdServer Etcd { get; } = EtcdServer.Start();

    public string Prefix { get; } = TestNetns.NewLabPrefix();

    public TestNetns Node { get; }

    public NetNs NodeNs { get; }

    public string StateDir { get; } = Directory.CreateTempSubdirectory("calicosharp-cni-state-").FullName;

    public IpamClient Ipam { get; }

    public TestNetns NewPod()
    {
        var p = TestNetns.Create($"{Prefix}-pod{pods.Count + 1}");
        pods.Add(p);
        return p;
    }

    /// <summary>The runtime's environment for one call (pod name = container id, namespace "lab").</summary>
    public Dictionary<string, string> Env(string command, string containerId, TestNetns? pod, string? netns = null) => new()
    {
        ["CNI_COMMAND"] = command,
        ["CNI_CONTAINERID"] = containerId,
        ["CNI_NETNS"] = netns ?? pod?.Path ?? string.Empty,
        ["CNI_IFNAME"] = "eth0",
        ["CNI_PATH"] = "/usr/lib/cni",
        ["CNI_ARGS"] = $"IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={containerId}",
        ["CALICOSHARP_STATE_DIR"] = StateDir,
    };

    /// <summary>Neither the kernel (links, the node's routes into <paramref name="routePrefix"/>, the pod's
    /// eth0) nor etcd (the handle, any allocation, any inconsistency) holds anything of a pod.</summary>
    public async Task AssertNothingLeftAsync(string handle, TestNetns? pod, string routePrefix)
    {
        Assert.DoesNotContain("cali", TestNetns.Ip("-n", Node.Name, "-o", "link"), StringComparison.Ordinal);
        Assert.DoesNotContain(routePrefix, TestNetns.Ip("-n", Node.Name, "route"), StringComparison.Ordinal);
        if (pod is not null)
        {
            Assert.DoesNotContain("eth0", TestNetns.Ip("-n", pod.Name, "-o", "link"), StringComparison.Ordinal);
        }

        Assert.Null(await Ipam.Store.GetAsync(Keys.Handle(handle), default));
        Assert.All(await Ipam.GetUsageAsync(), u => Assert.Equal(0, u.InUse));
        Assert.Empty((await Ipam.CheckAsync()).Problems);
    }

    public void Dispose()
    {
        foreach (var p in pods)
        {
            p.Dispose();
        }

        NodeNs.Dispose();
        Node.Dispose();
        Ipam.Dispose();
        Etcd.Dispose();
        Directory.Delete(StateDir, true);
    }
}
