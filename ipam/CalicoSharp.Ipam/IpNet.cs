using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.Ipam;

/// <summary>An IPv4 or IPv6 network (address and prefix length), held as a 128-bit number so that
/// both families share one arithmetic. The address is always the network address.</summary>
public readonly record struct IpNet : IComparable<IpNet>
{
    private IpNet(bool isV6, UInt128 value, int prefixLength)
    {
        IsIPv6 = isV6;
        Value = value;
        PrefixLength = prefixLength;
    }

    public bool IsIPv6 { get; }

    /// <summary>The network address as a number (IPv4 in the low 32 bits).</summary>
    public UInt128 Value { get; }

    public int PrefixLength { get; }

    public int AddressBits => IsIPv6 ? 128 : 32;

    public IPAddress Address => ToAddress(IsIPv6, Value);

    /// <summary>Number of addresses, saturating at UInt128.MaxValue for ::/0.</summary>
    public UInt128 Size => AddressBits - PrefixLength >= 128 ? UInt128.MaxValue : UInt128.One << (AddressBits - PrefixLength);

    public IPAddress Last => ToAddress(IsIPv6, Value + (Size - 1));

    public static IpNet Create(IPAddress address, int prefixLength)
    {
        ArgumentNullException.ThrowIfNull(address);
        bool v6 = address.AddressFamily == AddressFamily.InterNetworkV6;
        int bits = v6 ? 128 : 32;
        if (prefixLength < 0 || prefixLength > bits)
        {
            throw new FormatException($"prefix length {prefixLength} is out of range 0-{bits}");
        }

        return new IpNet(v6, ToNumber(address) & Mask(bits, prefixLength), prefixLength);
    }

    public static IpNet FromNumber(bool isV6, UInt128 value, int prefixLength) =>
        new(isV6, value & Mask(isV6 ? 128 : 32, prefixLength), prefixLength);

    /// <summary>Parses "a.b.c.d/n" or "x::/n". With <paramref name="strict"/>, host bits must be zero.</summary>
    public static IpNet Parse(string text, bool strict = true)
    {
        if (!TryParse(text, strict, out var net, out var error))
        {
            throw new FormatException(error);
        }

        return net;
    }

    public static bool TryParse(string? text, bool strict, out IpNet net, out string error)
    {
        net = default;
        if (string.IsNullOrWhiteSpace(text))
        {
            error = "CIDR is empty";
            return false;
        }

        int slash = text.IndexOf('/', StringComparison.Ordinal);
        if (slash < 0)
        {
            error = $"'{text}' is not a CIDR: it has no '/prefix-length'";
            return false;
        }

        if (!IPAddress.TryParse(text.AsSpan(0, slash), out var addr) || addr.ToString().Contains('%', StringComparison.Ordinal))
        {
            error = $"'{text}' is not a CIDR: '{text[..slash]}' is not an IP address";
            return false;
        }

        if (addr.IsIPv4MappedToIPv6)
        {
            error = $"'{text}' is not a CIDR: IPv4-mapped IPv6 addresses are not accepted";
            return false;
        }

        int bits = addr.AddressFamily == AddressFamily.InterNetworkV6 ? 128 : 32;
        var lenText = text.AsSpan(slash + 1);
        if (lenText.IsEmpty || lenText.Length > 3 || !int.TryParse(lenText, NumberStyles.None, CultureInfo.InvariantCulture, out int len) || len > bits)
        {
            error = $"'{text}' is not a CIDR: prefix length must be 0-{bits}";
            return false;
        }

        var n = ToNumber(addr);
        var masked = n & Mask(bits, len);
        if (strict && masked != n)
        {
            var suggestion = new IpNet(bits == 128, masked, len);
            error = $"'{text}' is not a network address (host bits are set); did you mean {suggestion}?";
            return false;
        }

        net = new IpNet(bits == 128, masked, len);
        error = string.Empty;
        return true;
    }

    public bool Contains(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        if ((address.AddressFamily == AddressFamily.InterNetworkV6) != IsIPv6)
        {
            return false;
        }

        return (ToNumber(address) & Mask(AddressBits, PrefixLength)) == Value;
    }

    public bool Contains(IpNet other) =>
        other.IsIPv6 == IsIPv6 && other.PrefixLength >= PrefixLength && (other.Value & Mask(AddressBits, PrefixLength)) == Value;

    public bool Overlaps(IpNet other) => Contains(other) || other.Contains(this);

    /// <summary>The address at <paramref name="offset"/> from the network address.</summary>
    public IPAddress AddressAt(UInt128 offset) => ToAddress(IsIPv6, Value + offset);

    /// <summary>Offset of an address inside this network (the ordinal, for a block).</summary>
    public UInt128 OffsetOf(IPAddress address) => ToNumber(address) - Value;

    /// <summary>The sub-network of length <paramref name="prefixLength"/> that holds this network's index-th slice.</summary>
    public IpNet Subnet(int prefixLength, UInt128 index) =>
        new(IsIPv6, Value + (index << (AddressBits - prefixLength)), prefixLength);

    /// <summary>The sub-network of length <paramref name="prefixLength"/> that holds <paramref name="address"/>.</summary>
    public static IpNet Enclosing(IPAddress address, int prefixLength) => Create(address, prefixLength);

    /// <summary>"10.244.1.0-26": the form Calico uses in etcd keys.</summary>
    public string ToKeyString() => $"{Address}-{PrefixLength.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>Parses the key form "10.244.1.0-26" (IPv6 "fd00::-122").</summary>
    public static bool TryParseKey(string text, out IpNet net)
    {
        net = default;
        int dash = text.LastIndexOf('-');
        if (dash <= 0)
        {
            return false;
        }

        return TryParse(string.Concat(text.AsSpan(0, dash), "/", text.AsSpan(dash + 1)), strict: true, out net, out _);
    }

    public override string ToString() => $"{Address}/{PrefixLength.ToString(CultureInfo.InvariantCulture)}";

    public int CompareTo(IpNet other)
    {
        int c = IsIPv6.CompareTo(other.IsIPv6);
        if (c != 0)
        {
            return c;
        }

        c = Value.CompareTo(other.Value);
        return c != 0 ? c : PrefixLength.CompareTo(other.PrefixLength);
    }

    public static bool operator <(IpNet left, IpNet right) => left.CompareTo(right) < 0;

    public static bool operator >(IpNet left, IpNet right) => left.CompareTo(right) > 0;

    public static bool operator <=(IpNet left, IpNet right) => left.CompareTo(right) <= 0;

    public static bool operator >=(IpNet left, IpNet right) => left.CompareTo(right) >= 0;

    public static UInt128 ToNumber(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        Span<byte> b = stackalloc byte[16];
        address.TryWriteBytes(b, out int written);
        return written == 4
            ? BinaryPrimitives.ReadUInt32BigEndian(b)
            : BinaryPrimitives.ReadUInt128BigEndian(b);
    }

    public static IPAddress ToAddress(bool isV6, UInt128 value)
    {
        Span<byte> b = stackalloc byte[16];
        if (isV6)
        {
            BinaryPrimitives.WriteUInt128BigEndian(b, value);
            return new IPAddress(b);
        }

        BinaryPrimitives.WriteUInt32BigEndian(b, (uint)value);
        return new IPAddress(b[..4]);
    }

    private static UInt128 Mask(int bits, int prefixLength)
    {
        if (prefixLength == 0)
        {
            return UInt128.Zero;
        }

        UInt128 all = bits == 128 ? UInt128.MaxValue : uint.MaxValue;
        return all & ~((UInt128.One << (bits - prefixLength)) - 1) & all;
    }
}
