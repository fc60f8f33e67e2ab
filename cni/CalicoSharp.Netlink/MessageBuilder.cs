using System.Buffers.Binary;
using System.Net;
using System.Text;

namespace CalicoSharp.Netlink;

/// <summary>Builds one netlink request: header, fixed struct, then attributes. Every byte written is
/// written explicitly (no reliance on a zeroed buffer); nested attributes back-patch their length when
/// their scope ends.</summary>
public sealed class MessageBuilder
{
    private byte[] buffer = new byte[256];
    private int length;

    public MessageBuilder(ushort type, ushort flags)
    {
        Type = type;
        Flags = flags;
        Skip(Nl.NlMsgHdrSize);
    }

    public ushort Type { get; }

    public ushort Flags { get; }

    public int Length => length;

    /// <summary>The finished message with its header filled in.</summary>
    public ReadOnlySpan<byte> Finish(uint seq, uint pid)
    {
        var h = buffer.AsSpan(0, Nl.NlMsgHdrSize);
        BinaryPrimitives.WriteUInt32LittleEndian(h, (uint)length);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], Type);
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], seq);
        BinaryPrimitives.WriteUInt32LittleEndian(h[12..], pid);
        return buffer.AsSpan(0, length);
    }

    public Span<byte> Skip(int n)
    {
        Ensure(n);
        var s = buffer.AsSpan(length, n);
        s.Clear();
        length += n;
        return s;
    }

    public MessageBuilder U8(byte v)
    {
        Skip(1)[0] = v;
        return this;
    }

    public MessageBuilder U16(ushort v)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(Skip(2), v);
        return this;
    }

    public MessageBuilder I32(int v)
    {
        BinaryPrimitives.WriteInt32LittleEndian(Skip(4), v);
        return this;
    }

    public MessageBuilder U32(uint v)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(Skip(4), v);
        return this;
    }

    /// <summary>struct ifinfomsg.</summary>
    public MessageBuilder IfInfo(byte family, int index, uint flags = 0, uint change = 0) =>
        U8(family).U8(0).U16(0).I32(index).U32(flags).U32(change);

    /// <summary>struct ifaddrmsg.</summary>
    public MessageBuilder IfAddr(byte family, byte prefixLen, byte flags, byte scope, int index) =>
        U8(family).U8(prefixLen).U8(flags).U8(scope).I32(index);

    /// <summary>struct rtmsg.</summary>
    public MessageBuilder RtMsg(byte family, byte dstLen, byte table, byte protocol, byte scope, byte type, uint flags = 0) =>
        U8(family).U8(dstLen).U8(0).U8(0).U8(table).U8(protocol).U8(scope).U8(type).U32(flags);

    /// <summary>struct ndmsg.</summary>
    public MessageBuilder NdMsg(byte family, int index, ushort state, byte flags = 0, byte type = 0) =>
        U8(family).U8(0).U16(0).I32(index).U16(state).U8(flags).U8(type);

    public MessageBuilder Attr(ushort type, ReadOnlySpan<byte> value)
    {
        int total = 4 + value.Length;
        var s = Skip(Align(total));
        BinaryPrimitives.WriteUInt16LittleEndian(s, (ushort)total);
        BinaryPrimitives.WriteUInt16LittleEndian(s[2..], type);
        value.CopyTo(s[4..]);
        return this;
    }

    public MessageBuilder AttrU32(ushort type, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        return Attr(type, b);
    }

    public MessageBuilder AttrString(ushort type, string value)
    {
        var bytes = Encoding.ASCII.GetBytes(value + "\0");
        return Attr(type, bytes);
    }

    public MessageBuilder AttrAddress(ushort type, IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        return Attr(type, address.GetAddressBytes());
    }

    /// <summary>Opens a nested attribute; its length is written when the scope is disposed.</summary>
    public NestScope Nested(ushort type)
    {
        int start = length;
        var s = Skip(4);
        BinaryPrimitives.WriteUInt16LittleEndian(s[2..], type);
        return new NestScope(this, start);
    }

    /// <summary>Opens a block whose first two bytes hold its length (an rtnexthop).</summary>
    public NestScope Sized(int headerBytes)
    {
        int start = length;
        Skip(headerBytes);
        return new NestScope(this, start);
    }

    internal Span<byte> At(int offset, int n) => buffer.AsSpan(offset, n);

    public static int Align(int n) => (n + 3) & ~3;

    private void Ensure(int n)
    {
        if (length + n > buffer.Length)
        {
            Array.Resize(ref buffer, Math.Max(buffer.Length * 2, length + n));
        }
    }

    public readonly struct NestScope(MessageBuilder owner, int start) : IDisposable
    {
        public int Start => start;

        public void Dispose() =>
            BinaryPrimitives.WriteUInt16LittleEndian(owner.At(start, 2), (ushort)(owner.Length - start));
    }
}

/// <summary>Reads a run of netlink attributes (rtattr) from a span.</summary>
public ref struct AttributeReader
{
    private ReadOnlySpan<byte> rest;

    public AttributeReader(ReadOnlySpan<byte> attributes) => rest = attributes;

    public ushort Type { get; private set; }

    public ReadOnlySpan<byte> Value { get; private set; }

    /// <summary>Moves to the next attribute; false at the end or on a malformed length.</summary>
    public bool Next()
    {
        if (rest.Length < 4)
        {
            return false;
        }

        int len = BinaryPrimitives.ReadUInt16LittleEndian(rest);
        if (len < 4 || len > rest.Length)
        {
            return false;
        }

        Type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(rest[2..]) & 0x3fff);
        Value = rest[4..len];
        rest = rest[Math.Min(rest.Length, MessageBuilder.Align(len))..];
        return true;
    }

    public readonly uint U32 => BinaryPrimitives.ReadUInt32LittleEndian(Value);

    public readonly string Text => Encoding.ASCII.GetString(Value.IndexOf((byte)0) is var z and >= 0 ? Value[..z] : Value);

    public readonly IPAddress Address => new(Value);
}
