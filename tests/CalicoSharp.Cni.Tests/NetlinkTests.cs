using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>The netlink layer against the kernel, in a throwaway namespace.</summary>
[Trait("Category", "Privileged")]
public sealed class NetlinkTests : IDisposable
{
    private readonly TestNetns ns = TestNetns.Create(TestNetns.NewLabPrefix() + "-nl");
    private readonly NetNs handle;
    private readonly RtNetlink nl;

    public NetlinkTests()
    {
        handle = NetNs.Open(ns.Path);
        nl = RtNetlink.Open(handle);
    }

    public void Dispose()
    {
        nl.Dispose();
        handle.Dispose();
        ns.Dispose();
    }

    private Link Veth(string name, string peer, string address)
    {
        nl.CreateVeth(name, peer, null, 1400, PhysicalAddress.Parse("02-00-00-00-00-0" + name[^1]));
        var link = nl.GetLink(name)!;
        nl.SetLinkUp(link.Index);
        nl.SetLinkUp(nl.GetLink(peer)!.Index);
        nl.AddAddress(link.Index, IPAddress.Parse(address), 24);
        return nl.GetLink(name)!;
    }

    [Fact]
    public void Links_addresses_and_errors_that_name_the_operation()
    {
        var a = Veth("vetha1", "vethb1", "10.90.1.1");
        Assert.Equal("veth", a.Kind);
        Assert.Equal(1400, a.Mtu);
        Assert.True(a.IsUp);
        Assert.Equal("02:00:00:00:00:01", Cni.LinuxDataplane.FormatMac(a.Mac!));
        nl.SetMtu(a.Index, 1300);
        Assert.Equal(1300, nl.GetLink(a.Index)!.Mtu);
        Assert.Contains(nl.ListAddresses(a.Index, AddressFamily.InterNetwork), x => x.Address.Equals(IPAddress.Parse("10.90.1.1")) && x.PrefixLength == 24);
        var e = Assert.Throws<NetlinkException>(() => nl.CreateVeth("vetha1", "other", null));
        Assert.True(e.Exists);
        Assert.Contains("creating veth vetha1", e.Message, StringComparison.Ordinal);
        Assert.True(nl.DeleteAddress(a.Index, IPAddress.Parse("10.90.1.1"), 24));
        Assert.False(nl.DeleteAddress(a.Index, IPAddress.Parse("10.90.1.1"), 24));
        Assert.True(nl.DeleteLink("vetha1"));
        Assert.False(nl.DeleteLink("vetha1"));
        Assert.Null(nl.GetLink("vethb1")); // the peer went with it
    }

    [Fact]
    public void Routes_blackhole_replace_multipath_and_get()
    {
        var a = Veth("vetha2", "vethb2", "10.90.2.1");
        var b = Veth("vetha3", "vethb3", "10.90.3.1");
        var blackhole = new Route { Destination = IPAddress.Parse("10.91.0.0"), PrefixLength = 26, Type = Rt.RTN_BLACKHOLE, Protocol = 80 };
        nl.AddRoute(blackhole);
        Assert.Contains(nl.ListRoutes(AddressFamily.InterNetwork), r => r.Type == Rt.RTN_BLACKHOLE && r.Protocol == 80 && r.PrefixLength == 26);
        Assert.Throws<NetlinkException>(() => nl.AddRoute(blackhole));
        // The kernel will not resolve an address behind a blackhole (EINVAL); MatchRoute finds the route anyway,
        // and a more specific unicast route still wins.
        Assert.Null(nl.GetRoute(IPAddress.Parse("10.91.0.7"), fibMatch: true));
        Assert.Equal(Rt.RTN_BLACKHOLE, nl.MatchRoute(IPAddress.Parse("10.91.0.7"))!.Type);
        nl.AddRoute(new Route { Destination = IPAddress.Parse("10.91.0.7"), PrefixLength = 32, OutIndex = a.Index, Scope = Rt.RT_SCOPE_LINK });
        Route host = nl.MatchRoute(IPAddress.Parse("10.91.0.7"))!;
        Assert.Equal((32, a.Index), (host.PrefixLength, host.OutIndex));
        Assert.Null(nl.MatchRoute(IPAddress.Parse("10.93.0.1")));

        var ecmp = new Route
        {
            Destination = IPAddress.Parse("10.92.0.0"),
            PrefixLength = 24,
            Protocol = 80,
            MultiPath = [new NextHop(IPAddress.Parse("10.90.2.2"), a.Index), new NextHop(IPAddress.Parse("10.90.3.2"), b.Index, 2)],
        };
        nl.AddRoute(ecmp);
        var listed = nl.ListRoutes(AddressFamily.InterNetwork).Single(r => r.Destination.Equals(IPAddress.Parse("10.92.0.0")));
        Assert.Equal(2, listed.MultiPath.Count);
        Assert.Contains(listed.MultiPath, h => h.OutIndex == b.Index && h.Weight == 2 && h.Gateway!.Equals(IPAddress.Parse("10.90.3.2")));

        // Replace turns it into a single path; route get follows it.
        nl.AddRoute(ecmp with { MultiPath = [], Gateway = IPAddress.Parse("10.90.2.2"), OutIndex = a.Index }, replace: true);
        var got = nl.GetRoute(IPAddress.Parse("10.92.0.9"))!;
        Assert.Equal(a.Index, got.OutIndex);
        Assert.Equal(IPAddress.Parse("10.90.2.2"), got.Gateway);
        Assert.True(nl.DeleteRoute(ecmp with { MultiPath = [] }));
        Assert.True(nl.DeleteRoute(blackhole));
        Assert.False(nl.DeleteRoute(blackhole));
    }

