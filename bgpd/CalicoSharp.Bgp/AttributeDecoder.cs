using System.Buffers.Binary;

namespace CalicoSharp.Bgp;

/// <summary>Path attribute flag bits, RFC 4271 §4.3.</summary>
public static class AttributeFlags
{
    public const byte Optional = 0x80;
    public const byte Transitive = 0x40;
    public const byte Partial = 0x20;
    public const byte ExtendedLength = 0x10;
}

/// <summary>Path attribute type codes.</summary>
public static class AttributeCode
{
    public const byte Origin = 1;
    public const byte AsPath = 2;
    public const byte NextHop = 3;
    public const byte Med = 4;
    public const byte LocalPref = 5;
    public const byte AtomicAggregate = 6;
    public const byte Aggregator = 7;
    public const byte Communities = 8;
    public const byte OriginatorId = 9;
    public const byte ClusterList = 10;
    public const byte MpReachNlri = 14;
    public const byte MpUnreachNlri = 15;
    public const byte As4Path = 17;
    public const byte As4Aggregator = 18;
    public const byte LargeCommunities = 32;
}

/// <summary>
/// Decodes the path attribute block of an UPDATE. One table row per known attribute: its name, the
/// optional/transitive flags it must carry, its decoder and what RFC 7606 says to do when it is malformed.
/// </summary>
internal static class AttributeDecoder
{
    private delegate void Decoder(ReadOnlySpan<byte> value, ref Builder b);

    private sealed record Row(byte Code, string Name, byte Flags, ErrorAction OnError, byte Subcode, Decoder Decode);

    private static readonly Row?[] Table = BuildTable();

    private const byte WellKnown = AttributeFlags.Transitive;
    private const byte OptionalNonTransitive = AttributeFlags.Optional;
    private const byte OptionalTransitive = AttributeFlags.Optional | AttributeFlags.Transitive;

    private static Row?[] BuildTable()
    {
        var t = new Row?[256];
        void Add(Row r) => t[r.Code] = r;
        // RFC 7606 §7.1-§7.12 (and RFC 6793 §6, RFC 8092 §6) fix the actions.
        Add(new(AttributeCode.Origin, "ORIGIN", WellKnown, ErrorAction.TreatAsWithdraw, Subcode.Update.InvalidOrigin, DecodeOrigin));
        Add(new(AttributeCode.AsPath, "AS_PATH", WellKnown, ErrorAction.TreatAsWithdraw, Subcode.Update.MalformedAsPath, DecodeAsPath));
        Add(new(AttributeCode.NextHop, "NEXT_HOP", WellKnown, ErrorAction.TreatAsWithdraw, Subcode.Update.InvalidNextHop, DecodeNextHop));
        Add(new(AttributeCode.Med, "MULTI_EXIT_DISC", OptionalNonTransitive, ErrorAction.TreatAsWithdraw, Subcode.Update.AttributeLengthError, DecodeMed));
        Add(new(AttributeCode.LocalPref, "LOCAL_PREF", WellKnown, ErrorAction.TreatAsWithdraw, Subcode.Update.AttributeLengthError, DecodeLocalPref));
        Add(new(AttributeCode.AtomicAggregate, "ATOMIC_AGGREGATE", WellKnown, ErrorAction.AttributeDiscard, Subcode.Update.AttributeLengthError, DecodeAtomicAggregate));
        Add(new(AttributeCode.Aggregator, "AGGREGATOR", OptionalTransitive, ErrorAction.AttributeDiscard, Subcode.Update.AttributeLengthError, DecodeAggregator));
        Add(new(AttributeCode.Communities, "COMMUNITIES", OptionalTransitive, ErrorAction.TreatAsWithdraw, Subcode.Update.OptionalAttributeError, DecodeCommunities));
        Add(new(AttributeCode.OriginatorId, "ORIGINATOR_ID", OptionalNonTransitive, ErrorAction.TreatAsWithdraw, Subcode.Update.AttributeLengthError, DecodeOriginatorId));
        Add(new(AttributeCode.ClusterList, "CLUSTER_LIST", OptionalNonTransitive, ErrorAction.TreatAsWithdraw, Subcode.Update.AttributeLengthError, DecodeClusterList));
        Add(new(AttributeCode.MpReachNlri, "MP_REACH_NLRI", OptionalNonTransitive, ErrorAction.SessionReset, Subcode.Update.OptionalAttributeError, DecodeMpReach));
        Add(new(AttributeCode.MpUnreachNlri, "MP_UNREACH_NLRI", OptionalNonTransitive, ErrorAction.SessionReset, Subcode.Update.OptionalAttributeError, DecodeMpUnreach));
        Add(new(AttributeCode.As4Path, "AS4_PATH", OptionalTransitive, ErrorAction.AttributeDiscard, Subcode.Update.OptionalAttributeError, DecodeAs4Path));
        Add(new(AttributeCode.As4Aggregator, "AS4_AGGREGATOR", OptionalTransitive, ErrorAction.AttributeDiscard, Subcode.Update.OptionalAttributeError, DecodeAs4Aggregator));
        Add(new(AttributeCode.LargeCommunities, "LARGE_COMMUNITY", OptionalTransitive, ErrorAction.TreatAsWithdraw, Subcode.Update.OptionalAttributeError, DecodeLargeCommunities));
        return t;
    }

