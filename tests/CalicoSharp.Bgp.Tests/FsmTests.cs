using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

/// <summary>RFC 4271 §8 on a fake clock over in-memory connections.</summary>
public class FsmTests
{
    private static readonly TimeSpan Tick = TimeSpan.FromTicks(1);

    [Fact]
    public async Task Passive_peer_goes_active_opensent_openconfirm_established()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        h.Pump();
        Assert.Equal(SessionState.Active, peer.State);
        ScriptedPeer s = h.ConnectIn(peer);
        OpenMessage open = h.Next<OpenMessage>(s);
        Assert.Equal(64512u, open.As);
        Assert.True(open.FourOctetAs && open.RouteRefresh && open.GracefulRestart is not null);
        Assert.Equal(SessionState.OpenSent, peer.State);
        s.SendOpen(65001, "10.0.0.1");
        h.Next<KeepaliveMessage>(s);
        Assert.Equal(SessionState.OpenConfirm, peer.State);
        s.Send(MessageEncoder.Keepalive());
        h.Until(() => peer.State == SessionState.Established, "Established");
        // The initial table transfer ends with End-of-RIB for both families.
        Assert.Equal(Afi.IPv4, h.Next<UpdateMessage>(s).EndOfRib);
        Assert.Equal(Afi.IPv6, h.Next<UpdateMessage>(s).EndOfRib);
    }

    [Fact]
    public async Task Hold_timer_expires_at_its_deadline_and_not_a_tick_before()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, hold: 9);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1", hold: 30);
        Assert.Equal(TimeSpan.FromSeconds(9), peer.NegotiatedHoldTime);
        h.Drain(s);
        h.Advance(TimeSpan.FromSeconds(9) - Tick);
        Assert.Equal(SessionState.Established, peer.State);
        h.Advance(Tick);
        var n = h.Expect<NotificationMessage>(s);
        Assert.Equal(ErrorCode.HoldTimerExpired, n.Code);
        Assert.NotEqual(SessionState.Established, peer.State);
        Assert.Contains("hold timer expired", peer.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Received_keepalives_hold_the_session_up()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, hold: 9);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1", hold: 9);
        for (int i = 0; i < 10; i++)
        {
            h.Advance(TimeSpan.FromSeconds(3));
            s.Send(MessageEncoder.Keepalive());
            h.Until(() => peer.SinceLastReceived == TimeSpan.Zero, "the keepalive to arrive");
            Assert.True(peer.State == SessionState.Established, $"round {i}: {peer.LastError}");
        }
    }

    [Fact]
    public async Task Keepalive_timer_fires_every_third_of_the_hold_time()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, hold: 9);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1", hold: 9);
        h.Drain(s);
        h.Advance(TimeSpan.FromSeconds(3) - Tick);
        Assert.Empty(h.Drain(s));
        h.Advance(Tick);
        h.Expect<KeepaliveMessage>(s);
    }

    [Fact]
    public async Task Hold_time_zero_means_no_keepalives_and_no_expiry()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, hold: 0);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1", hold: 90);
        h.Drain(s);
        h.Advance(TimeSpan.FromHours(1));
        Assert.Empty(h.Drain(s));
        Assert.Equal(SessionState.Established, peer.State);
    }

    [Fact]
    public async Task OpenSent_waits_four_minutes_for_an_open()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        h.Advance(BgpPeer.OpenHoldTime - Tick);
        Assert.Equal(SessionState.OpenSent, peer.State);
        h.Advance(Tick);
        Assert.Equal(ErrorCode.HoldTimerExpired, h.Expect<NotificationMessage>(s).Code);
    }

    [Fact]
    public async Task Connect_retry_uses_the_timer_and_backs_off_after_failures()
    {
        await using var h = new Harness { FailConnects = true };
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, passive: false, edit: c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            ConnectRetry = TimeSpan.FromSeconds(4),
            LocalAddress = c.LocalAddress,
        });
        h.Pump();
        Assert.Equal(1, h.Connects);
        Assert.Equal(SessionState.Active, peer.State);
        // Jitter keeps the retry between 0.75 and 1 of the interval.
        h.Advance(TimeSpan.FromSeconds(3) - Tick);
        Assert.Equal(1, h.Connects);
        h.Advance(TimeSpan.FromSeconds(1) + Tick);
        Assert.Equal(2, h.Connects);
        Assert.Contains("connection refused", peer.LastError, StringComparison.Ordinal);

        // A session that ends in an error waits longer after each failure (idle hold, doubled).
        h.FailConnects = false;
        h.Advance(TimeSpan.FromSeconds(4));
        ScriptedPeer s = h.TakeOutgoing();
        h.Next<OpenMessage>(s);
        s.SendOpen(65099, "10.0.0.1"); // wrong AS: OPEN error
        h.Until(() => peer.State == SessionState.Idle, "Idle after the OPEN error");
        int connects = h.Connects;
        h.Advance(TimeSpan.FromSeconds(3) - Tick);
        Assert.Equal(connects, h.Connects);
        h.Advance(TimeSpan.FromSeconds(1) + Tick);
        Assert.Equal(connects + 1, h.Connects);
        s = h.TakeOutgoing();
        h.Next<OpenMessage>(s);
        s.SendOpen(65099, "10.0.0.1");
        h.Until(() => peer.State == SessionState.Idle, "Idle after the second OPEN error");
        connects = h.Connects;
        h.Advance(TimeSpan.FromSeconds(6) - Tick); // second failure: 8 s x [0.75, 1]
        Assert.Equal(connects, h.Connects);
        h.Advance(TimeSpan.FromSeconds(2) + Tick);
        Assert.Equal(connects + 1, h.Connects);
    }

    public static TheoryData<string, uint, string, ushort, byte> BadOpens() => new()
    {
        { "wrong AS", 65099, "10.0.0.1", 90, Subcode.Open.BadPeerAs },
        { "router id zero", 65001, "0.0.0.0", 90, Subcode.Open.BadBgpIdentifier },
        { "hold time 2", 65001, "10.0.0.1", 2, Subcode.Open.UnacceptableHoldTime },
    };

    [Theory]
    [MemberData(nameof(BadOpens))]
    public async Task Bad_open_gets_its_notification(string name, uint asn, string routerId, ushort hold, byte subcode)
    {
        Assert.NotNull(name);
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        s.SendOpen(asn, routerId, hold);
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal(ErrorCode.OpenMessage, n.Code);
        Assert.Equal(subcode, n.Subcode);
        Assert.NotEqual(SessionState.Established, peer.State);
    }

    [Fact]
    public async Task Ibgp_peer_with_our_router_id_is_refused()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 64512);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        s.SendOpen(64512, "10.0.0.254");
        Assert.Equal(Subcode.Open.BadBgpIdentifier, h.Expect<NotificationMessage>(s).Subcode);
    }

    [Fact]
    public async Task Unsupported_version_answers_with_the_version_we_speak()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        s.Send(Wire.Message(MessageType.Open, 3, 0xFD, 0xE9, 0, 90, 10, 0, 0, 1, 0));
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal((ErrorCode.OpenMessage, Subcode.Open.UnsupportedVersion), (n.Code, n.Subcode));
        Assert.Equal(new byte[] { 0, 4 }, n.Data.ToArray());
    }

    [Fact]
    public async Task Update_before_established_is_an_fsm_error()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        s.SendOpen(65001, "10.0.0.1");
        h.Next<KeepaliveMessage>(s);
        s.Send(UpdateEncoder.EndOfRib(Afi.IPv4));
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal((ErrorCode.FiniteStateMachine, Subcode.Fsm.UnexpectedInOpenConfirm), (n.Code, n.Subcode));
    }

    [Fact]
    public async Task Keepalive_in_opensent_is_an_fsm_error()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.ConnectIn(peer);
        h.Next<OpenMessage>(s);
        s.Send(MessageEncoder.Keepalive());
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal((ErrorCode.FiniteStateMachine, Subcode.Fsm.UnexpectedInOpenSent), (n.Code, n.Subcode));
    }

    [Fact]
    public async Task Malformed_header_resets_the_session_with_its_code()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1");
        h.Drain(s);
        byte[] bad = MessageEncoder.Keepalive();
        bad[18] = 42;
        s.Send(bad);
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal((ErrorCode.MessageHeader, Subcode.Header.BadMessageType), (n.Code, n.Subcode));
        Assert.NotEqual(SessionState.Established, peer.State);
    }

    [Theory]
    [InlineData("10.0.0.9", true)] // our id 10.0.0.254 is higher: our outgoing connection survives
    [InlineData("10.0.0.255", false)] // theirs is higher: their (incoming) connection survives
    public async Task Connection_collision_keeps_the_connection_of_the_higher_router_id(string remoteId, bool outgoingSurvives)
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, passive: false);
        ScriptedPeer outgoing = h.TakeOutgoing();
        h.Next<OpenMessage>(outgoing);
        outgoing.SendOpen(65001, remoteId);
        h.Next<KeepaliveMessage>(outgoing);
        Assert.Equal(SessionState.OpenConfirm, peer.State);
        ScriptedPeer incoming = h.ConnectIn(peer);
        h.Next<OpenMessage>(incoming);
        incoming.SendOpen(65001, remoteId);
        h.Pump();
        ScriptedPeer loser = outgoingSurvives ? incoming : outgoing;
        ScriptedPeer winner = outgoingSurvives ? outgoing : incoming;
        NotificationMessage n = h.Expect<NotificationMessage>(loser);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.ConnectionCollisionResolution), (n.Code, n.Subcode));
        Assert.DoesNotContain(h.Drain(winner), m => m is NotificationMessage);
        winner.Send(MessageEncoder.Keepalive());
        h.Until(() => peer.State == SessionState.Established, "Established on the surviving connection");
    }

    [Fact]
    public async Task A_collision_cease_on_the_only_connection_starts_the_session_again()
    {
        // Two crossing connections can each be closed by a different end (each saw the other's OPEN while its
        // own was already up): the session must not stay down.
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001, passive: false, edit: c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            ConnectRetry = TimeSpan.FromSeconds(4),
            LocalAddress = c.LocalAddress,
        });
        ScriptedPeer s = h.Establish(peer, "10.0.0.1");
        int connects = h.Connects;
        s.Send(MessageEncoder.Notification(new NotificationMessage(ErrorCode.Cease, Subcode.Cease.ConnectionCollisionResolution, ReadOnlyMemory<byte>.Empty)));
        h.Until(() => peer.State == SessionState.Idle, "Idle after the collision cease");
        h.Advance(TimeSpan.FromSeconds(4) + Tick);
        Assert.Equal(connects + 1, h.Connects);
    }

    [Fact]
    public async Task Administrative_shutdown_sends_cease_with_the_message()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1");
        h.Drain(s);
        peer.Stop("node drained for maintenance");
        NotificationMessage n = h.Expect<NotificationMessage>(s);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.AdministrativeShutdown), (n.Code, n.Subcode));
        Assert.Equal("node drained for maintenance", n.ShutdownText);
        Assert.Equal(SessionState.Idle, peer.State);
        h.Advance(TimeSpan.FromMinutes(10));
        Assert.Equal(SessionState.Idle, peer.State);
    }

    [Fact]
    public async Task Notification_from_the_peer_ends_the_session_and_is_remembered()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1");
        s.Send(MessageEncoder.Notification(NotificationMessage.Shutdown("bye")));
        h.Until(() => peer.State != SessionState.Established, "the session to end");
        Assert.Contains("bye", peer.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Shutdown_communication_is_logged_and_shown_with_control_characters_escaped()
    {
        await using var h = new Harness();
        BgpPeer peer = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer s = h.Establish(peer, "10.0.0.1");
        // A forged second log line, a terminal escape, a NUL, a right-to-left override, a quote and a backslash.
        const string text = "maintenance\n2026-12-05T00:00:00Z info fake line\r\u001b[2J\u0000x\u202e\"q\"\\ é";
        s.Send(MessageEncoder.Notification(NotificationMessage.Shutdown(text)));
        h.Until(() => peer.State != SessionState.Established, "the session to end");
        string shown = peer.LastError!;
        string logged = Assert.Single(h.Log, l => l.Contains("received NOTIFICATION", StringComparison.Ordinal));
        foreach (string line in new[] { shown, logged })
        {
            Assert.DoesNotContain(line, c => char.IsControl(c) || c == '\u202e');
            Assert.Contains("\"maintenance\\n2026-12-05T00:00:00Z info fake line\\r\\u001B[2J\\u0000x\\u202E\\\"q\\\"\\\\ é\"", line, StringComparison.Ordinal);
        }
    }
}
