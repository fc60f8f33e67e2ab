using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

/// <summary>RFC 4724 §4.2, the receiving speaker (helper) side, the planned restart of RFC 4724 §4.1 (issue 16, finding
/// 6), and RFC 8538's N bit: a NOTIFICATION other than Hard Reset keeps the routes when both ends set it.</summary>
public sealed class GracefulRestartTests
{
    private static PathAttributes Attrs(string nextHop) => new()
    {
        AsPath = AsPath.Sequence([65001]),
        NextHop = Prefix.Parse(nextHop + (nextHop.Contains(':', StringComparison.Ordinal) ? "/128" : "/32")),
    };

    private static GracefulRestartCapability Both(bool v4Forwarding = true, bool v6Forwarding = true, bool restarting = false, ushort time = 60, bool notification = false) =>
        new(restarting, notification, time, [new(Afi.IPv4, Safi.Unicast, v4Forwarding), new(Afi.IPv6, Safi.Unicast, v6Forwarding)]);

    private static RoutePath? Best(Harness h, string prefix) => h.Speaker.Rib.Find(Prefix.Parse(prefix))?.Best;

    /// <summary>A peer with routes of both families, whose TCP connection then drops without a NOTIFICATION.</summary>
    private static (BgpPeer Peer, ScriptedPeer First) Restarting(Harness h, GracefulRestartCapability first, Func<PeerConfig, PeerConfig>? edit = null)
    {
        BgpPeer a = h.AddPeer("10.0.0.1", 65001, edit: edit);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1", restart: first);
        sa.Announce(Attrs("10.0.0.1"), "10.1.0.0/24");
        sa.Announce(Attrs("fd00::1"), "fd00:1::/64");
        h.Until(() => a.PrefixesAccepted == 2, "routes of both families");
        return (a, sa);
    }

