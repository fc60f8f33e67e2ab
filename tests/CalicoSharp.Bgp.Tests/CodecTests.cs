using System.Buffers;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

public class CodecTests
{
    private static readonly CodecOptions As4 = new(true, false);

    [Fact]
    public void Open_round_trips_with_every_capability()
    {
        var open = new OpenMessage
        {
            As = 4200000001,
            HoldTime = 90,
            BgpIdentifier = 0x0A000001,
            Multiprotocol = [(Afi.IPv4, Safi.Unicast), (Afi.IPv6, Safi.Unicast)],
            RouteRefresh = true,
            FourOctetAs = true,
            ExtendedMessage = true,
            GracefulRestart = new GracefulRestartCapability(true, false, 120, [new(Afi.IPv4, Safi.Unicast, true), new(Afi.IPv6, Safi.Unicast, false)]),
            UnknownCapabilities = [new UnknownCapability(73, new byte[] { 1, 2, 3 })],
        };
        byte[] bytes = MessageEncoder.Open(open);
        var back = Assert.IsType<OpenMessage>(Wire.Decode(bytes));
        Assert.Equal(4200000001u, back.As);
        Assert.Equal(OpenMessage.AsTrans, back.MyAsField);
        Assert.Equal(90, back.HoldTime);
        Assert.Equal("10.0.0.1", back.RouterId.ToString());
        Assert.Equal(open.Multiprotocol, back.Multiprotocol);
        Assert.True(back.RouteRefresh && back.FourOctetAs && back.ExtendedMessage);
        Assert.Equal(120, back.GracefulRestart!.RestartTime);
        Assert.True(back.GracefulRestart.RestartState);
        Assert.Equal(open.GracefulRestart.Families, back.GracefulRestart.Families);
        Assert.Equal(73, Assert.Single(back.UnknownCapabilities).Code);
        Assert.Equal(bytes, MessageEncoder.Open(back));
    }

    [Fact]
    public void Open_without_capabilities_is_a_plain_two_octet_speaker()
    {
        byte[] m = Wire.Message(MessageType.Open, 4, 0xFD, 0xE9, 0, 180, 192, 0, 2, 1, 0);
        var o = Assert.IsType<OpenMessage>(Wire.Decode(m));
        Assert.Equal(65001u, o.As);
        Assert.False(o.FourOctetAs);
        Assert.Empty(o.Multiprotocol);
    }

    [Fact]
    public void Keepalive_notification_and_route_refresh_round_trip()
    {
        Assert.IsType<KeepaliveMessage>(Wire.Decode(MessageEncoder.Keepalive()));
        var n = Assert.IsType<NotificationMessage>(Wire.Decode(MessageEncoder.Notification(NotificationMessage.Shutdown("maintenance: back in 5 min"))));
        Assert.Equal(ErrorCode.Cease, n.Code);
        Assert.Equal(Subcode.Cease.AdministrativeShutdown, n.Subcode);
        Assert.Equal("maintenance: back in 5 min", n.ShutdownText);
        Assert.Contains("administrative shutdown", n.ToString(), StringComparison.Ordinal);
        var r = Assert.IsType<RouteRefreshMessage>(Wire.Decode(MessageEncoder.RouteRefresh(new RouteRefreshMessage(Afi.IPv6, Safi.Unicast))));
        Assert.Equal(Afi.IPv6, r.Afi);
        Assert.Equal(Safi.Unicast, r.Safi);
    }

    [Fact]
    public void Shutdown_message_is_cut_at_255_octets_on_a_character_boundary()
    {
        string text = new('é', 200);
        NotificationMessage n = NotificationMessage.Shutdown(text);
        Assert.True(n.Data.Length <= 256);
        Assert.Equal(new string('é', 127), n.ShutdownText);
    }