    public static string Name(byte code) => Table[code]?.Name ?? $"type {code}";

    /// <summary>Mutable state while one attribute block is read.</summary>
    private ref struct Builder
    {
        public CodecOptions Options;
        public UpdateMessage Update;
        public Origin Origin;
        public AsPath? AsPath;
        public AsPath? As4Path;
        public Prefix NextHop;
        public uint? Med;
        public uint? LocalPref;
        public bool AtomicAggregate;
        public (uint As, uint Address)? Aggregator;
        public (uint As, uint Address)? As4Aggregator;
        public uint[]? Communities;
        public LargeCommunity[]? Large;
        public uint? OriginatorId;
        public uint[]? ClusterList;
        public List<RawAttribute>? Unknown;
        public bool Any;
    }

    public static void Decode(ReadOnlySpan<byte> block, CodecOptions options, UpdateMessage u)
    {
        var b = new Builder { Options = options, Update = u };
        Span<bool> seen = stackalloc bool[256];
        while (!block.IsEmpty)
        {
            // RFC 7606 §4: fewer octets than an attribute header, or an attribute that overruns the block, is
            // treat-as-withdraw; the Total Path Attribute Length still locates the NLRI.
            if (block.Length < 3 || ((block[0] & AttributeFlags.ExtendedLength) != 0 && block.Length < 4))
            {
                MessageDecoder.MarkWithdraw(u, new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.MalformedAttributeList,
                    $"{block.Length} octets left in the attribute block, too few for an attribute header", null, ErrorAction.TreatAsWithdraw));
                break;
            }
            byte flags = block[0];
            byte code = block[1];
            bool extended = (flags & AttributeFlags.ExtendedLength) != 0;
            int len = extended ? BinaryPrimitives.ReadUInt16BigEndian(block[2..]) : block[2];
            int hdr = extended ? 4 : 3;
            if (hdr + len > block.Length)
            {
                if (code is AttributeCode.MpReachNlri or AttributeCode.MpUnreachNlri)
                {
                    throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.AttributeLengthError,
                        $"{Name(code)} of {len} octets overruns the attribute block", block.ToArray());
                }
                MessageDecoder.MarkWithdraw(u, new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.AttributeLengthError,
                    $"{Name(code)} of {len} octets overruns the attribute block ({block.Length - hdr} left)", null, ErrorAction.TreatAsWithdraw));
                break;
            }
            ReadOnlySpan<byte> whole = block[..(hdr + len)];
            ReadOnlySpan<byte> value = whole[hdr..];
            block = block[(hdr + len)..];
            Row? row = Table[code];
            if (seen[code])
            {
                // RFC 7606 §3 g: a repeated MP attribute resets the session; any other repeat is discarded.
                if (code is AttributeCode.MpReachNlri or AttributeCode.MpUnreachNlri)
                {
                    throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.MalformedAttributeList, $"{Name(code)} appears twice");
                }
                u.Discarded.Add($"{Name(code)}: repeated, discarded");
                continue;
            }
            seen[code] = true;
            if (row is null)
            {
                if ((flags & AttributeFlags.Optional) == 0)
                {
                    throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.UnrecognizedWellKnownAttribute,
                        $"unrecognized well-known attribute type {code}", whole.ToArray());
                }
                if ((flags & AttributeFlags.Transitive) != 0)
                {
                    // RFC 4271 §5: pass an unknown optional transitive attribute on, with the Partial bit set.
                    (b.Unknown ??= []).Add(new RawAttribute((byte)(flags & ~AttributeFlags.ExtendedLength | AttributeFlags.Partial), code, value.ToArray()));
                    b.Any = true;
                }
                continue;
            }
            // RFC 4271 §6.3 / RFC 7606 §3 c: flags must match the type; the Partial bit only on optional transitive ones.
            bool flagsOk = (flags & (AttributeFlags.Optional | AttributeFlags.Transitive)) == row.Flags
                && ((flags & AttributeFlags.Partial) == 0 || row.Flags == OptionalTransitive);
            try
            {
                if (!flagsOk)
                {
                    throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.AttributeFlagsError,
                        $"{row.Name} with flags 0x{flags:x2}", whole.ToArray(), row.OnError);
                }
                row.Decode(value, ref b);
                if (code is not AttributeCode.MpReachNlri and not AttributeCode.MpUnreachNlri)
                {
                    b.Any = true;
                }
            }
            catch (BgpProtocolException e)
            {
                ErrorAction action = row.OnError;
                var error = new BgpProtocolException(e.Code, e.Subcode, e.Message, e.Data.Length > 0 ? e.Data : whole.ToArray(), action);
                switch (action)
                {
                    case ErrorAction.SessionReset:
                        throw error;
                    case ErrorAction.AttributeDiscard:
                        u.Discarded.Add($"{row.Name}: {e.Message}, discarded");
                        if (code == AttributeCode.AtomicAggregate)
                        {
                            b.AtomicAggregate = false;
                        }
                        break;
                    default:
                        MessageDecoder.MarkWithdraw(u, error);
                        break;
                }
            }
        }
        u.SeenOrigin = seen[AttributeCode.Origin];
        u.SeenAsPath = seen[AttributeCode.AsPath] && b.AsPath is not null;
        if (!b.Any)
        {
            return;
        }
        AsPath path = b.AsPath ?? AsPath.Empty;
        (uint As, uint Address)? aggregator = b.Aggregator;
        if (!options.FourOctetAs)
        {
            // RFC 6793 §4.2.3: rebuild the real path from AS_PATH and AS4_PATH. An AGGREGATOR that is not
            // AS_TRANS means the AS4 attributes came from an old speaker and are ignored; AS4_AGGREGATOR only
            // completes an AGGREGATOR that holds AS_TRANS.
            bool useAs4 = aggregator is null || aggregator.Value.As == OpenMessage.AsTrans;
            if (b.As4Aggregator is { } a4 && aggregator is { As: OpenMessage.AsTrans })
            {
                aggregator = a4;
            }
            if (b.As4Path is { } p4 && useAs4)
            {
                path = MergeAs4Path(path, p4);
            }
        }
        else if (b.As4Path is not null || b.As4Aggregator is not null)
        {
            // RFC 6793 §4.1: between NEW speakers AS4_PATH and AS4_AGGREGATOR are discarded.
            u.Discarded.Add("AS4_PATH/AS4_AGGREGATOR from a 4-octet AS speaker, discarded");
        }
        u.Attributes = new PathAttributes
        {
            Origin = b.Origin,
            AsPath = path,
            NextHop = b.NextHop,
            Med = b.Med,
            LocalPref = b.LocalPref,
            AtomicAggregate = b.AtomicAggregate,
            Aggregator = aggregator,
            Communities = b.Communities ?? [],
            LargeCommunities = b.Large ?? [],
            OriginatorId = b.OriginatorId,
            ClusterList = b.ClusterList ?? [],
            // Kept in type order, the order they are sent in, so equal sets compare equal.
            Unknown = b.Unknown is null ? [] : [.. b.Unknown.OrderBy(x => x.Code)],
        };
    }

    private static BgpProtocolException Malformed(byte subcode, string message) => new(ErrorCode.UpdateMessage, subcode, message);

    private static void ExpectLength(ReadOnlySpan<byte> v, int n, string name)
    {
        if (v.Length != n)
        {
            throw Malformed(Subcode.Update.AttributeLengthError, $"{name} of {v.Length} octets (must be {n})");
        }
    }

    private static void DecodeOrigin(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 1, "ORIGIN");
        if (v[0] > 2)
        {
            throw Malformed(Subcode.Update.InvalidOrigin, $"ORIGIN value {v[0]}");
        }
        b.Origin = (Origin)v[0];
    }

    private static void DecodeAsPath(ReadOnlySpan<byte> v, ref Builder b) => b.AsPath = ReadAsPath(v, b.Options.FourOctetAs ? 4 : 2, "AS_PATH", allowConfed: true);

    private static void DecodeAs4Path(ReadOnlySpan<byte> v, ref Builder b) => b.As4Path = ReadAsPath(v, 4, "AS4_PATH", allowConfed: false);

    /// <summary>RFC 7606 §7.2: unknown segment type, zero-length segment, overrun or a lone octet is malformed.</summary>
    internal static AsPath ReadAsPath(ReadOnlySpan<byte> v, int width, string name, bool allowConfed)
    {
        if (v.IsEmpty)
        {
            return AsPath.Empty;
        }
        var segments = new List<AsPathSegment>(1);
        while (!v.IsEmpty)
        {
            if (v.Length < 2)
            {
                throw Malformed(Subcode.Update.MalformedAsPath, $"{name}: one octet left after the last segment");
            }
            byte type = v[0];
            int count = v[1];
            if (type is < 1 or > 4 || (!allowConfed && type > 2))
            {
                throw Malformed(Subcode.Update.MalformedAsPath, $"{name}: segment type {type}");
            }
            if (count == 0)
            {
                throw Malformed(Subcode.Update.MalformedAsPath, $"{name}: empty segment");
            }
            if (v.Length < 2 + count * width)
            {
                throw Malformed(Subcode.Update.MalformedAsPath, $"{name}: segment of {count} AS numbers overruns the attribute");
            }
            uint[] asns = new uint[count];
            for (int i = 0; i < count; i++)
            {
                asns[i] = width == 4 ? BinaryPrimitives.ReadUInt32BigEndian(v[(2 + i * 4)..]) : BinaryPrimitives.ReadUInt16BigEndian(v[(2 + i * 2)..]);
            }
            segments.Add(new AsPathSegment((SegmentType)type, asns));
            v = v[(2 + count * width)..];
        }
        return new AsPath([.. segments]);
    }

    /// <summary>RFC 6793 §4.2.3: keep the leading ASes AS4_PATH does not cover, then AS4_PATH.</summary>
    internal static AsPath MergeAs4Path(AsPath asPath, AsPath as4Path)
    {
        int extra = asPath.Length - as4Path.Length;
        if (extra < 0)
        {
            return asPath;
        }
        var segments = new List<AsPathSegment>();
        foreach (AsPathSegment s in asPath.Segments)
        {
            if (extra == 0)
            {
                break;
            }
            if (s.Type == SegmentType.AsSequence)
            {
                int take = Math.Min(extra, s.Asns.Length);
                segments.Add(new AsPathSegment(s.Type, s.Asns[..take]));
                extra -= take;
            }
            else if (s.Type == SegmentType.AsSet)
            {
                segments.Add(s);
                extra--;
            }
            else
            {
                segments.Add(s);
            }
        }
        foreach (AsPathSegment s in as4Path.Segments)
        {
            // Join a split sequence back into one segment (at most 255 ASes each).
            if (segments.Count > 0 && s.Type == SegmentType.AsSequence && segments[^1].Type == SegmentType.AsSequence
                && segments[^1].Asns.Length + s.Asns.Length <= 255)
            {
                segments[^1] = new AsPathSegment(SegmentType.AsSequence, [.. segments[^1].Asns, .. s.Asns]);
            }
            else
            {
                segments.Add(s);
            }
        }
        return new AsPath([.. segments]);
    }

    private static void DecodeNextHop(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 4, "NEXT_HOP");
        uint nh = BinaryPrimitives.ReadUInt32BigEndian(v);
        // RFC 4271 §6.3: 0.0.0.0, multicast and broadcast are never valid next hops (a syntactic check here;
        // "is it one of my addresses" is a session rule).
        if (nh == 0 || (nh >> 28) == 0xE || nh == uint.MaxValue)
        {
            throw Malformed(Subcode.Update.InvalidNextHop, $"NEXT_HOP {Prefix.V4(nh, 32).Address} is not a unicast address");
        }
        b.NextHop = Prefix.V4(nh, 32);
    }

    private static void DecodeMed(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 4, "MULTI_EXIT_DISC");
        b.Med = BinaryPrimitives.ReadUInt32BigEndian(v);
    }

    private static void DecodeLocalPref(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 4, "LOCAL_PREF");
        b.LocalPref = BinaryPrimitives.ReadUInt32BigEndian(v);
    }

    private static void DecodeAtomicAggregate(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 0, "ATOMIC_AGGREGATE");
        b.AtomicAggregate = true;
    }

    private static void DecodeAggregator(ReadOnlySpan<byte> v, ref Builder b)
    {
        int w = b.Options.FourOctetAs ? 4 : 2;
        ExpectLength(v, w + 4, "AGGREGATOR");
        uint asn = w == 4 ? BinaryPrimitives.ReadUInt32BigEndian(v) : BinaryPrimitives.ReadUInt16BigEndian(v);
        b.Aggregator = (asn, BinaryPrimitives.ReadUInt32BigEndian(v[w..]));
    }

    private static void DecodeAs4Aggregator(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 8, "AS4_AGGREGATOR");
        b.As4Aggregator = (BinaryPrimitives.ReadUInt32BigEndian(v), BinaryPrimitives.ReadUInt32BigEndian(v[4..]));
    }

    private static uint[] ReadUInts(ReadOnlySpan<byte> v, string name)
    {
        if (v.Length % 4 != 0)
        {
            throw Malformed(Subcode.Update.AttributeLengthError, $"{name} of {v.Length} octets (not a multiple of 4)");
        }
        uint[] r = new uint[v.Length / 4];
        for (int i = 0; i < r.Length; i++)
        {
            r[i] = BinaryPrimitives.ReadUInt32BigEndian(v[(i * 4)..]);
        }
        return r;
    }

    private static void DecodeCommunities(ReadOnlySpan<byte> v, ref Builder b)
    {
        // RFC 7606 §7.8: a length of zero or not a multiple of 4 is malformed.
        if (v.IsEmpty)
        {
            throw Malformed(Subcode.Update.OptionalAttributeError, "COMMUNITIES of 0 octets");
        }
        b.Communities = ReadUInts(v, "COMMUNITIES");
    }

    private static void DecodeLargeCommunities(ReadOnlySpan<byte> v, ref Builder b)
    {
        if (v.IsEmpty || v.Length % 12 != 0)
        {
            throw Malformed(Subcode.Update.OptionalAttributeError, $"LARGE_COMMUNITY of {v.Length} octets (not a non-zero multiple of 12)");
        }
        var r = new LargeCommunity[v.Length / 12];
        for (int i = 0; i < r.Length; i++)
        {
            ReadOnlySpan<byte> c = v[(i * 12)..];
            r[i] = new LargeCommunity(BinaryPrimitives.ReadUInt32BigEndian(c), BinaryPrimitives.ReadUInt32BigEndian(c[4..]), BinaryPrimitives.ReadUInt32BigEndian(c[8..]));
        }
        b.Large = r;
    }

    private static void DecodeOriginatorId(ReadOnlySpan<byte> v, ref Builder b)
    {
        ExpectLength(v, 4, "ORIGINATOR_ID");
        b.OriginatorId = BinaryPrimitives.ReadUInt32BigEndian(v);
    }

    private static void DecodeClusterList(ReadOnlySpan<byte> v, ref Builder b)
    {
        if (v.IsEmpty)
        {
            throw Malformed(Subcode.Update.AttributeLengthError, "CLUSTER_LIST of 0 octets");
        }
        b.ClusterList = ReadUInts(v, "CLUSTER_LIST");
    }

    private static void DecodeMpReach(ReadOnlySpan<byte> v, ref Builder b)
    {
        UpdateMessage u = b.Update;
        if (v.Length < 5)
        {
            throw Malformed(Subcode.Update.OptionalAttributeError, $"MP_REACH_NLRI of {v.Length} octets");
        }
        ushort afi = BinaryPrimitives.ReadUInt16BigEndian(v);
        byte safi = v[2];
        int nhLen = v[3];
        if (v.Length < 4 + nhLen + 1)
        {
            throw Malformed(Subcode.Update.OptionalAttributeError, $"MP_REACH_NLRI next hop of {nhLen} octets overruns the attribute");
        }
        ReadOnlySpan<byte> nh = v.Slice(4, nhLen);
        ReadOnlySpan<byte> nlri = v[(4 + nhLen + 1)..];
        if (afi is not 1 and not 2 || safi != 1)
        {
            // A family we did not negotiate: RFC 4760 §7 lets us ignore it.
            u.Discarded.Add($"MP_REACH_NLRI for AFI {afi} SAFI {safi}: not negotiated, ignored");
            return;
        }
        var family = (Afi)afi;
        MessageDecoder.ReadPrefixes(nlri, family, u.MpReach, ErrorCode.UpdateMessage, Subcode.Update.OptionalAttributeError, "MP_REACH_NLRI");
        u.MpReachAfi = family;
        bool okLength = family == Afi.IPv4 ? nhLen == 4 : nhLen is 16 or 32;
        if (!okLength)
        {
            // The NLRI could be located, so RFC 7606 §7.11 lets the prefixes be withdrawn instead of the session reset.
            MessageDecoder.MarkWithdraw(u, new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.OptionalAttributeError,
                $"MP_REACH_NLRI next hop length {nhLen} for {family}", null, ErrorAction.TreatAsWithdraw));
            return;
        }
        if (family == Afi.IPv4)
        {
            u.MpNextHop = Prefix.V4(BinaryPrimitives.ReadUInt32BigEndian(nh), 32);
        }
        else
        {
            u.MpNextHop = Prefix.V6(BinaryPrimitives.ReadUInt128BigEndian(nh), 128);
            if (nhLen == 32)
            {
                u.MpLinkLocalNextHop = Prefix.V6(BinaryPrimitives.ReadUInt128BigEndian(nh[16..]), 128);
            }
        }
    }

    private static void DecodeMpUnreach(ReadOnlySpan<byte> v, ref Builder b)
    {
        UpdateMessage u = b.Update;
        if (v.Length < 3)
        {
            throw Malformed(Subcode.Update.OptionalAttributeError, $"MP_UNREACH_NLRI of {v.Length} octets");
        }
        ushort afi = BinaryPrimitives.ReadUInt16BigEndian(v);
        if (afi is not 1 and not 2 || v[2] != 1)
        {
            u.Discarded.Add($"MP_UNREACH_NLRI for AFI {afi} SAFI {v[2]}: not negotiated, ignored");
            return;
        }
        MessageDecoder.ReadPrefixes(v[3..], (Afi)afi, u.MpUnreach, ErrorCode.UpdateMessage, Subcode.Update.OptionalAttributeError, "MP_UNREACH_NLRI");
        u.HasMpUnreach = true;
        u.MpUnreachAfi = (Afi)afi;
    }
}