    /// <summary>A peer with both families' routes drops (kept stale) and comes back with <paramref name="restart"/> as
    /// its new graceful restart capability (null: none).</summary>
    private static BgpPeer Returns(Harness h, GracefulRestartCapability? restart)
    {
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, Both());
        sa.Dispose();
        h.Until(() => a.RoutesStale, "stale");
        h.Establish(a, "10.0.0.1", restart: restart);
        h.Pump();
        return a;
    }

    /// <summary>A listener that acts on End-of-RIB (bgpd releases the kernel routes no peer sent again) must already
    /// have seen the routes sent before it, even when the UPDATE and the End-of-RIB arrive in one read (issue 16: the
    /// restarted bgpd deleted a route the ToR had just sent again and added it back 3 ms later, losing a ping).</summary>
    [Fact]
    public async Task End_of_rib_is_reported_after_the_best_paths_of_the_routes_sent_before_it()
    {
        await using var h = new Harness();
        var seen = new List<string>();
        h.Speaker.Rib.BestChanged += changed => seen.AddRange(changed.Select(e => $"best {e.Prefix}"));
        h.Speaker.Rib.EndOfRibReceived += (_, family) => seen.Add($"End-of-RIB {family}");
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.Establish(a, "10.0.0.1");
        s.Send([.. s.AnnouncementOf(Attrs("10.0.0.1"), "10.1.0.0/24"), .. UpdateEncoder.EndOfRib(Afi.IPv4)]);
        h.Until(() => seen.Contains("End-of-RIB IPv4"), "End-of-RIB");
        h.Pump();
        Assert.Equal(["best 10.1.0.0/24", "End-of-RIB IPv4"], seen);
    }

    [Fact]
    public async Task Families_missing_from_the_peers_capability_are_not_kept()
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, new GracefulRestartCapability(false, false, 60, [new(Afi.IPv4, Safi.Unicast, true)]));
        sa.Dispose();
        h.Until(() => a.State != SessionState.Established, "session down");
        h.Pump();
        Assert.True(Best(h, "10.1.0.0/24")?.Stale);
        // The peer never said it could keep forwarding IPv6: its IPv6 routes go at once.
        Assert.Null(Best(h, "fd00:1::/64"));
        Assert.Equal(1, a.PrefixesAccepted);
    }

    [Fact]
    public async Task A_peer_back_without_the_capability_loses_its_stale_routes_at_once()
    {
        await using var h = new Harness();
        BgpPeer a = Returns(h, null);
        // No End-of-RIB yet: the routes go because the new session has no graceful restart capability.
        Assert.Null(Best(h, "10.1.0.0/24"));
        Assert.Null(Best(h, "fd00:1::/64"));
        Assert.False(a.RoutesStale);
        Assert.Contains(h.Log, l => l.Contains("without the graceful restart capability", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_peer_back_without_the_forwarding_bit_for_a_family_loses_that_familys_stale_routes()
    {
        await using var h = new Harness();
        BgpPeer a = Returns(h, Both(v4Forwarding: false, v6Forwarding: true, restarting: true));
        Assert.Null(Best(h, "10.1.0.0/24"));
        Assert.True(Best(h, "fd00:1::/64")?.Stale);
        Assert.True(a.RoutesStale);
    }

    /// <summary>The peer's stale routes go when its restart time (60 s here) ends, or maxRestartTime if shorter.</summary>
    [Theory]
    [InlineData(null, 60)]
    [InlineData(10, 10)]
    [InlineData(100, 60)]
    public async Task Stale_routes_go_when_the_restart_time_capped_by_max_restart_time_ends(int? maxRestartTime, int seconds)
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, Both(time: 60), c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            Passive = true,
            LocalAddress = c.LocalAddress,
            LocalAddressOtherFamily = c.LocalAddressOtherFamily,
            MaxRestartTime = maxRestartTime is { } m ? TimeSpan.FromSeconds(m) : null,
        });
        sa.Dispose();
        h.Until(() => a.RoutesStale, "stale");
        h.Advance(TimeSpan.FromSeconds(seconds) - TimeSpan.FromTicks(1));
        Assert.True(a.RoutesStale);
        h.Advance(TimeSpan.FromTicks(1));
        Assert.False(a.RoutesStale);
        Assert.Equal(0, a.PrefixesAccepted);
    }

    [Fact]
    public async Task A_restarting_peers_new_connection_replaces_a_session_that_still_looks_established()
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer old) = Restarting(h, Both());
        h.Drain(old);
        // The peer restarted, but its old connection never closed (a reboot: no FIN). It connects again.
        ScriptedPeer fresh = h.ConnectIn(a);
        h.Next<OpenMessage>(fresh);
        fresh.SendOpen(65001, "10.0.0.1", restart: Both(restarting: true));
        h.Next<KeepaliveMessage>(fresh);
        fresh.Send(MessageEncoder.Keepalive());
        h.Until(() => a.State == SessionState.Established && a.RoutesStale, "the new session, with the old routes stale");
        Assert.True(Best(h, "10.1.0.0/24")?.Stale);
        // RFC 4724 §4.2: the old connection is closed without a NOTIFICATION.
        h.Until(() => old.Closed, "the old connection closed");
        Assert.DoesNotContain(h.Drain(old), m => m is NotificationMessage);
        SendsIpv4AgainAndEndOfRib(h, a, fresh);
    }

    [Fact]
    public async Task Without_graceful_restart_a_second_connection_still_loses_to_the_established_session()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        h.Establish(a, "10.0.0.1", gracefulRestart: false);
        ScriptedPeer second = h.ConnectIn(a);
        NotificationMessage n = h.Expect<NotificationMessage>(second);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.ConnectionCollisionResolution), (n.Code, n.Subcode));
        Assert.Equal(SessionState.Established, a.State);
    }

    [Fact]
    public async Task A_planned_restart_closes_sessions_with_graceful_restart_without_a_notification()
    {
        await using var h = new Harness();
        BgpPeer gr = h.AddPeer("10.0.0.1", 65001);
        BgpPeer plain = h.AddPeer("10.0.0.2", 65002);
        ScriptedPeer sgr = h.Establish(gr, "10.0.0.1", restart: Both());
        ScriptedPeer splain = h.Establish(plain, "10.0.0.2", gracefulRestart: false);
        h.Drain(sgr);
        h.Drain(splain);
        Task stop = h.Speaker.StopAsync("restarting", TimeSpan.Zero, restarting: true);
        h.Until(() => stop.IsCompleted, "the stop");
        await stop;
        h.Until(() => sgr.Closed && splain.Closed, "both connections closed");
        // The GR peer keeps our routes (its helper role, RFC 4724 §4.2): no NOTIFICATION. The other gets a Cease.
        Assert.DoesNotContain(h.Drain(sgr), m => m is NotificationMessage);
        Assert.Contains(h.Drain(splain), m => m is NotificationMessage { Code: ErrorCode.Cease });
    }

    [Fact]
    public async Task A_stop_for_good_sends_a_cease_also_to_graceful_restart_peers()
    {
        await using var h = new Harness();
        BgpPeer gr = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sgr = h.Establish(gr, "10.0.0.1", restart: Both());
        h.Drain(sgr);
        Task stop = h.Speaker.StopAsync("decommissioned", TimeSpan.Zero);
        h.Until(() => stop.IsCompleted, "the stop");
        await stop;
        h.Until(() => sgr.Closed, "closed");
        Assert.Contains(h.Drain(sgr), m => m is NotificationMessage { Code: ErrorCode.Cease });
    }

    /// <summary>The restarted peer sends its IPv4 route again and both End-of-RIBs: that route is fresh, the IPv6 one it
    /// did not send again goes.</summary>
    private static void SendsIpv4AgainAndEndOfRib(Harness h, BgpPeer a, ScriptedPeer back)
    {
        back.Announce(Attrs("10.0.0.1"), "10.1.0.0/24");
        back.Send(UpdateEncoder.EndOfRib(Afi.IPv4));
        back.Send(UpdateEncoder.EndOfRib(Afi.IPv6));
        h.Until(() => !a.RoutesStale, "stale routes flushed by End-of-RIB");
        Assert.False(Best(h, "10.1.0.0/24")?.Stale);
        Assert.Null(Best(h, "fd00:1::/64"));
    }

    [Fact]
    public async Task The_open_sets_the_N_bit_with_graceful_restart()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(a);
        Assert.True(h.Next<OpenMessage>(s).GracefulRestart?.Notification);
        BgpPeer off = h.AddPeer("10.0.0.2", 65002, edit: c => new PeerConfig { Address = c.Address, RemoteAs = c.RemoteAs, Passive = true, GracefulRestart = false });
        Assert.Null(h.Next<OpenMessage>(h.ConnectIn(off)).GracefulRestart);
    }

    /// <summary>RFC 8538 §4: a NOTIFICATION from a peer that set the N bit is a restart (its routes stay, stale, until
    /// the restart time ends); from a peer that did not, RFC 4724 applies and they go at once; a Hard Reset always
    /// takes them out.</summary>
    [Theory]
    [InlineData(true, ErrorCode.Cease, Subcode.Cease.AdministrativeReset, true)]
    [InlineData(true, ErrorCode.UpdateMessage, Subcode.Update.MalformedAttributeList, true)]
    [InlineData(false, ErrorCode.Cease, Subcode.Cease.AdministrativeReset, false)]
    [InlineData(true, ErrorCode.Cease, Subcode.Cease.HardReset, false)]
    public async Task A_received_notification_keeps_the_routes_only_with_the_N_bit_on_both_ends_and_never_a_hard_reset(bool peerSetsN, ErrorCode code, byte subcode, bool kept)
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, Both(notification: peerSetsN));
        Assert.Equal(peerSetsN, a.NotificationNegotiated);
        NotificationMessage n = subcode == Subcode.Cease.HardReset && code == ErrorCode.Cease
            ? NotificationMessage.HardReset(NotificationMessage.Shutdown("decommissioned"))
            : new NotificationMessage(code, subcode, ReadOnlyMemory<byte>.Empty);
        sa.Send(MessageEncoder.Notification(n));
        h.Until(() => a.State != SessionState.Established, "the session down");
        h.Pump();
        Assert.Equal(kept, a.RoutesStale);
        Assert.Equal(kept, Best(h, "10.1.0.0/24")?.Stale == true);
        Assert.Equal(kept, Best(h, "fd00:1::/64")?.Stale == true);
        Assert.Equal(kept, h.Log.Any(l => l.Contains("graceful restart with notification (RFC 8538): keeping its routes as stale", StringComparison.Ordinal)));
        if (kept)
        {
            h.Advance(TimeSpan.FromSeconds(60));
            Assert.False(a.RoutesStale);
            Assert.Null(Best(h, "10.1.0.0/24"));
        }
        if (n.IsHardReset)
        {
            Assert.Equal("received NOTIFICATION: cease (6/9 hard reset): cease (6/2 administrative shutdown) \"decommissioned\"", a.LastError);
        }
    }

    [Fact]
    public async Task Past_its_prefix_limit_a_peer_gets_a_hard_reset_and_loses_its_routes()
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, Both(notification: true), c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            Passive = true,
            LocalAddress = c.LocalAddress,
            LocalAddressOtherFamily = c.LocalAddressOtherFamily,
            MaxPrefixes = 2,
        });
        h.Drain(sa);
        sa.Announce(Attrs("10.0.0.1"), "10.2.0.0/24");
        NotificationMessage n = h.Expect<NotificationMessage>(sa);
        // RFC 8538 §4: Maximum Number of Prefixes Reached MUST go as a Hard Reset, which carries it.
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.HardReset), (n.Code, n.Subcode));
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.MaximumPrefixesReached), (n.Encapsulated!.Code, n.Encapsulated.Subcode));
        h.Until(() => a.State != SessionState.Established, "the session down");
        h.Pump();
        Assert.False(a.RoutesStale);
        Assert.Null(Best(h, "10.1.0.0/24"));
    }

    /// <summary>Stopping for good with the N bit negotiated: a Hard Reset (else the peer would keep our routes as stale);
    /// a planned restart: Cease / Administrative Reset, which the peer takes as a restart.</summary>
    [Theory]
    [InlineData(false, Subcode.Cease.HardReset, Subcode.Cease.AdministrativeShutdown)]
    [InlineData(true, Subcode.Cease.AdministrativeReset, null)]
    public async Task With_the_N_bit_a_stop_for_good_is_a_hard_reset_and_a_planned_restart_a_plain_cease(bool restarting, byte subcode, byte? inner)
    {
        await using var h = new Harness();
        BgpPeer gr = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sgr = h.Establish(gr, "10.0.0.1", restart: Both(notification: true));
        h.Drain(sgr);
        Task stop = h.Speaker.StopAsync("maintenance", TimeSpan.Zero, restarting);
        h.Until(() => stop.IsCompleted, "the stop");
        await stop;
        h.Until(() => sgr.Closed, "closed");
        NotificationMessage n = Assert.IsType<NotificationMessage>(Assert.Single(h.Drain(sgr), m => m is NotificationMessage));
        Assert.Equal((ErrorCode.Cease, subcode), (n.Code, n.Subcode));
        Assert.Equal(inner, n.Encapsulated?.Subcode);
        Assert.Equal("maintenance", (n.Encapsulated ?? n).ShutdownText);
    }

    [Fact]
    public async Task With_the_N_bit_a_reset_for_a_configuration_change_keeps_the_peers_routes_until_it_is_back()
    {
        await using var h = new Harness();
        (BgpPeer a, ScriptedPeer sa) = Restarting(h, Both(notification: true));
        h.Drain(sa);
        h.Speaker.ChangeIdentity(h.Speaker.Config.LocalAs, SpeakerConfig.ParseRouterId("10.0.0.253"), null, "router id changed");
        h.Until(() => sa.Closed, "the reset");
        NotificationMessage n = Assert.IsType<NotificationMessage>(Assert.Single(h.Drain(sa), m => m is NotificationMessage));
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.OtherConfigurationChange), (n.Code, n.Subcode));
        h.Pump();
        Assert.True(a.RoutesStale);
        Assert.True(Best(h, "10.1.0.0/24")?.Stale);

        // Back: the new session's End-of-RIB ends the restart; routes sent again are fresh, the others go.
        ScriptedPeer back = h.Establish(a, "10.0.0.1", restart: Both(notification: true, restarting: true));
        SendsIpv4AgainAndEndOfRib(h, a, back);
    }
}
