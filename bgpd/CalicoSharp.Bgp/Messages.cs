using System.Net;

namespace CalicoSharp.Bgp;

/// <summary>Message types, RFC 4271 §4.1 and RFC 2918.</summary>
public enum MessageType : byte
{
    Open = 1,
    Update = 2,
    Notification = 3,
    Keepalive = 4,
    RouteRefresh = 5,
}

/// <summary>A decoded message. UPDATEs are <see cref="UpdateMessage"/>; the others are small records.</summary>
public abstract class BgpMessage
{
    public abstract MessageType Type { get; }
}

public sealed class KeepaliveMessage : BgpMessage
{
    public static readonly KeepaliveMessage Instance = new();

    private KeepaliveMessage()
    {
    }

    public override MessageType Type => MessageType.Keepalive;
}

/// <summary>NOTIFICATION (RFC 4271 §4.5); a Cease with subcode 2 or 4 may carry an RFC 8203 shutdown message.</summary>
public sealed class NotificationMessage : BgpMessage
{
    public NotificationMessage(ErrorCode code, byte subcode, ReadOnlyMemory<byte> data)
    {
        Code = code;
        Subcode = subcode;
        Data = data;
    }

    public override MessageType Type => MessageType.Notification;

    public ErrorCode Code { get; }

    public byte Subcode { get; }

    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>Cease/administrative shutdown or reset with a message (RFC 8203: length octet, UTF-8, at most 255 octets).</summary>
    public static NotificationMessage Shutdown(string? message, byte subcode = Bgp.Subcode.Cease.AdministrativeShutdown)
    {
        if (string.IsNullOrEmpty(message))
        {
            return new NotificationMessage(ErrorCode.Cease, subcode, ReadOnlyMemory<byte>.Empty);
        }
        byte[] text = System.Text.Encoding.UTF8.GetBytes(message);
        int n = Math.Min(text.Length, 255);
        // Do not cut a UTF-8 sequence in half.
        while (n > 0 && n < text.Length && (text[n] & 0xC0) == 0x80)
        {
            n--;
        }
        byte[] data = new byte[1 + n];
        data[0] = (byte)n;
        text.AsSpan(0, n).CopyTo(data.AsSpan(1));
        return new NotificationMessage(ErrorCode.Cease, subcode, data);
    }

    /// <summary>RFC 8538 §3.1: a Cease / Hard Reset standing for <paramref name="reason"/>, whose code, subcode and data
    /// it carries. With graceful restart's N bit negotiated, any other NOTIFICATION leaves the routes in place, stale.</summary>
    public static NotificationMessage HardReset(NotificationMessage reason)
    {
        ArgumentNullException.ThrowIfNull(reason);
        byte[] data = new byte[2 + reason.Data.Length];
        data[0] = (byte)reason.Code;
        data[1] = reason.Subcode;
        reason.Data.Span.CopyTo(data.AsSpan(2));
        return new NotificationMessage(ErrorCode.Cease, Bgp.Subcode.Cease.HardReset, data);
    }

    /// <summary>Cease / Hard Reset (RFC 8538).</summary>
    public bool IsHardReset => Code == ErrorCode.Cease && Subcode == Bgp.Subcode.Cease.HardReset;

    /// <summary>The NOTIFICATION a Hard Reset stands for; null for any other message, or a Hard Reset too short to carry one.</summary>
    public NotificationMessage? Encapsulated => IsHardReset && Data.Length >= 2 ? new((ErrorCode)Data.Span[0], Data.Span[1], Data[2..]) : null;

    /// <summary>The RFC 8203 shutdown communication, when this notification carries a valid one.</summary>
    public string? ShutdownText
    {
        get
        {
            if (Code != ErrorCode.Cease || (Subcode != Bgp.Subcode.Cease.AdministrativeShutdown && Subcode != Bgp.Subcode.Cease.AdministrativeReset) || Data.Length == 0)
            {
                return null;
            }
            ReadOnlySpan<byte> d = Data.Span;
            if (d[0] + 1 > d.Length)
            {
                return null;
            }
            try
            {
                return new System.Text.UTF8Encoding(false, true).GetString(d.Slice(1, d[0]));
            }
            catch (System.Text.DecoderFallbackException)
            {
                return null;
            }
        }
    }

