namespace CalicoSharp.Rpc;

/// <summary>
/// The Huffman code of HPACK (RFC 7541 §5.2, Appendix B). The code is canonical: codes are handed out in
/// order of length, then of symbol, so the table below (the bit length of each of the 256 byte values and
/// of EOS) defines it completely; <see cref="Code"/> rebuilds each code from it.
/// </summary>
internal static class Huffman
{
    public const int Eos = 256;

    // RFC 7541 Appendix B, the "len in bits" column, symbols 0..256.
    private static ReadOnlySpan<byte> Lengths =>
    [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
        28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
        6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
        5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
        13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
        6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
        20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
        24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
        21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
        26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
        19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
        20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
        26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
        30,
    ];

    private const int MaxLength = 30;

    // Canonical decoding: for each length, the first code of that length, how many codes have it, and
    // where its symbols start in Symbols (sorted by length, then value).
    private static readonly int[] FirstCode = new int[MaxLength + 2];
    private static readonly int[] Count = new int[MaxLength + 2];
    private static readonly int[] Offset = new int[MaxLength + 2];
    private static readonly short[] Symbols = new short[257];
    private static readonly uint[] Codes = new uint[257];

#pragma warning disable CA1810 // the tables are derived from one another in order
    static Huffman()
#pragma warning restore CA1810
    {
        ReadOnlySpan<byte> lengths = Lengths;
        for (int s = 0; s < lengths.Length; s++)
        {
            Count[lengths[s]]++;
        }

        int code = 0;
        int offset = 0;
        for (int len = 1; len <= MaxLength; len++)
        {
            code = (code + Count[len - 1]) << 1;
            FirstCode[len] = code;
            Offset[len] = offset;
            offset += Count[len];
        }

        var next = (int[])Offset.Clone();
        var nextCode = (int[])FirstCode.Clone();
        for (int s = 0; s < lengths.Length; s++)
        {
            int len = lengths[s];
            Symbols[next[len]++] = (short)s;
            Codes[s] = (uint)nextCode[len]++;
        }
    }

    /// <summary>The code of a symbol (0..256) and its length in bits.</summary>
    public static (uint Code, int Length) Code(int symbol) => (Codes[symbol], Lengths[symbol]);

    /// <summary>Decodes a Huffman-coded string into <paramref name="output"/>, which must hold at least
    /// <c>source.Length * 8 / 5</c> bytes (the shortest code is 5 bits). Returns the decoded length.</summary>
    /// <exception cref="HpackException">EOS inside the string, padding longer than 7 bits or not made of
    /// ones (RFC 7541 §5.2): a decoding error.</exception>
    public static int Decode(ReadOnlySpan<byte> source, Span<byte> output)
    {
        int written = 0;
        int code = 0;
        int len = 0;
        bool allOnes = true;
        foreach (byte b in source)
        {
            for (int bit = 7; bit >= 0; bit--)
            {
                int v = (b >> bit) & 1;
                code = (code << 1) | v;
                len++;
                allOnes &= v == 1;
                int index = code - FirstCode[len];
                if (index >= 0 && index < Count[len])
                {
                    int symbol = Symbols[Offset[len] + index];
                    if (symbol == Eos)
                    {
                        throw new HpackException("HPACK: EOS symbol inside a Huffman-coded string");
                    }

                    output[written++] = (byte)symbol;
                    code = 0;
                    len = 0;
                    allOnes = true;
                }
                else if (len >= MaxLength)
                {
                    throw new HpackException("HPACK: invalid Huffman code");
                }
            }
        }

        // RFC 7541 §5.2: padding is the most significant bits of EOS (all ones), strictly shorter than 8 bits.
        if (len > 7 || !allOnes)
        {
            throw new HpackException("HPACK: Huffman padding is longer than 7 bits or not the EOS prefix");
        }

        return written;
    }

    /// <summary>How many bytes <paramref name="text"/> takes Huffman-coded.</summary>
    public static int EncodedLength(ReadOnlySpan<byte> text)
    {
        long bits = 0;
        foreach (byte b in text)
        {
            bits += Lengths[b];
        }

        return (int)((bits + 7) / 8);
    }

    /// <summary>Huffman-codes <paramref name="text"/> into <paramref name="output"/> (of
    /// <see cref="EncodedLength"/> bytes), padding with ones.</summary>
    public static int Encode(ReadOnlySpan<byte> text, Span<byte> output)
    {
        ulong acc = 0;
        int bits = 0;
        int written = 0;
        foreach (byte b in text)
        {
            acc = (acc << Lengths[b]) | Codes[b];
            bits += Lengths[b];
            while (bits >= 8)
            {
                bits -= 8;
                output[written++] = (byte)(acc >> bits);
            }
        }

        if (bits > 0)
        {
            output[written++] = (byte)((acc << (8 - bits)) | (0xFFu >> bits));
        }

        return written;
    }
}
