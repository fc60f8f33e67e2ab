using System.Buffers;

namespace CalicoSharp.Bgp;

/// <summary>Writes OPEN, KEEPALIVE, NOTIFICATION and ROUTE-REFRESH messages.</summary>
public static class MessageEncoder
{
    public static byte[] Keepalive()
    {
        byte[] m = new byte[MessageDecoder.HeaderLength];
        var w = new SpanWriter(m);
        int s = w.BeginMessage(MessageType.Keepalive);
        w.EndMessage(s);
        return m;
    }

    public static byte[] Notification(NotificationMessage n)
    {
        ArgumentNullException.ThrowIfNull(n);
        // RFC 4271 §4.5: the data must fit one message.
        int dataLen = Math.Min(n.Data.Length, 4096 - 21);
        byte[] m = new byte[21 + dataLen];
        var w = new SpanWriter(m);
        int s = w.BeginMessage(MessageType.Notification);
        w.Byte((byte)n.Code);
        w.Byte(n.Subcode);
        w.Bytes(n.Data.Span[..dataLen]);
        w.EndMessage(s);
        return m;
    }

    /// <summary>The data of a Cease "Maximum Number of Prefixes Reached" NOTIFICATION (RFC 4486 §4): AFI (2 octets),
    /// SAFI (1) and the upper bound (4).</summary>
    public static byte[] MaximumPrefixesData(Afi afi, Safi safi, uint limit)
    {
        byte[] data = new byte[7];
        var w = new SpanWriter(data);
        w.UInt16((ushort)afi);
        w.Byte((byte)safi);
        w.UInt32(limit);
        return data;
    }

    public static byte[] RouteRefresh(RouteRefreshMessage r)
    {
        ArgumentNullException.ThrowIfNull(r);
        byte[] m = new byte[23];
        var w = new SpanWriter(m);
        int s = w.BeginMessage(MessageType.RouteRefresh);
        w.UInt16((ushort)r.Afi);
        w.Byte(r.Subtype);
        w.Byte((byte)r.Safi);
        w.EndMessage(s);
        return m;
    }

    public static byte[] Open(OpenMessage o)
    {
        ArgumentNullException.ThrowIfNull(o);
        Span<byte> buf = stackalloc byte[4096];
        var w = new SpanWriter(buf);
        int s = w.BeginMessage(MessageType.Open);
        w.Byte(o.Version);
        // RFC 6793 §4.1: a 4-octet AS goes in the capability; the 2-octet field carries AS_TRANS.
        w.UInt16(o.As > ushort.MaxValue ? OpenMessage.AsTrans : (ushort)o.As);
        w.UInt16(o.HoldTime);
        w.UInt32(o.BgpIdentifier);
        int optLenAt = w.Position;
        w.Byte(0);
        int optStart = w.Position;
        // One capabilities parameter holding every capability (RFC 5492 §4 allows either form).
        w.Byte(2);
        int paramLenAt = w.Position;
        w.Byte(0);
        int paramStart = w.Position;
        foreach ((Afi afi, Safi safi) in o.Multiprotocol)
        {
            w.Byte((byte)CapabilityCode.Multiprotocol);
            w.Byte(4);
            w.UInt16((ushort)afi);
            w.Byte(0);
            w.Byte((byte)safi);
        }
        if (o.RouteRefresh)
        {
            w.Byte((byte)CapabilityCode.RouteRefresh);
            w.Byte(0);
        }
        if (o.ExtendedMessage)
        {
            w.Byte((byte)CapabilityCode.ExtendedMessage);
            w.Byte(0);
        }
        if (o.GracefulRestart is { } gr)
        {
            w.Byte((byte)CapabilityCode.GracefulRestart);
            w.Byte((byte)(2 + 4 * gr.Families.Count));
            w.UInt16((gr.RestartState ? 0x8000 : 0) | (gr.Notification ? 0x4000 : 0) | (gr.RestartTime & 0x0FFF));
            foreach (GracefulRestartFamily f in gr.Families)
            {
                w.UInt16((ushort)f.Afi);
                w.Byte((byte)f.Safi);
                w.Byte(f.ForwardingPreserved ? (byte)0x80 : (byte)0);
            }
        }
        if (o.FourOctetAs)
        {
            w.Byte((byte)CapabilityCode.FourOctetAs);
            w.Byte(4);
            w.UInt32(o.As);
        }
        foreach (UnknownCapability c in o.UnknownCapabilities)
        {
            w.Byte(c.Code);
            w.Byte((byte)c.Value.Length);
            w.Bytes(c.Value.Span);
        }
        int paramLen = w.Position - paramStart;
        if (paramLen > 255)
        {
            throw new ArgumentException("capabilities exceed one optional parameter", nameof(o));
        }
        buf[paramLenAt] = (byte)paramLen;
        if (paramLen == 0)
        {
            w.Position = optStart;
        }
        buf[optLenAt] = (byte)(w.Position - optStart);
        w.EndMessage(s);
        return w.Written.ToArray();
    }
}