    [Fact]
    public void Many_routes_in_batches_each_with_its_own_answer()
    {
        var a = Veth("vetha5", "vethb5", "10.90.5.1");
        // 100 routes (four system calls), one of them through a gateway no link reaches.
        var changes = Enumerable.Range(0, 100).Select(i => (new Route
        {
            Destination = IPAddress.Parse($"10.94.{i}.0"),
            PrefixLength = 24,
            Protocol = 80,
            Gateway = IPAddress.Parse(i == 41 ? "10.250.0.1" : "10.90.5.2"),
        }, false)).ToList();
        NetlinkException?[] errors = nl.ApplyRoutes(changes);
        Assert.Equal(100, errors.Length);
        Assert.Equal([41], errors.Select((e, i) => (e, i)).Where(x => x.e is not null).Select(x => x.i));
        Assert.Contains("10.94.41.0/24", errors[41]!.Message, StringComparison.Ordinal);
        Assert.Equal(99, nl.ListRoutes(AddressFamily.InterNetwork).Count(r => r.Protocol == 80 && r.OutIndex == a.Index));

        // Deleting all 100: the one never added is not an error.
        errors = nl.ApplyRoutes([.. changes.Select(c => (c.Item1, true))]);
        Assert.All(errors, Assert.Null);
        Assert.DoesNotContain(nl.ListRoutes(AddressFamily.InterNetwork), r => r.Protocol == 80);
    }

