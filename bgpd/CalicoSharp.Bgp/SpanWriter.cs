using System.Buffers.Binary;

namespace CalicoSharp.Bgp;

/// <summary>Writes big-endian fields into a span and knows where it is.</summary>
internal ref struct SpanWriter
{
    private readonly Span<byte> _buffer;

    public SpanWriter(Span<byte> buffer)
    {
        _buffer = buffer;
        Position = 0;
    }

    public int Position { get; set; }

    public readonly Span<byte> Written => _buffer[..Position];

    public void Byte(byte v) => _buffer[Position++] = v;

    public void UInt16(int v)
    {
        BinaryPrimitives.WriteUInt16BigEndian(_buffer[Position..], (ushort)v);
        Position += 2;
    }

    public void UInt32(uint v)
    {
        BinaryPrimitives.WriteUInt32BigEndian(_buffer[Position..], v);
        Position += 4;
    }

    public void Bytes(ReadOnlySpan<byte> v)
    {
        v.CopyTo(_buffer[Position..]);
        Position += v.Length;
    }

    public void Prefix(Prefix p) => Position += p.Write(_buffer[Position..]);

    public void Address(Prefix hostAddress)
    {
        if (hostAddress.Family == Afi.IPv4)
        {
            UInt32(hostAddress.V4Address);
        }
        else
        {
            BinaryPrimitives.WriteUInt128BigEndian(_buffer[Position..], hostAddress.V6Address);
            Position += 16;
        }
    }

    /// <summary>Starts a path attribute with a two-octet length; <see cref="EndAttribute"/> back-patches it and
    /// drops to a one-octet length when the value fits (RFC 4271 §4.3, Extended Length bit).</summary>
    public int BeginAttribute(byte flags, byte code)
    {
        int start = Position;
        Byte((byte)(flags | AttributeFlags.ExtendedLength));
        Byte(code);
        Position += 2;
        return start;
    }

    public void EndAttribute(int start, bool keepExtended = false)
    {
        int valueStart = start + 4;
        int len = Position - valueStart;
        if (len <= 255 && !keepExtended)
        {
            _buffer[start] &= unchecked((byte)~AttributeFlags.ExtendedLength);
            _buffer[start + 2] = (byte)len;
            _buffer.Slice(valueStart, len).CopyTo(_buffer[(start + 3)..]);
            Position--;
        }
        else
        {
            BinaryPrimitives.WriteUInt16BigEndian(_buffer[(start + 2)..], (ushort)len);
        }
    }

    /// <summary>Starts a message; <see cref="EndMessage"/> writes its length.</summary>
    public int BeginMessage(MessageType type)
    {
        int start = Position;
        _buffer.Slice(Position, 16).Fill(0xFF);
        Position += 18;
        Byte((byte)type);
        return start;
    }

    public readonly void EndMessage(int start) => BinaryPrimitives.WriteUInt16BigEndian(_buffer[(start + 16)..], (ushort)(Position - start));
}