    /// <summary>The notification as the log and <c>node status</c> show it: the shutdown communication escaped.</summary>
    public override string ToString()
    {
        if (Encapsulated is { } inner)
        {
            // One level only: a Hard Reset inside a Hard Reset is named, not unwrapped again.
            return $"{Describe(Code, Subcode)}: {(inner.IsHardReset ? Describe(inner.Code, inner.Subcode) : inner.ToString())}";
        }
        string text = ShutdownText is { } s ? $" \"{EscapeText(s)}\"" : Data.Length > 0 ? $" data {Convert.ToHexString(Data.Span)}" : "";
        return $"{Describe(Code, Subcode)}{text}";
    }

    /// <summary>
    /// Makes text from a peer safe to log and show on one line. RFC 9003 §2 lets the Shutdown Communication be any
    /// UTF-8 the operator likes and says it is reported through means such as syslog; its security considerations
    /// (§6) warn that a crafted one could be made to appear as additional log messages. So line breaks, other control
    /// characters and everything not printable (format characters such as bidirectional overrides, separators,
    /// private use, unassigned) become escapes (\n, \r, \t, \uXXXX, \UXXXXXXXX), and so do the backslash and the
    /// double quote that delimit the text; printable characters of every script stay as they are.
    /// </summary>
    public static string EscapeText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var sb = new System.Text.StringBuilder(text.Length + 8);
        Span<char> utf16 = stackalloc char[2];
        foreach (System.Text.Rune r in text.EnumerateRunes())
        {
            switch (r.Value)
            {
                case '\\':
                    sb.Append(@"\\");
                    break;
                case '"':
                    sb.Append(@"\""");
                    break;
                case '\n':
                    sb.Append(@"\n");
                    break;
                case '\r':
                    sb.Append(@"\r");
                    break;
                case '\t':
                    sb.Append(@"\t");
                    break;
                default:
                    if (IsPrintable(r))
                    {
                        sb.Append(utf16[..r.EncodeToUtf16(utf16)]);
                    }
                    else if (r.IsBmp)
                    {
                        sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\u{r.Value:X4}");
                    }
                    else
                    {
                        sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\U{r.Value:X8}");
                    }
                    break;
            }
        }
        return sb.ToString();
    }

    private static bool IsPrintable(System.Text.Rune r) => System.Text.Rune.GetUnicodeCategory(r) is not (
        System.Globalization.UnicodeCategory.Control or System.Globalization.UnicodeCategory.Format
        or System.Globalization.UnicodeCategory.LineSeparator or System.Globalization.UnicodeCategory.ParagraphSeparator
        or System.Globalization.UnicodeCategory.Surrogate or System.Globalization.UnicodeCategory.PrivateUse
        or System.Globalization.UnicodeCategory.OtherNotAssigned);

    public static string Describe(ErrorCode code, byte subcode)
    {
        string sub = (code, subcode) switch
        {
            (ErrorCode.MessageHeader, 1) => "connection not synchronized",
            (ErrorCode.MessageHeader, 2) => "bad message length",
            (ErrorCode.MessageHeader, 3) => "bad message type",
            (ErrorCode.OpenMessage, 1) => "unsupported version number",
            (ErrorCode.OpenMessage, 2) => "bad peer AS",
            (ErrorCode.OpenMessage, 3) => "bad BGP identifier",
            (ErrorCode.OpenMessage, 4) => "unsupported optional parameter",
            (ErrorCode.OpenMessage, 6) => "unacceptable hold time",
            (ErrorCode.OpenMessage, 7) => "unsupported capability",
            (ErrorCode.UpdateMessage, 1) => "malformed attribute list",
            (ErrorCode.UpdateMessage, 2) => "unrecognized well-known attribute",
            (ErrorCode.UpdateMessage, 3) => "missing well-known attribute",
            (ErrorCode.UpdateMessage, 4) => "attribute flags error",
            (ErrorCode.UpdateMessage, 5) => "attribute length error",
            (ErrorCode.UpdateMessage, 6) => "invalid ORIGIN attribute",
            (ErrorCode.UpdateMessage, 8) => "invalid NEXT_HOP attribute",
            (ErrorCode.UpdateMessage, 9) => "optional attribute error",
            (ErrorCode.UpdateMessage, 10) => "invalid network field",
            (ErrorCode.UpdateMessage, 11) => "malformed AS_PATH",
            (ErrorCode.FiniteStateMachine, 1) => "unexpected message in OpenSent",
            (ErrorCode.FiniteStateMachine, 2) => "unexpected message in OpenConfirm",
            (ErrorCode.FiniteStateMachine, 3) => "unexpected message in Established",
            (ErrorCode.Cease, 1) => "maximum number of prefixes reached",
            (ErrorCode.Cease, 2) => "administrative shutdown",
            (ErrorCode.Cease, 3) => "peer de-configured",
            (ErrorCode.Cease, 4) => "administrative reset",
            (ErrorCode.Cease, 5) => "connection rejected",
            (ErrorCode.Cease, 6) => "other configuration change",
            (ErrorCode.Cease, 7) => "connection collision resolution",
            (ErrorCode.Cease, 8) => "out of resources",
            (ErrorCode.Cease, 9) => "hard reset",
            (ErrorCode.RouteRefreshMessage, 1) => "invalid message length",
            _ => $"subcode {subcode}",
        };
        string name = code switch
        {
            ErrorCode.MessageHeader => "message header error",
            ErrorCode.OpenMessage => "OPEN message error",
            ErrorCode.UpdateMessage => "UPDATE message error",
            ErrorCode.HoldTimerExpired => "hold timer expired",
            ErrorCode.FiniteStateMachine => "finite state machine error",
            ErrorCode.Cease => "cease",
            ErrorCode.RouteRefreshMessage => "ROUTE-REFRESH message error",
            _ => $"error code {(byte)code}",
        };
        return code == ErrorCode.HoldTimerExpired && subcode == 0 ? name : $"{name} ({(byte)code}/{subcode} {sub})";
    }
}

