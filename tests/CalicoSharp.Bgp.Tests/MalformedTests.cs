using CalicoSharp.Bgp;
using static CalicoSharp.Bgp.Tests.Wire;

namespace CalicoSharp.Bgp.Tests;

/// <summary>Every malformed input maps to its exact NOTIFICATION or RFC 7606 action.</summary>
public class MalformedTests
{
    public enum Expect
    {
        Reset,
        Withdraw,
        Discard,
    }

    private static readonly byte[] Nlri = Nlri24(10, 9, 9);
    private static readonly byte[] Ok = [.. Origin(), .. AsPath4(65001)];

    private static byte[] U(params byte[] attrs) => Update([], attrs, Nlri);

    private static byte[] Mp6(byte nhLen, byte[] nlri)
    {
        var v = new List<byte> { 0, 2, 1, nhLen };
        v.AddRange(new byte[nhLen]);
        if (nhLen > 0)
        {
            v[4] = 0x20;
        }
        v.Add(0);
        v.AddRange(nlri);
        return Attr(0x90, 14, [.. v]);
    }

    public static TheoryData<string, byte[], Expect, byte, byte> Cases()
    {
        byte[] badMarker = MessageEncoder.Keepalive();
        badMarker[3] = 0;
        byte[] tooShort = MessageEncoder.Keepalive();
        tooShort[17] = 18;
        byte[] keepalive20 = Message(MessageType.Keepalive, 0);
        byte[] longUpdate = Update([], [.. Ok, .. NextHop(10, 0, 0, 1)], [.. Nlri]);
        longUpdate[16] = 0x10;
        longUpdate[17] = 0x01;
        return new()
        {
            { "marker not all ones", badMarker, Expect.Reset, 1, 1 },
            { "length below 19", tooShort, Expect.Reset, 1, 2 },
            { "length above 4096", longUpdate, Expect.Reset, 1, 2 },
            { "type 9", Message((MessageType)9), Expect.Reset, 1, 3 },
            { "KEEPALIVE of 20 octets", keepalive20, Expect.Reset, 1, 2 },
            { "OPEN of 28 octets", Message(MessageType.Open, 4, 0, 1, 0, 90, 1, 1, 1, 1), Expect.Reset, 1, 2 },
            { "NOTIFICATION of 20 octets", Message(MessageType.Notification, 6), Expect.Reset, 1, 2 },
            { "ROUTE-REFRESH of 24 octets", Message(MessageType.RouteRefresh, 0, 1, 0, 1, 0), Expect.Reset, 7, 1 },
            { "OPEN version 3", Message(MessageType.Open, 3, 0xFD, 0xE9, 0, 90, 1, 1, 1, 1, 0), Expect.Reset, 2, 1 },
            { "OPEN optional parameter type 1", Message(MessageType.Open, 4, 0xFD, 0xE9, 0, 90, 1, 1, 1, 1, 3, 1, 1, 0), Expect.Reset, 2, 4 },
            { "OPEN parameters length overruns", Message(MessageType.Open, 4, 0xFD, 0xE9, 0, 90, 1, 1, 1, 1, 9, 2, 0), Expect.Reset, 1, 2 },
            { "OPEN capability overruns its parameter", Message(MessageType.Open, 4, 0xFD, 0xE9, 0, 90, 1, 1, 1, 1, 4, 2, 2, 65, 4), Expect.Reset, 2, 0 },
            { "withdrawn length overruns", Message(MessageType.Update, 0, 50, 0, 0), Expect.Reset, 3, 1 },
            { "attribute length overruns", Message(MessageType.Update, 0, 0, 0, 50, 0x40, 1, 1, 0), Expect.Reset, 3, 1 },
            { "NLRI prefix of 33 bits", Update([], [.. Ok, .. NextHop(10, 0, 0, 1)], [33, 1, 2, 3, 4, 5]), Expect.Reset, 3, 10 },
            { "withdrawn prefix truncated", Update([24, 10, 1], [], []), Expect.Reset, 3, 10 },
            { "ORIGIN value 3", U([.. Origin(3), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 6 },
            { "ORIGIN of 2 octets", U([.. Attr(0x40, 1, 0, 0), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 5 },
            { "ORIGIN flagged optional", U([.. Attr(0xC0, 1, 0), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 4 },
            { "ORIGIN with the partial bit", U([.. Attr(0x60, 1, 0), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 4 },
            { "AS_PATH segment type 5", U([.. Origin(), .. Attr(0x40, 2, 5, 1, 0, 0, 0xFD, 0xE9), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 11 },
            { "AS_PATH empty segment", U([.. Origin(), .. Attr(0x40, 2, 2, 0), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 11 },
            { "AS_PATH segment overruns", U([.. Origin(), .. Attr(0x40, 2, 2, 2, 0, 0, 0xFD, 0xE9), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 11 },
            { "AS_PATH lone octet", U([.. Origin(), .. Attr(0x40, 2, 2, 1, 0, 0, 0xFD, 0xE9, 2), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 11 },
            { "NEXT_HOP of 5 octets", U([.. Ok, .. Attr(0x40, 3, 10, 0, 0, 1, 0)]), Expect.Withdraw, 3, 5 },
            { "NEXT_HOP 0.0.0.0", U([.. Ok, .. NextHop(0, 0, 0, 0)]), Expect.Withdraw, 3, 8 },
            { "NEXT_HOP multicast", U([.. Ok, .. NextHop(224, 0, 0, 1)]), Expect.Withdraw, 3, 8 },
            { "MED of 3 octets", U([.. Wire.Mandatory, .. Attr(0x80, 4, 0, 0, 1)]), Expect.Withdraw, 3, 5 },
            { "LOCAL_PREF of 2 octets", U([.. Wire.Mandatory, .. Attr(0x40, 5, 0, 1)]), Expect.Withdraw, 3, 5 },
            { "ATOMIC_AGGREGATE of 1 octet", U([.. Wire.Mandatory, .. Attr(0x40, 6, 0)]), Expect.Discard, 3, 5 },
            { "AGGREGATOR of 5 octets", U([.. Wire.Mandatory, .. Attr(0xC0, 7, 0, 0, 0, 1, 1)]), Expect.Discard, 3, 5 },
            { "COMMUNITIES of 3 octets", U([.. Wire.Mandatory, .. Attr(0xC0, 8, 0, 0, 1)]), Expect.Withdraw, 3, 5 },
            { "COMMUNITIES empty", U([.. Wire.Mandatory, .. Attr(0xC0, 8)]), Expect.Withdraw, 3, 9 },
            { "LARGE_COMMUNITY of 13 octets", U([.. Wire.Mandatory, .. Attr(0xC0, 32, new byte[13])]), Expect.Withdraw, 3, 9 },
            { "ORIGINATOR_ID of 3 octets", U([.. Wire.Mandatory, .. Attr(0x80, 9, 1, 2, 3)]), Expect.Withdraw, 3, 5 },
            { "CLUSTER_LIST of 5 octets", U([.. Wire.Mandatory, .. Attr(0x80, 10, 1, 2, 3, 4, 5)]), Expect.Withdraw, 3, 5 },
            { "MP_REACH_NLRI of 3 octets", Update([], [.. Ok, .. Attr(0x80, 14, 0, 2, 1)], []), Expect.Reset, 3, 9 },
            { "MP_REACH_NLRI next hop of 5 octets", Update([], [.. Ok, .. Mp6(5, [64, 0xfd, 0, 0, 0, 0, 0, 0, 0])], []), Expect.Withdraw, 3, 9 },
            { "MP_REACH_NLRI prefix of 129 bits", Update([], [.. Ok, .. Mp6(16, [129, .. new byte[17]])], []), Expect.Reset, 3, 9 },
            { "MP_UNREACH_NLRI of 2 octets", Update([], [.. Attr(0x80, 15, 0, 2)], []), Expect.Reset, 3, 9 },
            { "MP_REACH_NLRI twice", Update([], [.. Ok, .. Mp6(16, []), .. Mp6(16, [])], []), Expect.Reset, 3, 1 },
            { "MP_REACH_NLRI overruns the block", Update([], [.. Ok, 0x90, 14, 0, 40, 0, 2], []), Expect.Reset, 3, 5 },
            { "unknown well-known attribute", U([.. Wire.Mandatory, .. Attr(0x40, 99, 1)]), Expect.Reset, 3, 2 },
            { "ORIGIN missing", U([.. AsPath4(65001), .. NextHop(10, 0, 0, 1)]), Expect.Withdraw, 3, 3 },
            { "NEXT_HOP missing", U(Ok), Expect.Withdraw, 3, 3 },
            { "NLRI without attributes", Update([], [], Nlri), Expect.Withdraw, 3, 3 },
            { "NLRI with only an unknown optional non-transitive attribute", U(Attr(0x80, 99, 1)), Expect.Withdraw, 3, 3 },
            { "NLRI with only a discarded ATOMIC_AGGREGATE", U(Attr(0x40, 6, 0)), Expect.Withdraw, 3, 3 },
            { "NLRI with only an IPv6 MP_REACH_NLRI", U(Mp6(16, [64, 0xfd, 0, 0, 0, 0, 0, 0, 0])), Expect.Withdraw, 3, 3 },
            { "MP_REACH_NLRI without other attributes", Update([], Mp6(16, [64, 0xfd, 0, 0, 0, 0, 0, 0, 0]), []), Expect.Withdraw, 3, 3 },
            { "MP_REACH_NLRI with AS_PATH but no ORIGIN", Update([], [.. AsPath4(65001), .. Mp6(16, [64, 0xfd, 0, 0, 0, 0, 0, 0, 0])], []), Expect.Withdraw, 3, 3 },
            { "attribute overruns the block", U([.. Wire.Mandatory, 0x80, 4, 9, 0, 0]), Expect.Withdraw, 3, 5 },
            { "two octets left in the block", U([.. Wire.Mandatory, 0x80, 4]), Expect.Withdraw, 3, 1 },
        };
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Malformed_input_gets_its_exact_error(string name, byte[] message, Expect expect, byte code, byte subcode)
    {
        Assert.NotNull(name);
        switch (expect)
        {
            case Expect.Reset:
                BgpProtocolException e = Assert.Throws<BgpProtocolException>(() => Decode(message));
                Assert.Equal((ErrorCode)code, e.Code);
                Assert.Equal(subcode, e.Subcode);
                Assert.Equal(ErrorAction.SessionReset, e.Action);
                break;
            case Expect.Withdraw:
                UpdateMessage u = DecodeUpdate(message);
                Assert.True(u.TreatAsWithdraw);
                Assert.Equal((ErrorCode)code, u.Error!.Code);
                Assert.Equal(subcode, u.Error.Subcode);
                Assert.Equal(ErrorAction.TreatAsWithdraw, u.Error.Action);
                Assert.Empty(u.Nlri);
                Assert.Empty(u.MpReach);
                Assert.Null(u.Attributes);
                Assert.NotEmpty(u.Withdrawn);
                break;
            case Expect.Discard:
                UpdateMessage d = DecodeUpdate(message);
                Assert.False(d.TreatAsWithdraw);
                Assert.NotEmpty(d.Discarded);
                Assert.Equal(Nlri24(10, 9, 9)[1..], d.Nlri.Select(p => p.Address.GetAddressBytes()[..3]).Single());
                Assert.False(d.Attributes!.AtomicAggregate);
                Assert.Null(d.Attributes.Aggregator);
                break;
        }
    }

    [Fact]
    public void Repeated_attribute_keeps_the_first()
    {
        UpdateMessage u = DecodeUpdate(U([.. Origin(2), .. Origin(0), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)]));
        Assert.Equal(Origin.Incomplete, u.Attributes!.Origin);
        Assert.Single(u.Discarded);
    }

    [Fact]
    public void Malformed_as4_path_from_an_old_speaker_is_discarded()
    {
        byte[] m = U([.. Origin(), .. Attr(0x40, 2, 2, 1, 0xFD, 0xE9), .. NextHop(10, 0, 0, 1), .. Attr(0xC0, 17, 2, 0)]);
        UpdateMessage u = DecodeUpdate(m, fourOctet: false);
        Assert.False(u.TreatAsWithdraw);
        Assert.Equal(AsPath.Sequence(65001), u.Attributes!.AsPath);
        Assert.Contains(u.Discarded, d => d.Contains("AS4_PATH", StringComparison.Ordinal));
    }

    [Fact]
    public void Ipv6_end_of_rib_is_not_confused_with_a_withdrawal()
    {
        UpdateMessage u = DecodeUpdate(Update([], [.. Attr(0x80, 15, 0, 2, 1, 64, 0xfd, 0, 0, 0, 0, 0, 0, 0)], []));
        Assert.Null(u.EndOfRib);
        Assert.Single(u.MpUnreach);
        // A malformed UPDATE with no NLRI is not an End-of-RIB either.
        Assert.Null(DecodeUpdate(Update([], [.. Origin(7)], [])).EndOfRib);
    }
}
