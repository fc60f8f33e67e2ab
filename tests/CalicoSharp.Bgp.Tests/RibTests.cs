using System.Net;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

/// <summary>Decision process, export rules and Adj-RIB-Out behaviour through real sessions (in memory).</summary>
public class RibTests
{
    private static PathAttributes Attrs(string nextHop, params uint[] path) => new()
    {
        AsPath = AsPath.Sequence(path),
        NextHop = Prefix.Parse(nextHop + (nextHop.Contains(':', StringComparison.Ordinal) ? "/128" : "/32")),
    };

    /// <summary>Every prefix announced to the peer (net of withdrawals) with its attributes.</summary>
    private static Dictionary<Prefix, PathAttributes> Table(Harness h, ScriptedPeer s, Dictionary<Prefix, PathAttributes>? into = null,
        Func<Dictionary<Prefix, PathAttributes>, bool>? until = null)
    {
        into ??= [];
        Take(h.Drain(s), into);
        if (until is not null)
        {
            h.Until(() =>
            {
                var more = new List<BgpMessage>();
                while (s.TryTake(out BgpMessage? m))
                {
                    more.Add(m!);
                }
                Take(more, into);
                return until(into);
            }, "the expected routes");
        }
        return into;
    }

    private static Prefix P(string p) => Prefix.Parse(p);

    private static void Take(List<BgpMessage> messages, Dictionary<Prefix, PathAttributes> into)
    {
        foreach (UpdateMessage u in messages.OfType<UpdateMessage>())
        {
            foreach (Prefix p in u.Withdrawn.Concat(u.MpUnreach))
            {
                into.Remove(p);
            }
            foreach (Prefix p in u.Nlri)
            {
                into[p] = u.Attributes!;
            }
            foreach (Prefix p in u.MpReach)
            {
                into[p] = u.MpAttributes()!;
            }
        }
    }

    [Fact]
    public async Task Ebgp_routes_are_relayed_with_our_as_prepended_and_next_hop_self()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        BgpPeer b = h.AddPeer("10.0.0.2", 65002);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        ScriptedPeer sb = h.Establish(b, "10.0.0.2");
        Table(h, sb);
        sa.Announce(Attrs("10.0.0.1", 65001) with { Med = 5, LocalPref = 300, Communities = [42] }, "10.244.1.0/26", "10.244.2.0/26");
        sa.Announce(Attrs("fd00::1", 65001), "fd00:10:244::/122");
        h.Until(() => a.PrefixesAccepted == 3, "3 prefixes accepted");
        Dictionary<Prefix, PathAttributes> got = Table(h, sb, until: t => t.Count == 3);
        Assert.Equal(3, got.Count);
        PathAttributes v4 = got[Prefix.Parse("10.244.1.0/26")];
        Assert.Equal(AsPath.Sequence(64512, 65001), v4.AsPath);
        Assert.Equal(Prefix.Parse("10.0.0.254/32"), v4.NextHop);
        Assert.Null(v4.Med);
        Assert.Null(v4.LocalPref);
        Assert.Equal(new uint[] { 42 }, v4.Communities);
        Assert.Equal(Prefix.Parse("fd00::254/128"), got[Prefix.Parse("fd00:10:244::/122")].NextHop);
        // Both IPv4 prefixes shared one UPDATE; the source peer is not sent its own routes.
        Assert.DoesNotContain(Table(h, sa).Keys, p => p.Family == Afi.IPv4);
        Assert.Equal(3, b.PrefixesAdvertised);

