using System.Text;

namespace CalicoSharp.Rpc;

/// <summary>A header block that cannot be decoded: an HTTP/2 connection error of type COMPRESSION_ERROR
/// (RFC 9113 §4.3), or a header list over the bound this side set.</summary>
public sealed class HpackException(string message) : Exception(message);

/// <summary>One decoded header field.</summary>
public readonly record struct HeaderField(string Name, string Value);

/// <summary>HPACK's static table (RFC 7541 Appendix A), 1-based.</summary>
internal static class HpackStaticTable
{
    public static readonly HeaderField[] Entries =
    [
        new(":authority", ""), new(":method", "GET"), new(":method", "POST"), new(":path", "/"),
        new(":path", "/index.html"), new(":scheme", "http"), new(":scheme", "https"), new(":status", "200"),
        new(":status", "204"), new(":status", "206"), new(":status", "304"), new(":status", "400"),
        new(":status", "404"), new(":status", "500"), new("accept-charset", ""), new("accept-encoding", "gzip, deflate"),
        new("accept-language", ""), new("accept-ranges", ""), new("accept", ""), new("access-control-allow-origin", ""),
        new("age", ""), new("allow", ""), new("authorization", ""), new("cache-control", ""),
        new("content-disposition", ""), new("content-encoding", ""), new("content-language", ""), new("content-length", ""),
        new("content-location", ""), new("content-range", ""), new("content-type", ""), new("cookie", ""),
        new("date", ""), new("etag", ""), new("expect", ""), new("expires", ""),
        new("from", ""), new("host", ""), new("if-match", ""), new("if-modified-since", ""),
        new("if-none-match", ""), new("if-range", ""), new("if-unmodified-since", ""), new("last-modified", ""),
        new("link", ""), new("location", ""), new("max-forwards", ""), new("proxy-authenticate", ""),
        new("proxy-authorization", ""), new("range", ""), new("referer", ""), new("refresh", ""),
        new("retry-after", ""), new("server", ""), new("set-cookie", ""), new("strict-transport-security", ""),
        new("transfer-encoding", ""), new("user-agent", ""), new("vary", ""), new("via", ""),
        new("www-authenticate", ""),
    ];

    /// <summary>The index of a name in the static table, or 0.</summary>
    public static int IndexOfName(string name)
    {
        for (int i = 0; i < Entries.Length; i++)
        {
            if (string.Equals(Entries[i].Name, name, StringComparison.Ordinal))
            {
                return i + 1;
            }
        }

        return 0;
    }
}

/// <summary>
/// Decodes HPACK header blocks (RFC 7541) for one direction of one connection: the dynamic table lives as
/// long as the connection. Bounded: the table by the size this side advertised, a header list by
/// <see cref="MaxHeaderListSize"/> (RFC 9113 §6.5.2's accounting: name + value + 32 per field).
/// </summary>
public sealed class HpackDecoder
{
    private readonly List<HeaderField> dynamic = []; // newest first
    private readonly int maxTableSize;
    private int tableLimit;
    private int tableSize;

    public HpackDecoder(int maxTableSize = 4096, int maxHeaderListSize = 64 * 1024)
    {
        this.maxTableSize = maxTableSize;
        tableLimit = maxTableSize;
        MaxHeaderListSize = maxHeaderListSize;
    }

    public int MaxHeaderListSize { get; }

    /// <summary>Decodes one complete header block (HEADERS plus any CONTINUATION fragments, joined).</summary>
    public List<HeaderField> Decode(ReadOnlySpan<byte> block)
    {
        var fields = new List<HeaderField>();
        int listSize = 0;
        bool fieldSeen = false;
        int pos = 0;
        while (pos < block.Length)
        {
            byte b = block[pos];
            HeaderField field;
            if ((b & 0x80) != 0)
            {
                // §6.1 indexed header field
                int index = ReadInteger(block, ref pos, 7);
                field = Lookup(index);
            }
            else if ((b & 0xC0) == 0x40)
            {
                // §6.2.1 literal with incremental indexing
                field = ReadLiteral(block, ref pos, 6);
                Add(field);
            }
            else if ((b & 0xE0) == 0x20)
            {
                // §6.3 dynamic table size update: only at the start of a block (§4.2)
                if (fieldSeen)
                {
                    throw new HpackException("HPACK: dynamic table size update after a header field");
                }

                int size = ReadInteger(block, ref pos, 5);
                if (size > maxTableSize)
                {
                    throw new HpackException($"HPACK: table size update to {size} exceeds the {maxTableSize} this side allows");
                }

                tableLimit = size;
                Evict(0);
                continue;
            }
            else
            {
                // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001)
                field = ReadLiteral(block, ref pos, 4);
            }

            fieldSeen = true;
            listSize += field.Name.Length + field.Value.Length + 32;
            if (listSize > MaxHeaderListSize)
            {
                throw new HpackException($"HPACK: header list larger than {MaxHeaderListSize} bytes");
            }

            fields.Add(field);
        }

        return fields;
    }

    private HeaderField Lookup(int index)
    {
        if (index <= 0)
        {
            throw new HpackException("HPACK: index 0");
        }

        if (index <= HpackStaticTable.Entries.Length)
        {
            return HpackStaticTable.Entries[index - 1];
        }

        int d = index - HpackStaticTable.Entries.Length - 1;
        if (d >= dynamic.Count)
        {
            throw new HpackException($"HPACK: index {index} is beyond the table ({HpackStaticTable.Entries.Length + dynamic.Count} entries)");
        }

        return dynamic[d];
    }

