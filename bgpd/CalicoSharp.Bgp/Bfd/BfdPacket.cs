using System.Buffers.Binary;

namespace CalicoSharp.Bgp.Bfd;

/// <summary>RFC 5880 §4.1: the session states as the State (Sta) field carries them.</summary>
public enum BfdState : byte
{
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

/// <summary>RFC 5880 §4.1: Diagnostic codes, why the sender last left Up.</summary>
public enum BfdDiagnostic : byte
{
    None = 0,
    ControlDetectionTimeExpired = 1,
    EchoFunctionFailed = 2,
    NeighborSignaledSessionDown = 3,
    ForwardingPlaneReset = 4,
    PathDown = 5,
    ConcatenatedPathDown = 6,
    AdministrativelyDown = 7,
    ReverseConcatenatedPathDown = 8,
}

/// <summary>Why a received datagram was discarded: one value per RFC 5880 §6.8.6 / RFC 5881 §5 rule.</summary>
public enum BfdDiscard
{
    /// <summary>Not discarded.</summary>
    None,

    /// <summary>Shorter than the 24 bytes of the mandatory section: not even the header can be read.</summary>
    Truncated,

    /// <summary>§6.8.6: the version is not 1.</summary>
    BadVersion,

    /// <summary>§6.8.6: Length is less than 24 (26 with the A bit).</summary>
    LengthTooShort,

    /// <summary>§6.8.6: Length is more than the datagram carries.</summary>
    LengthBeyondPayload,

    /// <summary>§6.8.6: Detect Mult is zero.</summary>
    ZeroDetectMultiplier,

    /// <summary>§6.8.6: the Multipoint bit is set.</summary>
    Multipoint,

    /// <summary>§6.8.6: My Discriminator is zero.</summary>
    ZeroMyDiscriminator,

    /// <summary>§6.8.6: Your Discriminator names no session.</summary>
    UnknownYourDiscriminator,

    /// <summary>§6.8.6: Your Discriminator is zero but the State is neither Down nor AdminDown.</summary>
    ZeroYourDiscriminatorNotDown,

    /// <summary>§6.8.6 with RFC 5881 §3: Your Discriminator is zero and no session has this source address.</summary>
    NoSessionForSource,

    /// <summary>§6.8.6: the A bit is set and this system does not use authentication.</summary>
    AuthenticationNotConfigured,

    /// <summary>RFC 5881 §5: a single-hop packet arrived with a TTL (hop limit) other than 255.</summary>
    BadTtl,

    /// <summary>A packet for a session from an address that is not the session's peer.</summary>
    WrongSource,
}

/// <summary>
/// One BFD Control packet (RFC 5880 §4.1), the mandatory section. Intervals are in microseconds, as on the wire.
/// </summary>
public readonly record struct BfdControlPacket
{
    /// <summary>The mandatory section's size; the Length of a packet without authentication.</summary>
    public const int Size = 24;

    public byte Version { get; init; }

    public BfdDiagnostic Diagnostic { get; init; }

    public BfdState State { get; init; }

    public bool Poll { get; init; }

    public bool Final { get; init; }

    public bool ControlPlaneIndependent { get; init; }

    public bool Authentication { get; init; }

    public bool Demand { get; init; }

    public bool Multipoint { get; init; }

    public byte DetectMultiplier { get; init; }

    public uint MyDiscriminator { get; init; }

    public uint YourDiscriminator { get; init; }

    public uint DesiredMinTxInterval { get; init; }

    public uint RequiredMinRxInterval { get; init; }

    public uint RequiredMinEchoRxInterval { get; init; }

    /// <summary>Writes the packet (24 bytes, version 1, no authentication section) and returns its length.</summary>
    public int Write(Span<byte> destination)
    {
        if (destination.Length < Size)
        {
            throw new ArgumentException($"a BFD Control packet needs {Size} bytes", nameof(destination));
        }
        destination[0] = (byte)((1 << 5) | ((byte)Diagnostic & 0x1F));
        destination[1] = (byte)(((byte)State << 6) | (Poll ? 0x20 : 0) | (Final ? 0x10 : 0) | (ControlPlaneIndependent ? 0x08 : 0)
            | (Authentication ? 0x04 : 0) | (Demand ? 0x02 : 0) | (Multipoint ? 0x01 : 0));
        destination[2] = DetectMultiplier;
        destination[3] = Size;
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], MyDiscriminator);
        BinaryPrimitives.WriteUInt32BigEndian(destination[8..], YourDiscriminator);
        BinaryPrimitives.WriteUInt32BigEndian(destination[12..], DesiredMinTxInterval);
        BinaryPrimitives.WriteUInt32BigEndian(destination[16..], RequiredMinRxInterval);
        BinaryPrimitives.WriteUInt32BigEndian(destination[20..], RequiredMinEchoRxInterval);
        return Size;
    }

    /// <summary>
    /// Reads one datagram and applies the packet's own rules of RFC 5880 §6.8.6 (version, length, Detect Mult,
    /// Multipoint, My Discriminator, and the A bit, since this system configures no authentication). The rules that
    /// need the sessions (Your Discriminator, the source) are <see cref="BfdEndpoint"/>'s. Returns
    /// <see cref="BfdDiscard.None"/> and the packet, or why it must be discarded; never throws.
    /// </summary>
    public static BfdDiscard TryRead(ReadOnlySpan<byte> datagram, out BfdControlPacket packet)
    {
        packet = default;
        if (datagram.Length < Size)
        {
            return BfdDiscard.Truncated;
        }
        byte version = (byte)(datagram[0] >> 5);
        byte flags = datagram[1];
        bool auth = (flags & 0x04) != 0;
        int length = datagram[3];
        // RFC 5880 §6.8.6, in the RFC's order.
        if (version != 1)
        {
            return BfdDiscard.BadVersion;
        }
        if (length < (auth ? Size + 2 : Size))
        {
            return BfdDiscard.LengthTooShort;
        }
        if (length > datagram.Length)
        {
            return BfdDiscard.LengthBeyondPayload;
        }
        if (datagram[2] == 0)
        {
            return BfdDiscard.ZeroDetectMultiplier;
        }
        if ((flags & 0x01) != 0)
        {
            return BfdDiscard.Multipoint;
        }
        uint my = BinaryPrimitives.ReadUInt32BigEndian(datagram[4..]);
        if (my == 0)
        {
            return BfdDiscard.ZeroMyDiscriminator;
        }
        packet = new BfdControlPacket
        {
            Version = version,
            Diagnostic = (BfdDiagnostic)(datagram[0] & 0x1F),
            State = (BfdState)(flags >> 6),
            Poll = (flags & 0x20) != 0,
            Final = (flags & 0x10) != 0,
            ControlPlaneIndependent = (flags & 0x08) != 0,
            Authentication = auth,
            Demand = (flags & 0x02) != 0,
            Multipoint = false,
            DetectMultiplier = datagram[2],
            MyDiscriminator = my,
            YourDiscriminator = BinaryPrimitives.ReadUInt32BigEndian(datagram[8..]),
            DesiredMinTxInterval = BinaryPrimitives.ReadUInt32BigEndian(datagram[12..]),
            RequiredMinRxInterval = BinaryPrimitives.ReadUInt32BigEndian(datagram[16..]),
            RequiredMinEchoRxInterval = BinaryPrimitives.ReadUInt32BigEndian(datagram[20..]),
        };
        return BfdDiscard.None;
    }
}