        sa.Withdraw("10.244.1.0/26");
        h.Until(() => a.PrefixesAccepted == 2, "withdrawal");
        Dictionary<Prefix, PathAttributes> after = Table(h, sb, got, t => !t.ContainsKey(P("10.244.1.0/26")));
        Assert.DoesNotContain(Prefix.Parse("10.244.1.0/26"), after.Keys);
        Assert.Equal(2, b.PrefixesAdvertised);
    }

    [Fact]
    public async Task Decision_prefers_shorter_as_path_and_records_why()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        BgpPeer b = h.AddPeer("10.0.0.2", 65002);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        ScriptedPeer sb = h.Establish(b, "10.0.0.2");
        sa.Announce(Attrs("10.0.0.1", 65001, 65100, 65200), "10.50.0.0/16");
        sb.Announce(Attrs("10.0.0.2", 65002, 65200), "10.50.0.0/16");
        h.Until(() => a.PrefixesAccepted == 1 && b.PrefixesAccepted == 1, "both paths");
        h.Pump();
        RouteEntry e = h.Speaker.Rib.Find(Prefix.Parse("10.50.0.0/16"))!.Value;
        Assert.Same(b, e.Best!.Value.Peer);
        Assert.Equal(DecisionReason.AsPathLength, e.Reason);
        Assert.Equal(2, e.Paths.Count());
        // The loser's peer now hears the winner's route; the winner hears nothing back.
        Assert.Equal(AsPath.Sequence(64512, 65002, 65200), Table(h, sa, until: t => t.ContainsKey(P("10.50.0.0/16")))[P("10.50.0.0/16")].AsPath);
        sb.Withdraw("10.50.0.0/16");
        h.Until(() => b.PrefixesAccepted == 0, "withdrawal");
        h.Pump();
        Assert.Same(a, e.Best!.Value.Peer);
        Assert.Equal(DecisionReason.OnlyPath, e.Reason);
        Assert.Contains(P("10.50.0.0/16"), Table(h, sb, until: t => t.ContainsKey(P("10.50.0.0/16"))).Keys);
    }

    [Fact]
    public async Task Equal_paths_form_a_multipath_set_and_lower_router_id_breaks_the_tie()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        BgpPeer b = h.AddPeer("10.0.0.2", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.21");
        ScriptedPeer sb = h.Establish(b, "10.0.0.12");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.60.0.0/16");
        sb.Announce(Attrs("10.0.0.2", 65001), "10.60.0.0/16");
        h.Until(() => a.PrefixesAccepted == 1 && b.PrefixesAccepted == 1, "both paths");
        h.Pump();
        RouteEntry e = h.Speaker.Rib.Find(Prefix.Parse("10.60.0.0/16"))!.Value;
        Assert.Same(b, e.Best!.Value.Peer);
        Assert.Equal(DecisionReason.RouterId, e.Reason);
        Assert.Equal(2, e.Multipath.Count);
    }

    [Fact]
    public async Task Local_pref_then_origin_then_med_decide_in_that_order()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 64512);
        BgpPeer b = h.AddPeer("10.0.0.2", 64512);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        ScriptedPeer sb = h.Establish(b, "10.0.0.2");
        sa.Announce(Attrs("10.0.0.1", 65010, 65020) with { LocalPref = 200 }, "10.70.0.0/16");
        sb.Announce(Attrs("10.0.0.2", 65010) with { LocalPref = 100 }, "10.70.0.0/16");
        sa.Announce(Attrs("10.0.0.1", 65010) with { Origin = Origin.Incomplete }, "10.71.0.0/16");
        sb.Announce(Attrs("10.0.0.2", 65010) with { Origin = Origin.Igp }, "10.71.0.0/16");
        sa.Announce(Attrs("10.0.0.1", 65010) with { Med = 10 }, "10.72.0.0/16");
        sb.Announce(Attrs("10.0.0.2", 65010) with { Med = 20 }, "10.72.0.0/16");
        h.Until(() => a.PrefixesAccepted == 3 && b.PrefixesAccepted == 3, "all paths");
        h.Pump();
        RouteEntry lp = h.Speaker.Rib.Find(Prefix.Parse("10.70.0.0/16"))!.Value;
        Assert.Equal((a, DecisionReason.LocalPref), (lp.Best!.Value.Peer!, lp.Reason));
        RouteEntry origin = h.Speaker.Rib.Find(Prefix.Parse("10.71.0.0/16"))!.Value;
        Assert.Equal((b, DecisionReason.Origin), (origin.Best!.Value.Peer!, origin.Reason));
        RouteEntry med = h.Speaker.Rib.Find(Prefix.Parse("10.72.0.0/16"))!.Value;
        Assert.Equal((a, DecisionReason.Med), (med.Best!.Value.Peer!, med.Reason));
    }

    [Fact]
    public async Task Ibgp_routes_are_not_passed_between_ibgp_peers_unless_reflected()
    {
        await using var h = new Harness();
        BgpPeer client = h.AddPeer("10.0.0.1", 64512, edit: c => Client(c));
        BgpPeer other = h.AddPeer("10.0.0.2", 64512);
        BgpPeer third = h.AddPeer("10.0.0.3", 64512);
        ScriptedPeer sc = h.Establish(client, "10.0.0.1");
        ScriptedPeer so = h.Establish(other, "10.0.0.2");
        ScriptedPeer st = h.Establish(third, "10.0.0.3");
        Table(h, sc);
        Table(h, so);
        Table(h, st);
        // Non-client to non-client: never (RFC 4271 §9.2); non-client to client: reflected.
        so.Announce(Attrs("10.0.0.2") with { LocalPref = 100 }, "10.80.0.0/24");
        h.Until(() => other.PrefixesAccepted == 1, "the route");
        Assert.Empty(Table(h, st));
        PathAttributes reflected = Table(h, sc, until: t => t.ContainsKey(P("10.80.0.0/24")))[P("10.80.0.0/24")];
        Assert.Equal(SpeakerConfig.ParseRouterId("10.0.0.2"), reflected.OriginatorId);
        Assert.Equal(new[] { SpeakerConfig.ParseRouterId("10.0.0.254") }, reflected.ClusterList);
        Assert.Equal(Prefix.Parse("10.0.0.2/32"), reflected.NextHop);
        // Client to everyone.
        sc.Announce(Attrs("10.0.0.1"), "10.81.0.0/24");
        h.Until(() => client.PrefixesAccepted == 1, "the client route");
        Assert.Contains(P("10.81.0.0/24"), Table(h, so, until: t => t.ContainsKey(P("10.81.0.0/24"))).Keys);
        Assert.Contains(P("10.81.0.0/24"), Table(h, st, until: t => t.ContainsKey(P("10.81.0.0/24"))).Keys);
        // A reflected route that comes back with our cluster id is a loop and is ignored.
        st.Announce(Attrs("10.0.0.3") with { OriginatorId = 1, ClusterList = [SpeakerConfig.ParseRouterId("10.0.0.254")] }, "10.82.0.0/24");
        h.Pump();
        Assert.Null(h.Speaker.Rib.Find(Prefix.Parse("10.82.0.0/24"))?.Best);
    }

    private static PeerConfig Client(PeerConfig c) => new()
    {
        Address = c.Address,
        RemoteAs = c.RemoteAs,
        Passive = true,
        LocalAddress = c.LocalAddress,
        LocalAddressOtherFamily = c.LocalAddressOtherFamily,
        RouteReflectorClient = true,
    };

    [Fact]
    public async Task Routes_with_our_as_in_the_path_are_ignored()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001, 64512), "10.90.0.0/24");
        h.Pump();
        Assert.Equal(0, a.PrefixesAccepted);
        Assert.Null(h.Speaker.Rib.Find(Prefix.Parse("10.90.0.0/24"))?.Best);
    }

    [Fact]
    public async Task Treat_as_withdraw_removes_a_learned_route_and_keeps_the_session()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.9.9.0/24");
        h.Until(() => a.PrefixesAccepted == 1, "the route");
        sa.Send(Wire.Update([], [.. Wire.Origin(9), .. Wire.AsPath4(65001), .. Wire.NextHop(10, 0, 0, 1)], Wire.Nlri24(10, 9, 9)));
        h.Until(() => a.PrefixesAccepted == 0, "treat-as-withdraw");
        Assert.Equal(SessionState.Established, a.State);
        Assert.Contains(h.Log, l => l.Contains("RFC 7606", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Nlri_with_no_recognised_attribute_withdraws_the_previous_route()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.9.9.0/24", "10.9.8.0/24");
        h.Until(() => a.PrefixesAccepted == 2, "the routes");
        // RFC 7606 §3(d): the announcement of 10.9.9.0/24 carries only an optional non-transitive attribute we do
        // not know, so ORIGIN, AS_PATH and NEXT_HOP are all missing: the prefix is withdrawn, the session stays.
        sa.Send(Wire.Update([], Wire.Attr(0x80, 99, 1), Wire.Nlri24(10, 9, 9)));
        h.Until(() => a.PrefixesAccepted == 1, "treat-as-withdraw of 10.9.9.0/24");
        Assert.Null(h.Speaker.Rib.Find(P("10.9.9.0/24"))?.Best);
        Assert.NotNull(h.Speaker.Rib.Find(P("10.9.8.0/24"))?.Best);
        Assert.Equal(SessionState.Established, a.State);
        Assert.Contains(h.Log, l => l.Contains("RFC 7606", StringComparison.Ordinal) && l.Contains("missing well-known attribute ORIGIN", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Mp_reach_nlri_with_no_other_attribute_withdraws_the_previous_route()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("fd00::1", 65001), "fd00:9::/64");
        h.Until(() => a.PrefixesAccepted == 1, "the route");
        // MP_REACH_NLRI for fd00:9::/64 (next hop fd00::1) and nothing else: RFC 7606 §3(d), treat-as-withdraw.
        byte[] mp = [0, 2, 1, 16, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 64, 0xfd, 0, 0, 9, 0, 0, 0, 0];
        sa.Send(Wire.Update([], Wire.Attr(0x80, 14, mp), []));
        h.Until(() => a.PrefixesAccepted == 0, "treat-as-withdraw of fd00:9::/64");
        Assert.Null(h.Speaker.Rib.Find(P("fd00:9::/64"))?.Best);
        Assert.Equal(SessionState.Established, a.State);
    }

    /// <summary>An import policy that accepts what lies inside <paramref name="pools"/> (which a test may change).</summary>
    private static RoutePolicy InPools(List<Prefix> pools) =>
        (BgpPeer? _, Prefix p, ref PathAttributes a) => pools.Exists(pool => pool.Contains(p)) ? PolicyResult.Accept : PolicyResult.Reject;

    [Fact]
    public async Task Refused_routes_are_counted_not_stored()
    {
        await using var h = new Harness();
        h.Speaker.Import = InPools([P("10.244.0.0/16"), P("fd00:244::/48")]);
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        h.Pump();
        int before = h.Speaker.Rib.Count;
        // 20,000 /128s outside the pools (what a hostile or broken peer can send by the million), and one route inside.
        sa.Announce(Attrs("fd00::1", 65001), [.. Enumerable.Range(0, 20_000).Select(i => $"2001:db8::{i:x}/128")]);
        sa.Announce(Attrs("fd00::1", 65001), "fd00:244:0:1::/64");
        h.Until(() => a.PrefixesAccepted == 1 && a.PrefixesReceived == 20_001, "every announcement judged");
        h.Pump();
        Assert.Equal(before + 1, h.Speaker.Rib.Count);
        Assert.Equal(20_000, a.PrefixesRefused);
        Assert.Null(h.Speaker.Rib.Find(P("2001:db8::7/128")));
        Assert.NotNull(h.Speaker.Rib.Find(P("fd00:244:0:1::/64"))?.Best);

        // Withdrawing a refused prefix finds nothing to remove; announcing it again counts again and stores nothing.
        sa.Withdraw("2001:db8::7/128");
        sa.Announce(Attrs("fd00::1", 65001), "2001:db8::8/128");
        h.Until(() => a.PrefixesRefused == 20_001, "the second refusal");
        h.Pump();
        Assert.Equal(before + 1, h.Speaker.Rib.Count);
        Assert.Equal(1, a.PrefixesAccepted);
        Assert.Equal(SessionState.Established, a.State);
    }

    [Fact]
    public async Task A_wider_policy_asks_the_peer_again_with_route_refresh_for_the_families_it_refused()
    {
        await using var h = new Harness();
        List<Prefix> pools = [P("10.244.0.0/16")];
        h.Speaker.Import = InPools(pools);
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.5.0/26", "10.99.0.0/24", "10.99.1.0/24");
        h.Until(() => a.PrefixesAccepted == 1 && a.PrefixesRefused == 2, "one accepted, two refused");
        Assert.Null(h.Speaker.Rib.Find(P("10.99.0.0/24")));
        h.Drain(sa);

        // A new pool: the routes refused before are wanted now, and only the peer still has them.
        pools.Add(P("10.99.0.0/16"));
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: true));
        RouteRefreshMessage rr = h.Expect<RouteRefreshMessage>(sa);
        Assert.Equal((Afi.IPv4, Safi.Unicast), (rr.Afi, rr.Safi));
        // RFC 2918 §4: the peer answers with its Adj-RIB-Out for the family.
        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.5.0/26", "10.99.0.0/24", "10.99.1.0/24");
        h.Until(() => a.PrefixesAccepted == 3, "the refused routes back");
        Assert.NotNull(h.Speaker.Rib.Find(P("10.99.1.0/24"))?.Best);
        // Nothing was refused in IPv6, and everything is accepted now: no more refresh requests.
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: true));
        Assert.DoesNotContain(h.Drain(sa), m => m is RouteRefreshMessage);
        Assert.Equal(SessionState.Established, a.State);
    }

    [Fact]
    public async Task A_narrower_policy_drops_stored_routes_without_asking_the_peer()
    {
        await using var h = new Harness();
        List<Prefix> pools = [P("10.244.0.0/16"), P("10.99.0.0/16")];
        h.Speaker.Import = InPools(pools);
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.5.0/26", "10.99.0.0/24");
        h.Until(() => a.PrefixesAccepted == 2, "both accepted");
        h.Drain(sa);

        pools.RemoveAt(1);
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: false));
        h.Until(() => a.PrefixesAccepted == 1, "the route outside the pools to go");
        h.Pump();
        Assert.Null(h.Speaker.Rib.Find(P("10.99.0.0/24")));
        Assert.Equal(1, a.PrefixesRefused);
        Assert.DoesNotContain(h.Drain(sa), m => m is RouteRefreshMessage);

        // Widened again later, the route dropped here is asked for.
        pools.Add(P("10.99.0.0/16"));
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: true));
        Assert.Equal(Afi.IPv4, h.Expect<RouteRefreshMessage>(sa).Afi);
    }

    [Fact]
    public async Task A_peer_without_route_refresh_is_reset_when_the_policy_widens_as_bird_does()
    {
        await using var h = new Harness();
        List<Prefix> pools = [P("10.244.0.0/16")];
        h.Speaker.Import = InPools(pools);
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1", routeRefresh: false);
        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.5.0/26", "10.99.0.0/24");
        h.Until(() => a.PrefixesRefused == 1, "the refusal");

        // Narrowing needs nothing from the peer: the session stays.
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: false));
        Assert.DoesNotContain(h.Drain(sa), m => m is NotificationMessage);
        Assert.Equal(SessionState.Established, a.State);

        pools.Add(P("10.99.0.0/16"));
        h.Loop.Post(() => h.Speaker.Rib.Reimport(a, mayAcceptMore: true));
        NotificationMessage n = h.Expect<NotificationMessage>(sa);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.OtherConfigurationChange), (n.Code, n.Subcode));
        h.Until(() => a.State != SessionState.Established, "the session to go down");
        Assert.Contains(h.Log, l => l.Contains("route refresh", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Local_routes_go_to_every_peer_and_are_withdrawn()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        BgpPeer i = h.AddPeer("10.0.0.2", 64512);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        ScriptedPeer si = h.Establish(i, "10.0.0.2");
        Table(h, sa);
        Table(h, si);
        h.Loop.Post(() =>
        {
            h.Speaker.Rib.Originate(Prefix.Parse("10.244.7.0/26"));
            h.Speaker.Rib.Originate(Prefix.Parse("fd00:244::/122"));
        });
        Dictionary<Prefix, PathAttributes> ebgp = Table(h, sa, until: t => t.Count == 2);
        // One attribute set, two families: each gets the next hop of its own family.
        Assert.Equal(P("fd00::254/128"), ebgp[P("fd00:244::/122")].NextHop);
        Assert.Equal(AsPath.Sequence(64512), ebgp[Prefix.Parse("10.244.7.0/26")].AsPath);
        PathAttributes ibgp = Table(h, si, until: t => t.Count == 2)[P("10.244.7.0/26")];
        Assert.Equal(AsPath.Empty, ibgp.AsPath);
        Assert.Equal(100u, ibgp.LocalPref);
        Assert.Equal(Prefix.Parse("10.0.0.254/32"), ibgp.NextHop);
        h.Loop.Post(() => h.Speaker.Rib.WithdrawLocal(Prefix.Parse("10.244.7.0/26")));
        Assert.Single(Table(h, sa, ebgp, t => t.Count == 1));
        h.Pump();
        Assert.Null(h.Speaker.Rib.Find(Prefix.Parse("10.244.7.0/26")));
    }

    [Fact]
    public async Task Route_refresh_sends_the_table_again()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        h.Loop.Post(() => h.Speaker.Rib.Originate(Prefix.Parse("10.244.7.0/26")));
        Assert.Single(Table(h, sa, until: t => t.Count == 1));
        sa.Send(MessageEncoder.RouteRefresh(new RouteRefreshMessage(Afi.IPv4, Safi.Unicast)));
        Assert.Single(Table(h, sa, until: t => t.Count == 1));
        Assert.True(a.RequestRefresh(Afi.IPv4));
        Assert.Equal(Afi.IPv4, h.Expect<RouteRefreshMessage>(sa).Afi);
    }

    [Fact]
    public async Task Maximum_prefixes_closes_the_session_with_cease_1()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001, edit: c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            Passive = true,
            LocalAddress = c.LocalAddress,
            MaxPrefixes = 2,
        });
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        sa.Announce(Attrs("10.0.0.1", 65001), "10.1.0.0/24", "10.1.1.0/24", "10.1.2.0/24");
        NotificationMessage n = h.Expect<NotificationMessage>(sa);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.MaximumPrefixesReached), (n.Code, n.Subcode));
        h.Until(() => a.PrefixesAccepted == 0, "the peer's routes to go");
    }

    [Fact]
    public async Task Maximum_prefixes_counts_what_import_accepts_not_what_it_refuses()
    {
        await using var h = new Harness();
        h.Speaker.Import = InPools([P("10.244.0.0/16")]);
        BgpPeer a = h.AddPeer("10.0.0.1", 65001, edit: c => new PeerConfig
        {
            Address = c.Address,
            RemoteAs = c.RemoteAs,
            Passive = true,
            LocalAddress = c.LocalAddress,
            MaxPrefixes = 2,
        });
        ScriptedPeer sa = h.Establish(a, "10.0.0.1");
        // A ToR that sends a default route and far more than the node wants: refused, stored nowhere, never counted.
        sa.Announce(Attrs("10.0.0.1", 65001), [.. Enumerable.Range(0, 99).Select(i => $"10.{i}.0.0/16"), "0.0.0.0/0"]);
        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.1.0/26", "10.244.2.0/26");
        h.Until(() => a.PrefixesAccepted == 2, "two accepted");
        h.Pump();
        Assert.Equal(SessionState.Established, a.State);
        Assert.Equal(100, a.PrefixesRefused);

        sa.Announce(Attrs("10.0.0.1", 65001), "10.244.3.0/26");
        NotificationMessage n = h.Expect<NotificationMessage>(sa);
        Assert.Equal((ErrorCode.Cease, Subcode.Cease.MaximumPrefixesReached), (n.Code, n.Subcode));
        // RFC 4486 §4: AFI, SAFI and the upper bound.
        Assert.Equal(new byte[] { 0, 1, 1, 0, 0, 0, 2 }, n.Data.ToArray());
        Assert.Contains(h.Log, l => l.Contains("3 prefixes accepted, more than the limit of 2", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Graceful_restart_helper_keeps_routes_until_end_of_rib()
    {
        await using var h = new Harness();
        BgpPeer a = h.AddPeer("10.0.0.1", 65001);
        ScriptedPeer sa = h.Establish(a, "10.0.0.1", gracefulRestart: true);
        sa.Announce(Attrs("10.0.0.1", 65001), "10.1.0.0/24", "10.1.1.0/24");
        h.Until(() => a.PrefixesAccepted == 2, "routes");
        sa.Dispose(); // TCP reset, no NOTIFICATION: the peer is restarting
        h.Until(() => a.State != SessionState.Established, "session down");
        h.Pump();
        Assert.True(a.RoutesStale);
        Assert.True(h.Speaker.Rib.Find(Prefix.Parse("10.1.0.0/24"))!.Value.Best!.Value.Stale);
        // It comes back and announces one of the two again, then End-of-RIB: the other goes.
        ScriptedPeer again = h.Establish(a, "10.0.0.1", gracefulRestart: true);
        again.Announce(Attrs("10.0.0.1", 65001), "10.1.0.0/24");
        again.Send(UpdateEncoder.EndOfRib(Afi.IPv4));
        h.Until(() => !a.RoutesStale, "stale routes flushed");
        h.Pump();
        Assert.False(h.Speaker.Rib.Find(Prefix.Parse("10.1.0.0/24"))!.Value.Best!.Value.Stale);
        Assert.Null(h.Speaker.Rib.Find(Prefix.Parse("10.1.1.0/24"))?.Best);
    }

    [Fact]
    public void Policies_see_prefix_and_attributes()
    {
        RoutePolicy p = (BgpPeer? _, Prefix prefix, ref PathAttributes a) =>
        {
            a = a with { Communities = [7] };
            return prefix.Length <= 26 ? PolicyResult.Accept : PolicyResult.Reject;
        };
        PathAttributes attrs = new();
        Assert.Equal(PolicyResult.Reject, p(null, Prefix.Parse("10.0.0.1/32"), ref attrs));
        Assert.Equal(new uint[] { 7 }, attrs.Communities);
        Assert.Equal(IPAddress.Parse("10.0.0.0"), Prefix.Parse("10.0.0.1/26").Address);
    }
}