/// <summary>
/// Packs routes into UPDATE messages for one peer: as many prefixes as fit one message share its
/// attributes; withdrawals of one family travel together. The encoded attributes of the last set are
/// cached, so packing a run of prefixes with one attribute set encodes the attributes once.
/// </summary>
public sealed class UpdateEncoder
{
    private readonly byte[] _attrs = new byte[65535];
    private int _attrsLength;
    private PathAttributes? _attrsFor;
    private Afi _attrsFamily;

    public UpdateEncoder(CodecOptions options)
    {
        Options = options;
    }

    public CodecOptions Options { get; }

    private int Max => Options.MaxMessageLength;

    /// <summary>Writes one UPDATE announcing as many of <paramref name="prefixes"/> (one family) as fit; returns how many.</summary>
    public int WriteAnnounce(IBufferWriter<byte> output, PathAttributes attributes, ReadOnlySpan<Prefix> prefixes)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(attributes);
        if (prefixes.IsEmpty)
        {
            return 0;
        }
        Afi family = prefixes[0].Family;
        if (!ReferenceEquals(attributes, _attrsFor) || family != _attrsFamily)
        {
            _attrsLength = EncodeAttributes(_attrs, attributes, family);
            _attrsFor = attributes;
            _attrsFamily = family;
        }
        Span<byte> span = output.GetSpan(Max)[..Max];
        var w = new SpanWriter(span);
        int s = w.BeginMessage(MessageType.Update);
        w.UInt16(0);
        int attrLenAt = w.Position;
        w.UInt16(0);
        int attrStart = w.Position;
        int count = 0;
        if (family == Afi.IPv4)
        {
            w.Bytes(_attrs.AsSpan(0, _attrsLength));
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[attrLenAt..], (ushort)(w.Position - attrStart));
            while (count < prefixes.Length && w.Position + prefixes[count].EncodedLength <= Max)
            {
                w.Prefix(prefixes[count++]);
            }
        }
        else
        {
            // Attributes in type order: those below MP_REACH_NLRI (14) come first, the rest after it.
            int split = SplitAt(_attrs.AsSpan(0, _attrsLength), AttributeCode.MpReachNlri);
            w.Bytes(_attrs.AsSpan(0, split));
            int mp = w.BeginAttribute(AttributeFlags.Optional, AttributeCode.MpReachNlri);
            w.UInt16((ushort)Afi.IPv6);
            w.Byte((byte)Safi.Unicast);
            bool linkLocal = attributes.LinkLocalNextHop.Family == Afi.IPv6;
            w.Byte(linkLocal ? (byte)32 : (byte)16);
            w.Address(attributes.NextHop.Family == Afi.IPv6 ? attributes.NextHop : Prefix.V6(0, 128));
            if (linkLocal)
            {
                w.Address(attributes.LinkLocalNextHop);
            }
            w.Byte(0);
            int rest = _attrsLength - split;
            while (count < prefixes.Length && w.Position + prefixes[count].EncodedLength + rest <= Max)
            {
                w.Prefix(prefixes[count++]);
            }
            w.EndAttribute(mp, keepExtended: true);
            w.Bytes(_attrs.AsSpan(split, rest));
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[attrLenAt..], (ushort)(w.Position - attrStart));
        }
        w.EndMessage(s);
        output.Advance(w.Position);
        return count;
    }

    /// <summary>Writes one UPDATE withdrawing as many of <paramref name="prefixes"/> (one family) as fit; returns how many.</summary>
    public int WriteWithdraw(IBufferWriter<byte> output, ReadOnlySpan<Prefix> prefixes)
    {
        ArgumentNullException.ThrowIfNull(output);
        if (prefixes.IsEmpty)
        {
            return 0;
        }
        Span<byte> span = output.GetSpan(Max)[..Max];
        var w = new SpanWriter(span);
        int s = w.BeginMessage(MessageType.Update);
        int count = 0;
        if (prefixes[0].Family == Afi.IPv4)
        {
            int lenAt = w.Position;
            w.UInt16(0);
            while (count < prefixes.Length && w.Position + prefixes[count].EncodedLength + 2 <= Max)
            {
                w.Prefix(prefixes[count++]);
            }
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[lenAt..], (ushort)(w.Position - lenAt - 2));
            w.UInt16(0);
        }
        else
        {
            w.UInt16(0);
            int attrLenAt = w.Position;
            w.UInt16(0);
            int mp = w.BeginAttribute(AttributeFlags.Optional, AttributeCode.MpUnreachNlri);
            w.UInt16((ushort)Afi.IPv6);
            w.Byte((byte)Safi.Unicast);
            while (count < prefixes.Length && w.Position + prefixes[count].EncodedLength <= Max)
            {
                w.Prefix(prefixes[count++]);
            }
            w.EndAttribute(mp, keepExtended: true);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt16BigEndian(span[attrLenAt..], (ushort)(w.Position - attrLenAt - 2));
        }
        w.EndMessage(s);
        output.Advance(w.Position);
        return count;
    }

    /// <summary>RFC 4724 §2: the End-of-RIB marker for a family.</summary>
    public static byte[] EndOfRib(Afi family)
    {
        byte[] m = new byte[family == Afi.IPv4 ? 23 : 29];
        var w = new SpanWriter(m);
        int s = w.BeginMessage(MessageType.Update);
        w.UInt16(0);
        if (family == Afi.IPv4)
        {
            w.UInt16(0);
        }
        else
        {
            w.UInt16(6);
            w.Byte(AttributeFlags.Optional);
            w.Byte(AttributeCode.MpUnreachNlri);
            w.Byte(3);
            w.UInt16((ushort)Afi.IPv6);
            w.Byte((byte)Safi.Unicast);
        }
        w.EndMessage(s);
        return m;
    }

    private static int SplitAt(ReadOnlySpan<byte> attrs, byte code)
    {
        int i = 0;
        while (i < attrs.Length)
        {
            if (attrs[i + 1] > code)
            {
                return i;
            }
            int len = (attrs[i] & AttributeFlags.ExtendedLength) != 0 ? 4 + System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(attrs[(i + 2)..]) : 3 + attrs[i + 2];
            i += len;
        }
        return i;
    }

    /// <summary>Encodes the attributes (without MP_REACH_NLRI) in type order; the classic NEXT_HOP only for IPv4.</summary>
    internal int EncodeAttributes(Span<byte> buffer, PathAttributes a, Afi family)
    {
        var w = new SpanWriter(buffer);
        bool as4 = Options.FourOctetAs;
        int t = w.BeginAttribute(AttributeFlags.Transitive, AttributeCode.Origin);
        w.Byte((byte)a.Origin);
        w.EndAttribute(t);

        bool needAs4Path = !as4 && a.AsPath.HasLargeAsn();
        WriteAsPath(ref w, AttributeFlags.Transitive, AttributeCode.AsPath, a.AsPath, as4 ? 4 : 2, includeConfed: true);
        if (family == Afi.IPv4 && a.NextHop.Family == Afi.IPv4)
        {
            t = w.BeginAttribute(AttributeFlags.Transitive, AttributeCode.NextHop);
            w.UInt32(a.NextHop.V4Address);
            w.EndAttribute(t);
        }
        if (a.Med is { } med)
        {
            t = w.BeginAttribute(AttributeFlags.Optional, AttributeCode.Med);
            w.UInt32(med);
            w.EndAttribute(t);
        }
        if (a.LocalPref is { } lp)
        {
            t = w.BeginAttribute(AttributeFlags.Transitive, AttributeCode.LocalPref);
            w.UInt32(lp);
            w.EndAttribute(t);
        }
        if (a.AtomicAggregate)
        {
            t = w.BeginAttribute(AttributeFlags.Transitive, AttributeCode.AtomicAggregate);
            w.EndAttribute(t);
        }
        bool needAs4Aggregator = false;
        if (a.Aggregator is { } agg)
        {
            t = w.BeginAttribute(AttributeFlags.Optional | AttributeFlags.Transitive, AttributeCode.Aggregator);
            if (as4)
            {
                w.UInt32(agg.As);
            }
            else
            {
                needAs4Aggregator = agg.As > ushort.MaxValue;
                w.UInt16(needAs4Aggregator ? OpenMessage.AsTrans : (ushort)agg.As);
            }
            w.UInt32(agg.Address);
            w.EndAttribute(t);
        }
        if (a.Communities.Length > 0)
        {
            t = w.BeginAttribute(AttributeFlags.Optional | AttributeFlags.Transitive, AttributeCode.Communities);
            foreach (uint c in a.Communities)
            {
                w.UInt32(c);
            }
            w.EndAttribute(t);
        }
        if (a.OriginatorId is { } oid)
        {
            t = w.BeginAttribute(AttributeFlags.Optional, AttributeCode.OriginatorId);
            w.UInt32(oid);
            w.EndAttribute(t);
        }
        if (a.ClusterList.Length > 0)
        {
            t = w.BeginAttribute(AttributeFlags.Optional, AttributeCode.ClusterList);
            foreach (uint c in a.ClusterList)
            {
                w.UInt32(c);
            }
            w.EndAttribute(t);
        }
        foreach (RawAttribute u in a.Unknown)
        {
            if (u.Code < AttributeCode.MpReachNlri)
            {
                WriteRaw(ref w, u);
            }
        }
        if (needAs4Path)
        {
            // RFC 6793 §4.2.2: the real path for an old speaker, without confederation segments.
            WriteAsPath(ref w, AttributeFlags.Optional | AttributeFlags.Transitive, AttributeCode.As4Path, a.AsPath, 4, includeConfed: false);
        }
        if (needAs4Aggregator)
        {
            t = w.BeginAttribute(AttributeFlags.Optional | AttributeFlags.Transitive, AttributeCode.As4Aggregator);
            w.UInt32(a.Aggregator!.Value.As);
            w.UInt32(a.Aggregator!.Value.Address);
            w.EndAttribute(t);
        }
        foreach (RawAttribute u in a.Unknown)
        {
            if (u.Code > AttributeCode.MpReachNlri && u.Code < AttributeCode.LargeCommunities)
            {
                WriteRaw(ref w, u);
            }
        }
        if (a.LargeCommunities.Length > 0)
        {
            t = w.BeginAttribute(AttributeFlags.Optional | AttributeFlags.Transitive, AttributeCode.LargeCommunities);
            foreach (LargeCommunity c in a.LargeCommunities)
            {
                w.UInt32(c.GlobalAdmin);
                w.UInt32(c.Local1);
                w.UInt32(c.Local2);
            }
            w.EndAttribute(t);
        }
        foreach (RawAttribute u in a.Unknown)
        {
            if (u.Code > AttributeCode.LargeCommunities)
            {
                WriteRaw(ref w, u);
            }
        }
        return w.Position;
    }

    private static void WriteRaw(ref SpanWriter w, RawAttribute u)
    {
        int t = w.BeginAttribute((byte)(u.Flags & ~AttributeFlags.ExtendedLength), u.Code);
        w.Bytes(u.Value);
        w.EndAttribute(t);
    }

    private static void WriteAsPath(ref SpanWriter w, byte flags, byte code, AsPath path, int width, bool includeConfed)
    {
        int t = w.BeginAttribute(flags, code);
        foreach (AsPathSegment seg in path.Segments)
        {
            if (!includeConfed && seg.Type is SegmentType.ConfedSequence or SegmentType.ConfedSet)
            {
                continue;
            }
            w.Byte((byte)seg.Type);
            w.Byte((byte)seg.Asns.Length);
            foreach (uint asn in seg.Asns)
            {
                if (width == 4)
                {
                    w.UInt32(asn);
                }
                else
                {
                    w.UInt16(asn > ushort.MaxValue ? OpenMessage.AsTrans : (ushort)asn);
                }
            }
        }
        w.EndAttribute(t);
    }
}
