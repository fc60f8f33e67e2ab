using System.Buffers;
using System.Buffers.Binary;

namespace CalicoSharp.Rpc;

/// <summary>HTTP/2 frame types (RFC 9113 §6).</summary>
internal enum FrameType : byte
{
    Data = 0x0,
    Headers = 0x1,
    Priority = 0x2,
    RstStream = 0x3,
    Settings = 0x4,
    PushPromise = 0x5,
    Ping = 0x6,
    GoAway = 0x7,
    WindowUpdate = 0x8,
    Continuation = 0x9,
}

/// <summary>HTTP/2 error codes (RFC 9113 §7).</summary>
public enum Http2ErrorCode : uint
{
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    ConnectError = 0xA,
    EnhanceYourCalm = 0xB,
    InadequateSecurity = 0xC,
    Http11Required = 0xD,
}

/// <summary>A connection error (RFC 9113 §5.4.1): the connection ends with GOAWAY carrying this code.</summary>
public sealed class Http2Exception(Http2ErrorCode code, string message) : Exception(message)
{
    public Http2ErrorCode Code { get; } = code;
}

internal static class Http2
{
    public const byte FlagEndStream = 0x1;
    public const byte FlagAck = 0x1;
    public const byte FlagEndHeaders = 0x4;
    public const byte FlagPadded = 0x8;
    public const byte FlagPriority = 0x20;

    public const ushort SettingsHeaderTableSize = 0x1;
    public const ushort SettingsEnablePush = 0x2;
    public const ushort SettingsMaxConcurrentStreams = 0x3;
    public const ushort SettingsInitialWindowSize = 0x4;
    public const ushort SettingsMaxFrameSize = 0x5;
    public const ushort SettingsMaxHeaderListSize = 0x6;

    public const int FrameHeaderLength = 9;
    public const int DefaultMaxFrameSize = 16_384;
    public const int DefaultWindow = 65_535;
    public const int MaxWindow = int.MaxValue;

    /// <summary>RFC 9113 §3.4: what a client sends first.</summary>
    public static ReadOnlySpan<byte> ClientPreface => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;
}

/// <summary>Frames appended to one buffer and sent with one write.</summary>
internal sealed class FrameWriter
{
    private readonly ArrayBufferWriter<byte> buffer = new(4096);

    public ReadOnlyMemory<byte> Written => buffer.WrittenMemory;

    public bool IsEmpty => buffer.WrittenCount == 0;

    public void Clear() => buffer.ResetWrittenCount();

    public void Raw(ReadOnlySpan<byte> bytes) => buffer.Write(bytes);

    public void Frame(FrameType type, byte flags, int stream, ReadOnlySpan<byte> payload)
    {
        Span<byte> h = buffer.GetSpan(Http2.FrameHeaderLength + payload.Length);
        h[0] = (byte)(payload.Length >> 16);
        h[1] = (byte)(payload.Length >> 8);
        h[2] = (byte)payload.Length;
        h[3] = (byte)type;
        h[4] = flags;
        BinaryPrimitives.WriteInt32BigEndian(h[5..], stream & int.MaxValue);
        payload.CopyTo(h[Http2.FrameHeaderLength..]);
        buffer.Advance(Http2.FrameHeaderLength + payload.Length);
    }

    public void Settings(ReadOnlySpan<(ushort Id, uint Value)> settings)
    {
        Span<byte> payload = stackalloc byte[settings.Length * 6];
        for (int i = 0; i < settings.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(payload[(i * 6)..], settings[i].Id);
            BinaryPrimitives.WriteUInt32BigEndian(payload[((i * 6) + 2)..], settings[i].Value);
        }

        Frame(FrameType.Settings, 0, 0, payload);
    }

    public void WindowUpdate(int stream, int increment)
    {
        Span<byte> payload = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(payload, increment);
        Frame(FrameType.WindowUpdate, 0, stream, payload);
    }

    public void RstStream(int stream, Http2ErrorCode code)
    {
        Span<byte> payload = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)code);
        Frame(FrameType.RstStream, 0, stream, payload);
    }

    public void GoAway(int lastStream, Http2ErrorCode code, string? debug)
    {
        byte[] text = debug is null ? [] : System.Text.Encoding.UTF8.GetBytes(debug);
        Span<byte> payload = stackalloc byte[8 + Math.Min(text.Length, 256)];
        BinaryPrimitives.WriteInt32BigEndian(payload, lastStream);
        BinaryPrimitives.WriteUInt32BigEndian(payload[4..], (uint)code);
        text.AsSpan(0, payload.Length - 8).CopyTo(payload[8..]);
        Frame(FrameType.GoAway, 0, 0, payload);
    }

    /// <summary>A header block as HEADERS plus CONTINUATION frames no larger than <paramref name="maxFrame"/>.</summary>
    public void HeaderBlock(int stream, ReadOnlySpan<byte> block, bool endStream, int maxFrame)
    {
        int first = Math.Min(block.Length, maxFrame);
        byte flags = (byte)((endStream ? Http2.FlagEndStream : 0) | (first == block.Length ? Http2.FlagEndHeaders : 0));
        Frame(FrameType.Headers, flags, stream, block[..first]);
        int pos = first;
        while (pos < block.Length)
        {
            int n = Math.Min(block.Length - pos, maxFrame);
            Frame(FrameType.Continuation, pos + n == block.Length ? Http2.FlagEndHeaders : (byte)0, stream, block.Slice(pos, n));
            pos += n;
        }
    }
}
