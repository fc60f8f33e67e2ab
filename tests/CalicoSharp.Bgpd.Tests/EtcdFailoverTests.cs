using System.Net;
using System.Text;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>bgpd given every member of a real three-member etcd cluster: when the member its watch is on dies,
/// or the leader dies, the watch moves to a live member and resumes from its revision, with no flap towards the peers. The daemon has
/// no kernel; its peer is a BGP tester on loopback (nothing leaves this machine).</summary>
[Trait("Category", "Etcd")]
[System.Diagnostics.CodeAnalysis.SuppressMessage("Reliability", "CA1001", Justification = "xunit disposes the fields through IAsyncLifetime.DisposeAsync")]
public sealed class EtcdFailoverTests : IAsyncLifetime
{
    private readonly EtcdCluster cluster = EtcdCluster.Start();
    private readonly EtcdKvStore store;
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-failover-").FullName;
    private Daemon? daemon;

    public EtcdFailoverTests() => store = new EtcdKvStore(new EtcdOptions { Endpoints = cluster.Endpoints });

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        if (daemon is not null)
        {
            await daemon.DisposeAsync();
        }
        store.Dispose();
        cluster.Dispose();
        Directory.Delete(dir, true);
    }

    private async Task PutAsync(string key, string json) =>
        Assert.True((await store.TxnAsync([], [KvOp.Put(key, Encoding.UTF8.GetBytes(json))], [], CancellationToken.None)).Succeeded);

    private Task PutBlockAsync(string cidr) => PutAsync($"/calico/ipam/v2/host/node1/ipv4/block/{cidr.Replace('/', '-')}", """{"state":"confirmed","deleted":false}""");

    private static async Task Until(Func<bool> condition, string what, double seconds = 15)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting until " + what);
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task The_watch_moves_to_a_live_member_when_its_member_or_the_leader_dies_and_no_route_flaps()
    {
        await PutAsync("/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
            """{"kind":"BGPConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"asNumber":64512,"nodeToNodeMeshEnabled":false,"listenPort":0}}""");
        await PutAsync("/calico/resources/v3/projectcalico.org/ippools/default",
            """{"kind":"IPPool","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"cidr":"10.244.0.0/16"}}""");
        await PutAsync("/calico/resources/v3/projectcalico.org/bgppeers/tor",
            """{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor"},"spec":{"peerIP":"127.0.0.10","asNumber":65010}}""");
        await PutBlockAsync("10.244.1.0/26");
        // The poll (the safety net) is out of the picture: only the watch can bring a change in time.
        daemon = new Daemon(new DaemonOptions
        {
            NodeName = "node1",
            Ipv4Address = "127.0.0.1/8",
            EtcdEndpoints = cluster.Endpoints,
            Kernel = false,
            PollInterval = TimeSpan.FromMinutes(5),
            StateDirectory = dir,
        }, (_, _) => { });
        await daemon.StartAsync();
        await using BgpTester tor = await BgpTester.ConnectAsync(new IPEndPoint(IPAddress.Loopback, daemon.ListenEndpoint!.Port), IPAddress.Parse("127.0.0.10"), 65010);
        await Until(() => tor.Announced >= 1 && daemon.WatchUp, "the first block announced and the watch up");

        // The watch is on the member that served the daemon's first read: the first endpoint, all being up.
        long updates = tor.Updates;
        cluster.Kill(0);
        await PutBlockAsync("10.244.2.0/26");
        await Until(() => tor.Announced >= 2, "the block claimed after the failover announced");
        await Until(() => daemon.WatchUp, "the watch up again");
        Assert.True(daemon.WatchRestarts >= 1);
        Assert.Equal(0, tor.Withdrawn);
        Assert.Equal(1, tor.Updates - updates);

        // Then the leader dies (the member back first, so a quorum stays): an election, the same again.
        cluster.Restart(0);
        cluster.Kill(cluster.Leader(TimeSpan.FromSeconds(10)));
        await PutBlockAsync("10.244.3.0/26");
        await Until(() => tor.Announced >= 3, "the block claimed after the leader's death announced");
        await Until(() => daemon.WatchUp, "the watch up after the election");
        Assert.Equal(0, tor.Withdrawn);
        Assert.Equal(2, tor.Updates - updates);
        Assert.False(tor.Closed);
    }
}
