using System.Buffers;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgp.Tests;

/// <summary>Builds raw messages byte by byte, so tests state exactly what goes on the wire.</summary>
internal static class Wire
{
    public static byte[] Message(MessageType type, params byte[] body)
    {
        byte[] m = new byte[19 + body.Length];
        m.AsSpan(0, 16).Fill(0xFF);
        m[16] = (byte)(m.Length >> 8);
        m[17] = (byte)m.Length;
        m[18] = (byte)type;
        body.CopyTo(m, 19);
        return m;
    }

    /// <summary>An UPDATE from its three parts.</summary>
    public static byte[] Update(byte[] withdrawn, byte[] attributes, byte[] nlri)
    {
        var body = new List<byte>();
        body.Add((byte)(withdrawn.Length >> 8));
        body.Add((byte)withdrawn.Length);
        body.AddRange(withdrawn);
        body.Add((byte)(attributes.Length >> 8));
        body.Add((byte)attributes.Length);
        body.AddRange(attributes);
        body.AddRange(nlri);
        return Message(MessageType.Update, [.. body]);
    }

    public static byte[] Attr(byte flags, byte code, params byte[] value)
    {
        if ((flags & AttributeFlags.ExtendedLength) != 0)
        {
            return [flags, code, (byte)(value.Length >> 8), (byte)value.Length, .. value];
        }
        return [flags, code, (byte)value.Length, .. value];
    }

    public static byte[] Origin(byte v = 0) => Attr(0x40, 1, v);

    public static byte[] AsPath4(params uint[] asns)
    {
        var v = new List<byte> { 2, (byte)asns.Length };
        foreach (uint a in asns)
        {
            v.AddRange([(byte)(a >> 24), (byte)(a >> 16), (byte)(a >> 8), (byte)a]);
        }
        return Attr(0x40, 2, [.. v]);
    }

    public static byte[] NextHop(byte a, byte b, byte c, byte d) => Attr(0x40, 3, a, b, c, d);

    /// <summary>ORIGIN IGP, AS_PATH [65001], NEXT_HOP 10.0.0.1.</summary>
    public static byte[] Mandatory => [.. Origin(), .. AsPath4(65001), .. NextHop(10, 0, 0, 1)];

    public static byte[] Nlri24(byte a, byte b, byte c) => [24, a, b, c];

    public static BgpMessage Decode(byte[] message, bool fourOctet = true) =>
        MessageDecoder.DecodeMessage(message, new CodecOptions(fourOctet, false));

    public static UpdateMessage DecodeUpdate(byte[] message, bool fourOctet = true) => Assert.IsType<UpdateMessage>(Decode(message, fourOctet));

    public static byte[] Encode(Func<IBufferWriter<byte>, int> write)
    {
        var w = new ArrayBufferWriter<byte>();
        write(w);
        return w.WrittenSpan.ToArray();
    }
}