/// <summary>ROUTE-REFRESH (RFC 2918): ask the peer to send its Adj-RIB-Out for one family again.</summary>
public sealed class RouteRefreshMessage : BgpMessage
{
    public RouteRefreshMessage(Afi afi, Safi safi, byte subtype = 0)
    {
        Afi = afi;
        Safi = safi;
        Subtype = subtype;
    }

    public override MessageType Type => MessageType.RouteRefresh;

    public Afi Afi { get; }

    public Safi Safi { get; }

    /// <summary>RFC 7313 message subtype (0 = normal request).</summary>
    public byte Subtype { get; }
}

/// <summary>Capability codes (IANA registry).</summary>
public enum CapabilityCode : byte
{
    Multiprotocol = 1,
    RouteRefresh = 2,
    ExtendedMessage = 6,
    GracefulRestart = 64,
    FourOctetAs = 65,
}

/// <summary>One (AFI, SAFI) a peer can restart with, and whether it kept forwarding (RFC 4724 §3).</summary>
public readonly record struct GracefulRestartFamily(Afi Afi, Safi Safi, bool ForwardingPreserved);

/// <summary>An optional-parameter capability we do not act on, kept so it can be shown and ignored (RFC 5492 §3).</summary>
public readonly record struct UnknownCapability(byte Code, ReadOnlyMemory<byte> Value);

/// <summary>OPEN (RFC 4271 §4.2) with its capabilities (RFC 5492).</summary>
public sealed class OpenMessage : BgpMessage
{
    /// <summary>RFC 6793 §9: AS_TRANS stands in for a 4-octet AS in 2-octet fields.</summary>
    public const ushort AsTrans = 23456;

    public override MessageType Type => MessageType.Open;

    public byte Version { get; init; } = 4;

    /// <summary>The speaker's AS: the 4-octet capability's value when present, else the 2-octet field.</summary>
    public uint As { get; init; }

    /// <summary>The 2-octet "My Autonomous System" field as sent (AS_TRANS for a large AS).</summary>
    public ushort MyAsField { get; init; }

    public ushort HoldTime { get; init; }

    public uint BgpIdentifier { get; init; }

    public IReadOnlyList<(Afi Afi, Safi Safi)> Multiprotocol { get; init; } = [];

    /// <summary>Families with unknown SAFIs or AFIs the peer announced; ignored.</summary>
    public IReadOnlyList<(ushort Afi, byte Safi)> OtherFamilies { get; init; } = [];

    public bool RouteRefresh { get; init; }

    public bool FourOctetAs { get; init; }

    public bool ExtendedMessage { get; init; }

    /// <summary>Graceful restart capability, when present (RFC 4724 §3).</summary>
    public GracefulRestartCapability? GracefulRestart { get; init; }

    public IReadOnlyList<UnknownCapability> UnknownCapabilities { get; init; } = [];

    public IPAddress RouterId => new(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(BgpIdentifier));
}

public sealed record GracefulRestartCapability(bool RestartState, bool Notification, ushort RestartTime,
    IReadOnlyList<GracefulRestartFamily> Families);