    private HeaderField ReadLiteral(ReadOnlySpan<byte> block, ref int pos, int prefix)
    {
        int nameIndex = ReadInteger(block, ref pos, prefix);
        string name = nameIndex == 0 ? ReadString(block, ref pos) : Lookup(nameIndex).Name;
        string value = ReadString(block, ref pos);
        return new HeaderField(name, value);
    }

    private void Add(HeaderField field)
    {
        int size = Encoding.UTF8.GetByteCount(field.Name) + Encoding.UTF8.GetByteCount(field.Value) + 32;
        if (size > tableLimit)
        {
            // §4.4: an entry larger than the table empties it and is not added.
            dynamic.Clear();
            tableSize = 0;
            return;
        }

        Evict(size);
        dynamic.Insert(0, field);
        tableSize += size;
    }

    private void Evict(int room)
    {
        while (tableSize + room > tableLimit && dynamic.Count > 0)
        {
            HeaderField last = dynamic[^1];
            tableSize -= Encoding.UTF8.GetByteCount(last.Name) + Encoding.UTF8.GetByteCount(last.Value) + 32;
            dynamic.RemoveAt(dynamic.Count - 1);
        }
    }

    /// <summary>RFC 7541 §5.1 integer with an N-bit prefix; values above 2^24 are refused.</summary>
    internal static int ReadInteger(ReadOnlySpan<byte> block, ref int pos, int prefix)
    {
        if (pos >= block.Length)
        {
            throw new HpackException("HPACK: block ends inside an integer");
        }

        int mask = (1 << prefix) - 1;
        int value = block[pos++] & mask;
        if (value < mask)
        {
            return value;
        }

        int shift = 0;
        while (true)
        {
            if (pos >= block.Length)
            {
                throw new HpackException("HPACK: block ends inside an integer");
            }

            byte b = block[pos++];
            value += (b & 0x7F) << shift;
            if (value > 1 << 24 || shift > 21)
            {
                throw new HpackException("HPACK: integer too large");
            }

            if ((b & 0x80) == 0)
            {
                return value;
            }

            shift += 7;
        }
    }

    private string ReadString(ReadOnlySpan<byte> block, ref int pos)
    {
        if (pos >= block.Length)
        {
            throw new HpackException("HPACK: block ends before a string");
        }

        bool huffman = (block[pos] & 0x80) != 0;
        int length = ReadInteger(block, ref pos, 7);
        if (length > block.Length - pos)
        {
            throw new HpackException($"HPACK: string of {length} bytes runs past the block");
        }

        if (length > MaxHeaderListSize)
        {
            throw new HpackException($"HPACK: string longer than the {MaxHeaderListSize}-byte header list bound");
        }

        ReadOnlySpan<byte> raw = block.Slice(pos, length);
        pos += length;
        if (!huffman)
        {
            return Encoding.UTF8.GetString(raw);
        }

        int max = (length * 8 / 5) + 1;
        Span<byte> decoded = max <= 512 ? stackalloc byte[max] : new byte[max];
        int n = Huffman.Decode(raw, decoded);
        return Encoding.UTF8.GetString(decoded[..n]);
    }
}

/// <summary>
/// Encodes header blocks without touching the peer's dynamic table: every field is an indexed static
/// entry or a literal "without indexing" (RFC 7541 §6.2.2), its name by static index where the table has
/// it, its strings Huffman-coded when that is shorter. The decoder on the other side keeps no state for us.
/// </summary>
public static class HpackEncoder
{
    public static void Write(List<byte> output, string name, string value)
    {
        ArgumentNullException.ThrowIfNull(output);
        for (int i = 0; i < HpackStaticTable.Entries.Length; i++)
        {
            HeaderField e = HpackStaticTable.Entries[i];
            if (e.Value.Length > 0 && string.Equals(e.Name, name, StringComparison.Ordinal) && string.Equals(e.Value, value, StringComparison.Ordinal))
            {
                WriteInteger(output, 0x80, 7, i + 1);
                return;
            }
        }

        int nameIndex = HpackStaticTable.IndexOfName(name);
        WriteInteger(output, 0x00, 4, nameIndex);
        if (nameIndex == 0)
        {
            WriteString(output, name);
        }

        WriteString(output, value);
    }

    internal static void WriteInteger(List<byte> output, byte first, int prefix, int value)
    {
        int mask = (1 << prefix) - 1;
        if (value < mask)
        {
            output.Add((byte)(first | value));
            return;
        }

        output.Add((byte)(first | mask));
        value -= mask;
        while (value >= 0x80)
        {
            output.Add((byte)((value & 0x7F) | 0x80));
            value >>= 7;
        }

        output.Add((byte)value);
    }

    private static void WriteString(List<byte> output, string text)
    {
        byte[] raw = Encoding.UTF8.GetBytes(text);
        int coded = Huffman.EncodedLength(raw);
        if (coded < raw.Length)
        {
            WriteInteger(output, 0x80, 7, coded);
            Span<byte> buffer = coded <= 512 ? stackalloc byte[coded] : new byte[coded];
            Huffman.Encode(raw, buffer);
            foreach (byte b in buffer)
            {
                output.Add(b);
            }

            return;
        }

        WriteInteger(output, 0x00, 7, raw.Length);
        output.AddRange(raw);
    }
}