    [Fact]
    public void Neighbours_and_sysctls_in_the_namespace()
    {
        var a = Veth("vetha4", "vethb4", "10.90.4.1");
        nl.AddNeighbour(a.Index, IPAddress.Parse("10.90.4.9"), PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE"));
        var n = Assert.Single(nl.ListNeighbours(a.Index, AddressFamily.InterNetwork), x => x.Address.Equals(IPAddress.Parse("10.90.4.9")));
        Assert.Equal(Rt.NUD_PERMANENT, n.State);
        Assert.True(nl.DeleteNeighbour(a.Index, IPAddress.Parse("10.90.4.9")));
        handle.WriteSysctl("net/ipv4/conf/vetha4/proxy_arp", "1");
        Assert.Equal("1", handle.Run(() => Sysctl.Read("net/ipv4/conf/vetha4/proxy_arp")));
        Assert.False(File.Exists("/proc/sys/net/ipv4/conf/vetha4/proxy_arp")); // written in the namespace, not here
    }

    [Fact]
    public void A_veth_is_made_down_and_names_its_peer_and_IPv4_settings_go_with_link_up()
    {
        var made = nl.CreateVeth("vetha5", "vethb5", null, 1400, PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE"), PhysicalAddress.Parse("02-00-00-00-00-55"));
        var peer = nl.GetLink("vethb5")!;
        Assert.Equal(peer.Index, made.ParentIndex);
        Assert.Equal("02:00:00:00:00:55", Cni.LinuxDataplane.FormatMac(peer.Mac!));
        Assert.False(made.IsUp);
        Assert.False(peer.IsUp);

        nl.SetLinkUp(made.Index, true, [(Rt.IPV4_DEVCONF_PROXY_ARP, 1), (Rt.IPV4_DEVCONF_FORWARDING, 1)]);
        Assert.True(nl.GetLink(made.Index)!.IsUp);
        Assert.Equal("1", handle.Run(() => Sysctl.Read("net/ipv4/conf/vetha5/proxy_arp")));
        Assert.Equal("1", handle.Run(() => Sysctl.Read("net/ipv4/conf/vetha5/forwarding")));
        var e = Assert.Throws<NetlinkException>(() => nl.SetLinkUp(made.Index, true, [(999, 1)]));
        Assert.Contains($"setting link #{made.Index} up and its IPv4 settings", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_alias_goes_with_link_up_reads_back_and_a_link_is_deleted_by_its_index()
    {
        var made = nl.CreateVeth("vetha7", "vethb7", null);
        Assert.Null(made.Alias);
        nl.SetLinkUp(made.Index, true, null, "calicosharp:0123abcd");
        Assert.Equal("calicosharp:0123abcd", nl.GetLink("vetha7")!.Alias);
        Assert.Contains("alias calicosharp:0123abcd", TestNetns.Ip("-n", ns.Name, "-d", "link", "show", "vetha7"), StringComparison.Ordinal);
        Assert.True(nl.DeleteLink(made.Index));
        Assert.False(nl.DeleteLink(made.Index));
        Assert.Null(nl.GetLink("vethb7"));
    }

    [Fact]
    public void A_batch_is_applied_in_order_and_throws_its_first_refusal()
    {
        nl.CreateVeth("vetha6", "vethb6", null);
        var a = nl.GetLink("vetha6")!;
        var gateway = IPAddress.Parse("169.254.1.1");
        nl.NewBatch()
            .SetLinkUp(a.Index)
            .AddAddress(a.Index, IPAddress.Parse("10.90.6.1"), 32)
            .AddRoute(new Route { Destination = gateway, PrefixLength = 32, OutIndex = a.Index, Scope = Rt.RT_SCOPE_LINK })
            .AddRoute(new Route { Destination = IPAddress.Any, PrefixLength = 0, Gateway = gateway, OutIndex = a.Index })
            .AddNeighbour(a.Index, gateway, PhysicalAddress.Parse("EE-EE-EE-EE-EE-EE"))
            .Commit();
        Assert.True(nl.GetLink(a.Index)!.IsUp);
        Assert.Contains(nl.ListRoutes(AddressFamily.InterNetwork), r => r.PrefixLength == 0 && gateway.Equals(r.Gateway));
        Assert.Contains(nl.ListNeighbours(a.Index, AddressFamily.InterNetwork), n => n.Address.Equals(gateway));

        // The second request fails (the address exists); the third still runs; the first refusal is thrown.
        var e = Assert.Throws<NetlinkException>(() => nl.NewBatch()
            .AddAddress(a.Index, IPAddress.Parse("10.90.6.2"), 32)
            .AddAddress(a.Index, IPAddress.Parse("10.90.6.1"), 32)
            .AddAddress(a.Index, IPAddress.Parse("10.90.6.3"), 32)
            .Commit());
        Assert.True(e.Exists);
        Assert.Contains("adding address 10.90.6.1/32", e.Message, StringComparison.Ordinal);
        Assert.Equal(3, nl.ListAddresses(a.Index, AddressFamily.InterNetwork).Count);
    }

    [Fact]
    public async Task Work_in_a_namespace_leaves_the_calling_thread_where_it_was()
    {
        static string? Here() => new FileInfo("/proc/thread-self/ns/net").LinkTarget;
        string? Inside() => handle.Run(Here);
        string? home = Here();
        string? target = Inside();
        Assert.NotEqual(home, target);

        // A thread of its own is switched in and back.
        string? after = null, seen = null;
        var t = new Thread(() =>
        {
            seen = Inside();
            after = Here();
        });
        t.Start();
        t.Join();
        Assert.Equal(target, seen);
        Assert.Equal(home, after);

        // A pool thread is never switched: the work runs on a fresh thread.
        var (poolSeen, poolAfter) = await Task.Run(() => (Inside(), Here()));
        Assert.Equal(target, poolSeen);
        Assert.Equal(home, poolAfter);
    }
}
