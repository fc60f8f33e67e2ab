using System.Diagnostics;
using CalicoSharp.Testing;

namespace CalicoSharp.Ipam.Tests;

/// <summary>How the etcd client tells a lost quorum from an unreachable etcd (no etcd needed).</summary>
public sealed class QuorumTests
{
    [Fact]
    public void Members_without_a_leader_are_a_lost_quorum()
    {
        var text = EtcdKvStore.DescribeFailure("transaction", ["connection refused", "etcdserver: no leader"], TimeSpan.FromSeconds(5), "detail");
        Assert.StartsWith("the etcd datastore has no quorum: no member with a leader served the transaction within 5 s", text, StringComparison.Ordinal);
        Assert.True(EtcdKvStore.IsLeaderless("etcdserver: leader changed"));
    }

    [Fact]
    public void Members_that_cannot_be_reached_are_unreachable()
    {
        var text = EtcdKvStore.DescribeFailure("read", ["connection refused", "connection reset"], TimeSpan.FromSeconds(2.5), "a: connection refused");
        Assert.Equal("etcd is unreachable: no member answered the read within 2.5 s (a: connection refused)", text);
    }

    [Fact]
    public async Task No_member_reachable_fails_at_once_without_waiting_for_the_bound()
    {
        using var store = new EtcdKvStore(new EtcdOptions
        {
            Endpoints = [$"http://127.0.0.1:{EtcdServer.FreePort()}", $"http://127.0.0.1:{EtcdServer.FreePort()}"],
            Timeout = TimeSpan.FromSeconds(10),
        });
        var sw = Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<IpamException>(() => store.GetAsync("/calico/ipam/v2/config", default));
        Assert.InRange(sw.Elapsed, TimeSpan.Zero, TimeSpan.FromSeconds(3));
        Assert.StartsWith("etcd is unreachable", e.Message, StringComparison.Ordinal);
        Assert.Equal(IpamErrorKind.DatastoreUnavailable, e.Kind);
    }
}
