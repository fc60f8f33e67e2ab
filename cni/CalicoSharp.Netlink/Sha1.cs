using System.Buffers.Binary;
using System.Numerics;

namespace CalicoSharp.Netlink;

/// <summary>SHA-1 (FIPS 180-4 §6.1) of a short input, for Calico's interface names only (not security).
/// Written here because .NET's SHA1 on Linux loads and initialises OpenSSL (libssl, libcrypto and its
/// configuration file) on first use: measured 10-15 ms of every CNI ADD and DEL that kubelet invokes with
/// the pod's name, for a hash of a few dozen bytes. Conformance: tests compare it with .NET's SHA1.</summary>
public static class Sha1
{
    public const int HashSize = 20;

    public static byte[] HashData(ReadOnlySpan<byte> data)
    {
        uint h0 = 0x67452301, h1 = 0xEFCDAB89, h2 = 0x98BADCFE, h3 = 0x10325476, h4 = 0xC3D2E1F0;
        Span<uint> w = stackalloc uint[80];
        Span<byte> tail = stackalloc byte[128];

        // §5.1.1 padding: a 1 bit, zeros, then the message length in bits as a 64-bit big-endian number, to a
        // multiple of 64 bytes. Whole blocks are hashed from the input; the rest and the padding from 'tail'.
        int whole = data.Length & ~63;
        for (int off = 0; off < whole; off += 64)
        {
            Block(data.Slice(off, 64), w, ref h0, ref h1, ref h2, ref h3, ref h4);
        }

        int rest = data.Length - whole;
        data[whole..].CopyTo(tail);
        tail[rest] = 0x80;
        int tailLength = rest + 9 <= 64 ? 64 : 128;
        tail[(rest + 1)..tailLength].Clear();
        BinaryPrimitives.WriteUInt64BigEndian(tail[(tailLength - 8)..], (ulong)data.Length * 8);
        for (int off = 0; off < tailLength; off += 64)
        {
            Block(tail.Slice(off, 64), w, ref h0, ref h1, ref h2, ref h3, ref h4);
        }

        var digest = new byte[HashSize];
        BinaryPrimitives.WriteUInt32BigEndian(digest, h0);
        BinaryPrimitives.WriteUInt32BigEndian(digest.AsSpan(4), h1);
        BinaryPrimitives.WriteUInt32BigEndian(digest.AsSpan(8), h2);
        BinaryPrimitives.WriteUInt32BigEndian(digest.AsSpan(12), h3);
        BinaryPrimitives.WriteUInt32BigEndian(digest.AsSpan(16), h4);
        return digest;
    }

    /// <summary>§6.1.2: one 512-bit block into the hash value.</summary>
    private static void Block(ReadOnlySpan<byte> block, Span<uint> w, ref uint h0, ref uint h1, ref uint h2, ref uint h3, ref uint h4)
    {
        for (int t = 0; t < 16; t++)
        {
            w[t] = BinaryPrimitives.ReadUInt32BigEndian(block[(4 * t)..]);
        }

        for (int t = 16; t < 80; t++)
        {
            w[t] = BitOperations.RotateLeft(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
        }

        uint a = h0, b = h1, c = h2, d = h3, e = h4;
        for (int t = 0; t < 80; t++)
        {
            // §4.1.1 f_t and §4.2.1 K_t, by round.
            (uint f, uint k) = t switch
            {
                < 20 => ((b & c) | (~b & d), 0x5A827999u),
                < 40 => (b ^ c ^ d, 0x6ED9EBA1u),
                < 60 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDCu),
                _ => (b ^ c ^ d, 0xCA62C1D6u),
            };
            uint temp = BitOperations.RotateLeft(a, 5) + f + e + k + w[t];
            e = d;
            d = c;
            c = BitOperations.RotateLeft(b, 30);
            b = a;
            a = temp;
        }

        h0 += a;
        h1 += b;
        h2 += c;
        h3 += d;
        h4 += e;
    }
}