    private static PathAttributes Full(Prefix nextHop) => new()
    {
        Origin = Origin.Egp,
        AsPath = new AsPath([new AsPathSegment(SegmentType.AsSequence, [65001, 4200000000]), new AsPathSegment(SegmentType.AsSet, [1, 2])]),
        NextHop = nextHop,
        Med = 50,
        LocalPref = 200,
        AtomicAggregate = true,
        Aggregator = (65001, 0x0A000001),
        Communities = [(65001u << 16) | 7],
        LargeCommunities = [new LargeCommunity(65001, 1, 2)],
        OriginatorId = 0x0A000009,
        ClusterList = [0x0A0000FE],
        Unknown = [new RawAttribute(AttributeFlags.Optional | AttributeFlags.Transitive | AttributeFlags.Partial, 99, [1, 2, 3, 4])],
    };

    [Fact]
    public void Ipv4_update_round_trips_every_attribute()
    {
        PathAttributes a = Full(Prefix.Parse("10.0.0.1/32"));
        Prefix[] prefixes = [Prefix.Parse("10.244.1.0/26"), Prefix.Parse("10.244.2.0/26"), Prefix.Parse("0.0.0.0/0"), Prefix.Parse("10.1.2.3/32")];
        var enc = new UpdateEncoder(As4);
        byte[] bytes = Wire.Encode(w => enc.WriteAnnounce(w, a, prefixes));
        UpdateMessage u = Wire.DecodeUpdate(bytes);
        Assert.False(u.TreatAsWithdraw);
        Assert.Equal(prefixes, u.Nlri);
        Assert.Equal(a, u.Attributes);
    }

    [Fact]
    public void Ipv6_update_carries_next_hops_in_mp_reach()
    {
        PathAttributes a = Full(Prefix.Parse("2001:db8::1/128")) with { LinkLocalNextHop = Prefix.Parse("fe80::1/128") };
        Prefix[] prefixes = [Prefix.Parse("fd00:10:244::/122"), Prefix.Parse("fd00::/8")];
        byte[] bytes = Wire.Encode(w => new UpdateEncoder(As4).WriteAnnounce(w, a, prefixes));
        UpdateMessage u = Wire.DecodeUpdate(bytes);
        Assert.Empty(u.Nlri);
        Assert.Equal(Afi.IPv6, u.MpReachAfi);
        Assert.Equal(prefixes, u.MpReach);
        Assert.Equal(a, u.MpAttributes());
    }

    [Fact]
    public void Withdrawals_and_end_of_rib_round_trip()
    {
        Prefix[] v4 = [Prefix.Parse("10.244.1.0/26"), Prefix.Parse("10.244.9.0/26")];
        UpdateMessage u = Wire.DecodeUpdate(Wire.Encode(w => new UpdateEncoder(As4).WriteWithdraw(w, v4)));
        Assert.Equal(v4, u.Withdrawn);
        Assert.Null(u.EndOfRib);
        Prefix[] v6 = [Prefix.Parse("fd00:10:244::/122")];
        u = Wire.DecodeUpdate(Wire.Encode(w => new UpdateEncoder(As4).WriteWithdraw(w, v6)));
        Assert.Equal(v6, u.MpUnreach);
        Assert.Equal(Afi.IPv4, Wire.DecodeUpdate(UpdateEncoder.EndOfRib(Afi.IPv4)).EndOfRib);
        Assert.Equal(Afi.IPv6, Wire.DecodeUpdate(UpdateEncoder.EndOfRib(Afi.IPv6)).EndOfRib);
    }

    [Fact]
    public void Packing_fills_messages_up_to_the_limit_and_no_further()
    {
        var prefixes = Enumerable.Range(0, 5000).Select(i => Prefix.V4(0x0A000000u + ((uint)i << 8), 24)).ToArray();
        var a = new PathAttributes { AsPath = AsPath.Sequence(65001), NextHop = Prefix.Parse("10.0.0.1/32") };
        var enc = new UpdateEncoder(As4);
        var w = new ArrayBufferWriter<byte>();
        ReadOnlySpan<Prefix> rest = prefixes;
        int messages = 0;
        while (!rest.IsEmpty)
        {
            rest = rest[enc.WriteAnnounce(w, a, rest)..];
            messages++;
        }
        // 4096 - 23 header/lengths - 18 attributes = 4055 octets: 1013 /24s per message.
        Assert.Equal(5, messages);
        var got = new List<Prefix>();
        ReadOnlySpan<byte> all = w.WrittenSpan;
        while (!all.IsEmpty)
        {
            int len = (all[16] << 8) | all[17];
            Assert.True(len <= 4096);
            got.AddRange(Wire.DecodeUpdate(all[..len].ToArray()).Nlri);
            all = all[len..];
        }
        Assert.Equal(prefixes, got);
    }

