using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using CalicoSharp.Testing;

namespace CalicoSharp.Ipam.Tests;

/// <summary>IPAM against a real three-member etcd cluster that loses members: allocations go on through a
/// follower's and the leader's death, and a lost quorum is a prompt, clear error that heals by itself.</summary>
[Trait("Category", "Etcd")]
public sealed class EtcdClusterTests : IDisposable
{
    private readonly EtcdCluster cluster = EtcdCluster.Start();
    private readonly IpamClient admin;

    public EtcdClusterTests()
    {
        admin = Client(0);
        admin.AddPoolAsync(new PoolRequest { Cidr = "10.231.0.0/16", Name = "cluster-v4" }).GetAwaiter().GetResult();
    }

    public void Dispose()
    {
        admin.Dispose();
        cluster.Dispose();
    }

    /// <summary>A client given every member, starting at a different one per node as nodes would.</summary>
    private IpamClient Client(int node) =>
        new(new EtcdKvStore(new EtcdOptions { Endpoints = [.. cluster.Endpoints.Skip(node % 3), .. cluster.Endpoints.Take(node % 3)] }));

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"timed out waiting for {what}");
            await Task.Delay(20);
        }
    }

    private Task<ProcessResult> Ctl(params string[] args) =>
        ProcessRunner.RunDllAsync(RepoPaths.ProjectDll("ipam/calicosharpctl", "calicosharpctl"),
            ["--etcd-endpoints", string.Join(',', cluster.Endpoints), .. args], TimeSpan.FromSeconds(60));

    [Fact]
    public async Task An_allocation_storm_goes_on_while_a_follower_and_then_the_leader_die()
    {
        const int Nodes = 10, Each = 30;
        var held = new ConcurrentDictionary<string, IPAddress>(StringComparer.Ordinal);
        var failures = new ConcurrentQueue<string>();
        int answered = 0;

        async Task Node(int n)
        {
            using var ipam = Client(n);
            var random = new Random(n);
            var mine = new List<string>();
            for (int i = 0; i < Each; i++)
            {
                string handle = $"node{n}.pod{i}";
                try
                {
                    var a = Assert.Single(await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = handle, Node = $"node{n}", Num4 = 1 }));
                    held[handle] = a.Address;
                    mine.Add(handle);
                    if (random.Next(4) == 0)
                    {
                        string gone = mine[random.Next(mine.Count)];
                        mine.Remove(gone);
                        held.TryRemove(gone, out _);
                        await ipam.ReleaseByHandleAsync(gone);
                    }
                }
                catch (IpamException e)
                {
                    failures.Enqueue($"{handle}: {e.Message}");
                }

                Interlocked.Increment(ref answered);
            }
        }

        var storm = Task.WhenAll(Enumerable.Range(0, Nodes).Select(n => Task.Run(() => Node(n))));
        int leader = cluster.Leader(TimeSpan.FromSeconds(10));
        int follower = (leader + 1) % 3;

        await WaitUntil(() => answered >= 40 || storm.IsCompleted, "the storm to start");
        cluster.Kill(follower);
        await WaitUntil(() => answered >= 100 || storm.IsCompleted, "allocations without the follower");
        cluster.Restart(follower);
        leader = cluster.Leader(TimeSpan.FromSeconds(10));
        cluster.Kill(leader);
        await WaitUntil(() => answered >= 180 || storm.IsCompleted, "allocations without the leader");
        cluster.Restart(leader);
        await storm;

        Assert.True(failures.IsEmpty, $"{failures.Count} of {Nodes * Each} calls failed: {string.Join(" | ", failures.Take(5))}");
        Assert.Equal(held.Count, held.Values.Distinct().Count());
        foreach (var (handle, address) in held)
        {
            Assert.Contains(address, (await admin.AddressesOfHandleAsync(handle)).Select(a => a.Address));
        }

        var check = await Ctl("ipam", "check");
        Assert.True(check.ExitCode == 0, check.Stdout + check.Stderr);
        Assert.Contains("no problems found", check.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Without_quorum_ADD_fails_within_the_bound_saying_so_and_works_again_once_it_returns()
    {
        using var ipam = Client(1);
        await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "before", Node = "node1", Num4 = 1 });
        int leader = cluster.Leader(TimeSpan.FromSeconds(10));
        int other = (leader + 1) % 3, survivor = (leader + 2) % 3;
        cluster.Kill(leader);
        cluster.Kill(other);
        cluster.WaitLeaderless(survivor, TimeSpan.FromSeconds(15));

        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<IpamException>(() => ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "during", Node = "node1", Num4 = 1 }));
        Assert.InRange(sw.Elapsed, TimeSpan.Zero, TimeSpan.FromSeconds(7));
        Assert.Contains("the etcd datastore has no quorum", e.Message, StringComparison.Ordinal);

        sw.Restart();
        var cli = await Ctl("ipam", "check");
        Assert.InRange(sw.Elapsed, TimeSpan.Zero, TimeSpan.FromSeconds(10));
        Assert.Equal(3, cli.ExitCode);
        Assert.Contains("the etcd datastore has no quorum", cli.Stderr, StringComparison.Ordinal);

        // Quorum back: the same client allocates again; the refused call left nothing behind.
        cluster.Restart(other);
        Assert.Single(await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "after", Node = "node1", Num4 = 1 }));
        Assert.Empty(await admin.AddressesOfHandleAsync("during"));
        Assert.Empty((await admin.CheckAsync()).Problems);
    }
}
