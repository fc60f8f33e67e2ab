using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.Bgp;

/// <summary>Address family identifiers (RFC 4760 uses IANA's AFI numbers).</summary>
public enum Afi : ushort
{
    IPv4 = 1,
    IPv6 = 2,
}

/// <summary>Subsequent address family; only unicast is routed, others are refused at negotiation.</summary>
public enum Safi : byte
{
    Unicast = 1,
}

/// <summary>
/// An IPv4 or IPv6 prefix as a value: two 64-bit halves (IPv4 lives in the low 32 bits of <see cref="Lo"/>),
/// the length and the family. 24 bytes, no allocation, host bits always zero.
/// </summary>
public readonly struct Prefix : IEquatable<Prefix>, IComparable<Prefix>
{
    public ulong Hi { get; }
    public ulong Lo { get; }
    public byte Length { get; }
    public Afi Family { get; }

    private Prefix(ulong hi, ulong lo, byte length, Afi family)
    {
        Hi = hi;
        Lo = lo;
        Length = length;
        Family = family;
    }

    public int MaxLength => Family == Afi.IPv4 ? 32 : 128;

    public static Prefix V4(uint address, int length)
    {
        if ((uint)length > 32)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "an IPv4 prefix length is 0-32");
        }
        uint mask = length == 0 ? 0u : uint.MaxValue << (32 - length);
        return new Prefix(0, address & mask, (byte)length, Afi.IPv4);
    }

    public static Prefix V6(UInt128 address, int length)
    {
        if ((uint)length > 128)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, "an IPv6 prefix length is 0-128");
        }
        UInt128 mask = length == 0 ? UInt128.Zero : UInt128.MaxValue << (128 - length);
        UInt128 a = address & mask;
        return new Prefix((ulong)(a >> 64), (ulong)a, (byte)length, Afi.IPv6);
    }

    public uint V4Address => (uint)Lo;

    public UInt128 V6Address => new(Hi, Lo);

    /// <summary>Reads the RFC 4271 §4.3 NLRI form (length in bits, then the fewest octets).</summary>
    /// <returns>The bytes consumed, or -1 when the encoding is invalid (nothing consumed).</returns>
    public static int TryRead(ReadOnlySpan<byte> data, Afi family, out Prefix prefix)
    {
        prefix = default;
        if (data.IsEmpty)
        {
            return -1;
        }
        int bits = data[0];
        int max = family == Afi.IPv4 ? 32 : 128;
        if (bits > max)
        {
            return -1;
        }
        int octets = (bits + 7) >> 3;
        if (data.Length < 1 + octets)
        {
            return -1;
        }
        Span<byte> full = stackalloc byte[16];
        full.Clear();
        data.Slice(1, octets).CopyTo(full);
        prefix = family == Afi.IPv4
            ? V4(BinaryPrimitives.ReadUInt32BigEndian(full), bits)
            : V6(BinaryPrimitives.ReadUInt128BigEndian(full), bits);
        return 1 + octets;
    }

    public int EncodedLength => 1 + ((Length + 7) >> 3);

    /// <summary>Writes the NLRI form; returns bytes written.</summary>
    public int Write(Span<byte> destination)
    {
        int octets = (Length + 7) >> 3;
        destination[0] = Length;
        Span<byte> full = stackalloc byte[16];
        if (Family == Afi.IPv4)
        {
            BinaryPrimitives.WriteUInt32BigEndian(full, V4Address);
        }
        else
        {
            BinaryPrimitives.WriteUInt128BigEndian(full, V6Address);
        }
        full[..octets].CopyTo(destination[1..]);
        return 1 + octets;
    }

    public bool Contains(Prefix other)
    {
        if (other.Family != Family || other.Length < Length)
        {
            return false;
        }
        return (Family == Afi.IPv4 ? V4(other.V4Address, Length) : V6(other.V6Address, Length)).Equals(this);
    }

    public IPAddress Address
    {
        get
        {
            if (Family == Afi.IPv4)
            {
                Span<byte> b = stackalloc byte[4];
                BinaryPrimitives.WriteUInt32BigEndian(b, V4Address);
                return new IPAddress(b);
            }
            Span<byte> b6 = stackalloc byte[16];
            BinaryPrimitives.WriteUInt128BigEndian(b6, V6Address);
            return new IPAddress(b6);
        }
    }

    public static Prefix Parse(string text)
    {
        if (!TryParse(text, out Prefix p))
        {
            throw new FormatException($"'{text}' is not a prefix (address/length)");
        }
        return p;
    }

    public static bool TryParse(string? text, out Prefix prefix)
    {
        prefix = default;
        if (string.IsNullOrEmpty(text))
        {
            return false;
        }
        int slash = text.IndexOf('/', StringComparison.Ordinal);
        string addrText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addrText, out IPAddress? address))
        {
            return false;
        }
        int max = address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128;
        int length = max;
        if (slash >= 0 && (!int.TryParse(text.AsSpan(slash + 1), System.Globalization.NumberStyles.None, null, out length) || length > max))
        {
            return false;
        }
        prefix = FromAddress(address, length);
        return true;
    }

    public static Prefix FromAddress(IPAddress address, int length)
    {
        ArgumentNullException.ThrowIfNull(address);
        Span<byte> b = stackalloc byte[16];
        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            address.TryWriteBytes(b, out _);
            return V4(BinaryPrimitives.ReadUInt32BigEndian(b), length);
        }
        address.TryWriteBytes(b, out _);
        return V6(BinaryPrimitives.ReadUInt128BigEndian(b), length);
    }

    public bool Equals(Prefix other) => Lo == other.Lo && Hi == other.Hi && Length == other.Length && Family == other.Family;

    public override bool Equals(object? obj) => obj is Prefix p && Equals(p);

    public override int GetHashCode()
    {
        ulong h = (Lo * 0x9E3779B97F4A7C15UL) ^ (Hi * 0xC2B2AE3D27D4EB4FUL) ^ ((ulong)Length << 8 | (byte)Family);
        return (int)(h ^ (h >> 29) ^ (h >> 47));
    }

    public int CompareTo(Prefix other)
    {
        int c = Family.CompareTo(other.Family);
        if (c != 0)
        {
            return c;
        }
        c = Hi.CompareTo(other.Hi);
        if (c != 0)
        {
            return c;
        }
        c = Lo.CompareTo(other.Lo);
        return c != 0 ? c : Length.CompareTo(other.Length);
    }

    public static bool operator ==(Prefix left, Prefix right) => left.Equals(right);

    public static bool operator !=(Prefix left, Prefix right) => !left.Equals(right);

    public static bool operator <(Prefix left, Prefix right) => left.CompareTo(right) < 0;

    public static bool operator >(Prefix left, Prefix right) => left.CompareTo(right) > 0;

    public static bool operator <=(Prefix left, Prefix right) => left.CompareTo(right) <= 0;

    public static bool operator >=(Prefix left, Prefix right) => left.CompareTo(right) >= 0;

    public override string ToString() => $"{Address}/{Length}";
}