    [Fact]
    public void Two_octet_session_uses_as_trans_and_as4_path_and_merges_it_back()
    {
        var a = new PathAttributes
        {
            AsPath = AsPath.Sequence(65001, 4200000000, 65002),
            NextHop = Prefix.Parse("10.0.0.1/32"),
            Aggregator = (4200000000, 0x0A000001),
        };
        var two = new CodecOptions(false, false);
        byte[] bytes = Wire.Encode(w => new UpdateEncoder(two).WriteAnnounce(w, a, [Prefix.Parse("10.9.0.0/16")]));
        // On the wire for an old speaker: AS_PATH 65001 23456 65002 (2 octets each), then AS4_PATH.
        Assert.True(bytes.AsSpan().IndexOf(new byte[] { 0x40, 2, 8, 2, 3, 0xFD, 0xE9, 0x5B, 0xA0, 0xFD, 0xEA }) > 0);
        Assert.True(bytes.AsSpan().IndexOf(new byte[] { 0xC0, 17, 14, 2, 3 }) > 0);
        UpdateMessage u = Wire.DecodeUpdate(bytes, fourOctet: false);
        Assert.Equal(a.AsPath, u.Attributes!.AsPath);
        Assert.Equal(a.Aggregator, u.Attributes.Aggregator);
    }

    [Fact]
    public void As4_merge_keeps_leading_ases_an_old_speaker_prepended()
    {
        AsPath asPath = AsPath.Sequence(64999, 65001, 23456);
        AsPath as4 = AsPath.Sequence(65001, 4200000000);
        Assert.Equal(AsPath.Sequence(64999, 65001, 4200000000), AttributeDecoder.MergeAs4Path(asPath, as4));
        // AS4_PATH longer than AS_PATH: ignored (RFC 6793 §4.2.3).
        Assert.Equal(AsPath.Sequence(65001), AttributeDecoder.MergeAs4Path(AsPath.Sequence(65001), as4));
    }

    [Fact]
    public void Unknown_optional_transitive_attribute_is_kept_with_the_partial_bit_and_non_transitive_is_dropped()
    {
        byte[] m = Wire.Update([], [.. Wire.Mandatory, .. Wire.Attr(0xC0, 200, 9, 9), .. Wire.Attr(0x80, 201, 7)], Wire.Nlri24(10, 1, 2));
        UpdateMessage u = Wire.DecodeUpdate(m);
        RawAttribute kept = Assert.Single(u.Attributes!.Unknown);
        Assert.Equal(200, kept.Code);
        Assert.Equal(0xE0, kept.Flags);
    }

    [Fact]
    public void Prefix_nlri_form_and_text()
    {
        Prefix p = Prefix.Parse("10.244.1.77/26");
        Assert.Equal("10.244.1.64/26", p.ToString());
        Span<byte> b = stackalloc byte[17];
        Assert.Equal(5, p.Write(b));
        Assert.Equal(5, Prefix.TryRead(b, Afi.IPv4, out Prefix back));
        Assert.Equal(p, back);
        Assert.True(Prefix.Parse("10.244.0.0/16").Contains(p));
        Assert.False(p.Contains(Prefix.Parse("10.244.0.0/16")));
        Assert.Equal(-1, Prefix.TryRead([33, 1, 2, 3, 4, 5], Afi.IPv4, out _));
        Assert.Equal(-1, Prefix.TryRead([24, 1, 2], Afi.IPv4, out _));
        Assert.Equal("fd00::/8", Prefix.Parse("fd12::1/8").ToString());
    }
}
