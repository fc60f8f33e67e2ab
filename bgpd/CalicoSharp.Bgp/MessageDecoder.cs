using System.Buffers.Binary;

namespace CalicoSharp.Bgp;

/// <summary>What the session negotiated that changes how messages are read and written.</summary>
public readonly record struct CodecOptions(bool FourOctetAs, bool ExtendedMessage)
{
    public static readonly CodecOptions Default = new(true, false);

    /// <summary>RFC 4271 §4.1: 4096; RFC 8654: 65535 once both sides announced extended messages.</summary>
    public int MaxMessageLength => ExtendedMessage ? 65535 : 4096;
}

/// <summary>
/// Frames and decodes BGP messages. Framing checks the header before the body is awaited; decoders read
/// spans and never throw anything but <see cref="BgpProtocolException"/>.
/// </summary>
public static class MessageDecoder
{
    public const int HeaderLength = 19;

    /// <summary>
    /// Checks a message header (RFC 4271 §4.1, §6.1). Returns false when fewer than 19 octets are there yet.
    /// </summary>
    public static bool TryReadHeader(ReadOnlySpan<byte> header, int maxLength, out MessageType type, out int length)
    {
        type = 0;
        length = 0;
        if (header.Length < HeaderLength)
        {
            return false;
        }
        // RFC 4271 §6.1: the marker must be all ones.
        if (header[..16].ContainsAnyExcept((byte)0xFF))
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.ConnectionNotSynchronized, "the message marker is not all ones");
        }
        length = BinaryPrimitives.ReadUInt16BigEndian(header[16..]);
        byte t = header[18];
        if (t is < 1 or > 5)
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageType, $"unknown message type {t}", [t]);
        }
        type = (MessageType)t;
        int min = type switch
        {
            MessageType.Open => 29,
            MessageType.Update => 23,
            MessageType.Notification => 21,
            MessageType.RouteRefresh => 23,
            _ => HeaderLength,
        };
        bool exact = type is MessageType.Keepalive;
        // OPEN and KEEPALIVE are never longer than 4096 (RFC 8654 §3); a ROUTE-REFRESH's length is checked by its decoder (RFC 7313 §5).
        int max = type is MessageType.Open or MessageType.Keepalive ? 4096 : maxLength;
        if (length < min || length > max || (exact && length != min))
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageLength,
                $"{type} message with length {length} (allowed {min}{(exact ? "" : $"-{max}")})", [header[16], header[17]]);
        }
        return true;
    }

    /// <summary>Decodes a whole message body (after the 19-octet header).</summary>
    public static BgpMessage Decode(MessageType type, ReadOnlySpan<byte> body, CodecOptions options, UpdateMessage? reuse = null) => type switch
    {
        MessageType.Open => DecodeOpen(body),
        MessageType.Update => DecodeUpdate(body, options, reuse),
        MessageType.Notification => new NotificationMessage((ErrorCode)body[0], body[1], body[2..].ToArray()),
        MessageType.Keepalive => KeepaliveMessage.Instance,
        MessageType.RouteRefresh => DecodeRouteRefresh(body),
        _ => throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageType, $"unknown message type {(byte)type}", [(byte)type]),
    };

    /// <summary>Decodes one complete message including its header (tests, tools).</summary>
    public static BgpMessage DecodeMessage(ReadOnlySpan<byte> message, CodecOptions options)
    {
        if (!TryReadHeader(message, options.MaxMessageLength, out MessageType type, out int length))
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageLength, $"a message needs at least {HeaderLength} octets, got {message.Length}");
        }
        if (length != message.Length)
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageLength, $"header says {length} octets, got {message.Length}",
                [message[16], message[17]]);
        }
        return Decode(type, message[HeaderLength..], options);
    }

    private static RouteRefreshMessage DecodeRouteRefresh(ReadOnlySpan<byte> body)
    {
        if (body.Length != 4)
        {
            // RFC 7313 §5: a ROUTE-REFRESH whose length is not 23.
            throw new BgpProtocolException(ErrorCode.RouteRefreshMessage, Subcode.RouteRefresh.InvalidRouteRefreshLength,
                $"ROUTE-REFRESH with length {body.Length + HeaderLength}", body.ToArray());
        }
        return new RouteRefreshMessage((Afi)BinaryPrimitives.ReadUInt16BigEndian(body), (Safi)body[3], body[2]);
    }

    public static OpenMessage DecodeOpen(ReadOnlySpan<byte> body)
    {
        byte version = body[0];
        if (version != 4)
        {
            // RFC 4271 §6.2: data is the largest version we support, two octets.
            throw new BgpProtocolException(ErrorCode.OpenMessage, Subcode.Open.UnsupportedVersion, $"BGP version {version} (only 4 is supported)", [0, 4]);
        }
        ushort myAs = BinaryPrimitives.ReadUInt16BigEndian(body[1..]);
        ushort hold = BinaryPrimitives.ReadUInt16BigEndian(body[3..]);
        uint id = BinaryPrimitives.ReadUInt32BigEndian(body[5..]);
        int optLen = body[9];
        ReadOnlySpan<byte> opt = body[10..];
        // RFC 9072: a non-extended length of 255 followed by type 255 announces a 2-octet length.
        if (optLen == 255 && opt.Length >= 3 && opt[0] == 255)
        {
            optLen = BinaryPrimitives.ReadUInt16BigEndian(opt[1..]);
            opt = opt[3..];
            return DecodeOpenParameters(version, myAs, hold, id, opt, optLen, extended: true);
        }
        return DecodeOpenParameters(version, myAs, hold, id, opt, optLen, extended: false);
    }

    private static OpenMessage DecodeOpenParameters(byte version, ushort myAs, ushort hold, uint id, ReadOnlySpan<byte> opt, int optLen, bool extended)
    {
        if (optLen != opt.Length)
        {
            throw new BgpProtocolException(ErrorCode.MessageHeader, Subcode.Header.BadMessageLength,
                $"OPEN optional parameters length {optLen} but {opt.Length} octets follow");
        }
        var mp = new List<(Afi, Safi)>();
        var otherFamilies = new List<(ushort, byte)>();
        var unknown = new List<UnknownCapability>();
        bool rr = false, as4 = false, ext = false;
        uint as4Value = 0;
        GracefulRestartCapability? gr = null;
        int headerLen = extended ? 3 : 2;
        while (!opt.IsEmpty)
        {
            if (opt.Length < headerLen)
            {
                throw new BgpProtocolException(ErrorCode.OpenMessage, 0, "truncated optional parameter in OPEN");
            }
            byte ptype = opt[0];
            int plen = extended ? BinaryPrimitives.ReadUInt16BigEndian(opt[1..]) : opt[1];
            if (opt.Length < headerLen + plen)
            {
                throw new BgpProtocolException(ErrorCode.OpenMessage, 0, $"optional parameter of {plen} octets overruns the OPEN");
            }
            ReadOnlySpan<byte> value = opt.Slice(headerLen, plen);
            opt = opt[(headerLen + plen)..];
            if (ptype != 2)
            {
                // RFC 5492 §3: only capabilities (type 2) are defined; anything else is unsupported.
                throw new BgpProtocolException(ErrorCode.OpenMessage, Subcode.Open.UnsupportedOptionalParameter, $"unsupported optional parameter type {ptype}");
            }
            while (!value.IsEmpty)
            {
                if (value.Length < 2 || value.Length < 2 + value[1])
                {
                    throw new BgpProtocolException(ErrorCode.OpenMessage, 0, "truncated capability in OPEN");
                }
                byte code = value[0];
                ReadOnlySpan<byte> cap = value.Slice(2, value[1]);
                value = value[(2 + value[1])..];
                switch ((CapabilityCode)code)
                {
                    case CapabilityCode.Multiprotocol when cap.Length == 4:
                        ushort afi = BinaryPrimitives.ReadUInt16BigEndian(cap);
                        if (afi is 1 or 2 && cap[3] == 1)
                        {
                            mp.Add(((Afi)afi, Safi.Unicast));
                        }
                        else
                        {
                            otherFamilies.Add((afi, cap[3]));
                        }
                        break;
                    case CapabilityCode.RouteRefresh when cap.Length == 0:
                        rr = true;
                        break;
                    case CapabilityCode.ExtendedMessage when cap.Length == 0:
                        ext = true;
                        break;
                    case CapabilityCode.FourOctetAs when cap.Length == 4:
                        as4 = true;
                        as4Value = BinaryPrimitives.ReadUInt32BigEndian(cap);
                        break;
                    case CapabilityCode.GracefulRestart when cap.Length >= 2 && (cap.Length - 2) % 4 == 0:
                        ushort flagsTime = BinaryPrimitives.ReadUInt16BigEndian(cap);
                        var fams = new List<GracefulRestartFamily>();
                        for (int i = 2; i < cap.Length; i += 4)
                        {
                            ushort fa = BinaryPrimitives.ReadUInt16BigEndian(cap[i..]);
                            if (fa is 1 or 2 && cap[i + 2] == 1)
                            {
                                fams.Add(new GracefulRestartFamily((Afi)fa, Safi.Unicast, (cap[i + 3] & 0x80) != 0));
                            }
                        }
                        gr = new GracefulRestartCapability((flagsTime & 0x8000) != 0, (flagsTime & 0x4000) != 0, (ushort)(flagsTime & 0x0FFF), fams);
                        break;
                    default:
                        // RFC 5492 §3: a capability we do not understand is ignored (and so is a malformed known one,
                        // rather than refusing a peer for it).
                        unknown.Add(new UnknownCapability(code, cap.ToArray()));
                        break;
                }
            }
        }
        return new OpenMessage
        {
            Version = version,
            MyAsField = myAs,
            As = as4 ? as4Value : myAs,
            HoldTime = hold,
            BgpIdentifier = id,
            Multiprotocol = mp,
            OtherFamilies = otherFamilies,
            RouteRefresh = rr,
            FourOctetAs = as4,
            ExtendedMessage = ext,
            GracefulRestart = gr,
            UnknownCapabilities = unknown,
        };
    }

    /// <summary>Decodes an UPDATE body (RFC 4271 §4.3) with RFC 7606 error handling.</summary>
    public static UpdateMessage DecodeUpdate(ReadOnlySpan<byte> body, CodecOptions options, UpdateMessage? reuse = null)
    {
        UpdateMessage u = reuse ?? new UpdateMessage();
        u.Clear();
        int withdrawnLen = BinaryPrimitives.ReadUInt16BigEndian(body);
        if (2 + withdrawnLen + 2 > body.Length)
        {
            throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.MalformedAttributeList,
                $"withdrawn routes length {withdrawnLen} overruns the UPDATE of {body.Length + HeaderLength} octets");
        }
        ReadOnlySpan<byte> withdrawn = body.Slice(2, withdrawnLen);
        int attrLen = BinaryPrimitives.ReadUInt16BigEndian(body[(2 + withdrawnLen)..]);
        int attrStart = 4 + withdrawnLen;
        if (attrStart + attrLen > body.Length)
        {
            throw new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.MalformedAttributeList,
                $"total path attribute length {attrLen} overruns the UPDATE of {body.Length + HeaderLength} octets");
        }
        ReadPrefixes(withdrawn, Afi.IPv4, u.Withdrawn, ErrorCode.UpdateMessage, Subcode.Update.InvalidNetworkField, "withdrawn routes");
        ReadPrefixes(body[(attrStart + attrLen)..], Afi.IPv4, u.Nlri, ErrorCode.UpdateMessage, Subcode.Update.InvalidNetworkField, "NLRI");
        if (attrLen > 0)
        {
            AttributeDecoder.Decode(body.Slice(attrStart, attrLen), options, u);
        }
        if (!u.TreatAsWithdraw)
        {
            // Also when no attribute (or none we keep) came with the prefixes: Attributes is then null.
            CheckMandatory(u);
        }
        if (u.TreatAsWithdraw)
        {
            // RFC 7606 §2: the announced prefixes are handled as withdrawn (consumers withdraw every prefix of
            // Withdrawn and MpUnreach, whatever its family).
            u.Withdrawn.AddRange(u.Nlri);
            u.Withdrawn.AddRange(u.MpReach);
            u.Nlri.Clear();
            u.MpReach.Clear();
            u.MpReachAfi = 0;
            u.Attributes = null;
        }
        else if (withdrawnLen == 0 && attrLen == 0 && u.Nlri.Count == 0)
        {
            u.EndOfRib = Afi.IPv4;
        }
        else if (u.HasMpUnreach && u.MpUnreach.Count == 0 && u.Withdrawn.Count == 0 && u.Nlri.Count == 0 && u.Attributes is null && u.MpReachAfi == 0)
        {
            u.EndOfRib = u.MpUnreachAfi;
        }
        return u;
    }

    /// <summary>
    /// RFC 7606 §3(d): "If any of the well-known mandatory attributes are not present in an UPDATE message, then
    /// 'treat-as-withdraw' MUST be used" — whatever else the UPDATE carries: NLRI or MP_REACH_NLRI with no
    /// attributes at all, or only with attributes we do not keep (an unknown optional non-transitive one, a
    /// discarded one), is treat-as-withdraw too. NEXT_HOP is needed only with NLRI in the classic field (RFC 4760
    /// §3 makes it effectively discretionary for MP_REACH_NLRI). RFC 4271 §6.3: the data is the missing type code.
    /// </summary>
    private static void CheckMandatory(UpdateMessage u)
    {
        if (u.Nlri.Count == 0 && u.MpReach.Count == 0)
        {
            return;
        }
        bool hasNextHop = u.Attributes is { HasNextHop: true };
        byte missing = !u.SeenOrigin ? AttributeCode.Origin
            : !u.SeenAsPath ? AttributeCode.AsPath
            : (u.Nlri.Count > 0 && !hasNextHop) ? AttributeCode.NextHop
            : (byte)0;
        if (missing != 0)
        {
            MarkWithdraw(u, new BgpProtocolException(ErrorCode.UpdateMessage, Subcode.Update.MissingWellKnownAttribute,
                $"missing well-known attribute {AttributeDecoder.Name(missing)}", [missing], ErrorAction.TreatAsWithdraw));
        }
    }

    internal static void MarkWithdraw(UpdateMessage u, BgpProtocolException error)
    {
        u.TreatAsWithdraw = true;
        u.Error ??= error;
    }

    internal static void ReadPrefixes(ReadOnlySpan<byte> data, Afi family, List<Prefix> into, ErrorCode code, byte subcode, string where)
    {
        while (!data.IsEmpty)
        {
            int n = Prefix.TryRead(data, family, out Prefix p);
            if (n < 0)
            {
                throw new BgpProtocolException(code, subcode,
                    data[0] > (family == Afi.IPv4 ? 32 : 128)
                        ? $"{where}: prefix length {data[0]} is too long for {family}"
                        : $"{where}: prefix of length {data[0]} overruns the field");
            }
            into.Add(p);
            data = data[n..];
        }
    }
}
