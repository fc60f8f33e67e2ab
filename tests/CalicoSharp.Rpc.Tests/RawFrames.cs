using System.Buffers.Binary;

namespace CalicoSharp.Rpc.Tests;

/// <summary>HTTP/2 frames written by hand, for tests that play a peer breaking (or keeping) the rules.</summary>
internal static class RawFrames
{
    public static byte[] Frame(byte type, byte flags, int stream, params byte[] payload)
    {
        byte[] f = new byte[9 + payload.Length];
        f[0] = (byte)(payload.Length >> 16);
        f[1] = (byte)(payload.Length >> 8);
        f[2] = (byte)payload.Length;
        f[3] = type;
        f[4] = flags;
        BinaryPrimitives.WriteInt32BigEndian(f.AsSpan(5), stream);
        payload.CopyTo(f, 9);
        return f;
    }

    public static byte[] Concat(params byte[][] parts) => [.. parts.SelectMany(p => p)];
}
