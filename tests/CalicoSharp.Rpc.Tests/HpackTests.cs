namespace CalicoSharp.Rpc.Tests;

/// <summary>HPACK (RFC 7541): the Huffman code, the decoder against the RFC's Appendix C examples, its bounds
/// and every malformed input it must refuse, and the encoder through the decoder.</summary>
public class HpackTests
{
    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    [Theory]
    [InlineData(0, 0x1ff8u, 13)]
    [InlineData(1, 0x7fffd8u, 23)]
    [InlineData(10, 0x3ffffffcu, 30)]
    [InlineData(32, 0x14u, 6)] // ' '
    [InlineData(48, 0x0u, 5)] // '0'
    [InlineData(97, 0x3u, 5)] // 'a'
    [InlineData(255, 0x3ffffeeu, 26)]
    [InlineData(256, 0x3fffffffu, 30)] // EOS
    public void Canonical_codes_built_from_the_lengths_are_the_RFC_table(int symbol, uint code, int length)
    {
        Assert.Equal((code, length), Huffman.Code(symbol));
    }

    [Theory]
    [InlineData("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff")]
    [InlineData("no-cache", "a8eb 1064 9cbf")]
    [InlineData("custom-key", "25a8 49e9 5ba9 7d7f")]
    [InlineData("custom-value", "25a8 49e9 5bb8 e8b4 bf")]
    public void Huffman_matches_the_RFC_examples_both_ways(string text, string hex)
    {
        byte[] raw = System.Text.Encoding.ASCII.GetBytes(text);
        byte[] coded = new byte[Huffman.EncodedLength(raw)];
        Assert.Equal(coded.Length, Huffman.Encode(raw, coded));
        Assert.Equal(Hex(hex), coded);
        byte[] back = new byte[(coded.Length * 8 / 5) + 1];
        Assert.Equal(text, System.Text.Encoding.ASCII.GetString(back, 0, Huffman.Decode(coded, back)));
    }

    [Fact]
    public void Every_byte_value_round_trips()
    {
        var random = new Random(7);
        for (int round = 0; round < 500; round++)
        {
            byte[] raw = new byte[random.Next(0, 64)];
            random.NextBytes(raw);
            byte[] coded = new byte[Huffman.EncodedLength(raw)];
            Huffman.Encode(raw, coded);
            byte[] back = new byte[(coded.Length * 8 / 5) + 1];
            Assert.Equal(raw, back[..Huffman.Decode(coded, back)]);
        }
    }

    [Theory]
    [InlineData("ffff fffc", "EOS")] // 30 ones: the EOS symbol itself
    [InlineData("18", "padding")] // 'a' (00011) padded with zeros
    [InlineData("1f ff", "padding")] // 'a' then 11 bits of ones: padding longer than 7 bits
    public void Huffman_refuses_EOS_and_bad_padding(string hex, string what)
    {
        byte[] coded = Hex(hex);
        var e = Assert.Throws<HpackException>(() => Huffman.Decode(coded, new byte[16]));
        Assert.Contains(what, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decoder_follows_RFC_C3_requests_without_Huffman()
    {
        var d = new HpackDecoder();
        Assert.Equal(
            [new(":method", "GET"), new(":scheme", "http"), new(":path", "/"), new(":authority", "www.example.com")],
            d.Decode(Hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d")));
        Assert.Equal(
            [new(":method", "GET"), new(":scheme", "http"), new(":path", "/"), new(":authority", "www.example.com"), new("cache-control", "no-cache")],
            d.Decode(Hex("8286 84be 5808 6e6f 2d63 6163 6865")));
        Assert.Equal(
            [new(":method", "GET"), new(":scheme", "https"), new(":path", "/index.html"), new(":authority", "www.example.com"), new("custom-key", "custom-value")],
            d.Decode(Hex("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65")));
    }

    [Fact]
    public void Decoder_follows_RFC_C4_requests_with_Huffman()
    {
        var d = new HpackDecoder();
        Assert.Equal(new HeaderField(":authority", "www.example.com"), d.Decode(Hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))[3]);
        Assert.Equal(new HeaderField("cache-control", "no-cache"), d.Decode(Hex("8286 84be 5886 a8eb 1064 9cbf"))[4]);
        var third = d.Decode(Hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"));
        Assert.Equal(new HeaderField("custom-key", "custom-value"), third[4]);
        Assert.Equal(new HeaderField(":authority", "www.example.com"), third[3]);
    }

    [Fact]
    public void Dynamic_table_evicts_the_oldest_entry_within_its_size()
    {
        // Two entries of 32 + 1 + 1 = 34 bytes each fit a 70-byte table; a third evicts the first.
        var d = new HpackDecoder(maxTableSize: 70);
        d.Decode([0x3F, 0x27, 0x40, 0x01, (byte)'a', 0x01, (byte)'1']); // size update to 70, add a: 1
        d.Decode([0x40, 0x01, (byte)'b', 0x01, (byte)'2']);
        Assert.Equal([new("b", "2"), new("a", "1")], d.Decode([0xBE, 0xBF]));
        d.Decode([0x40, 0x01, (byte)'c', 0x01, (byte)'3']);
        Assert.Equal([new("c", "3"), new("b", "2")], d.Decode([0xBE, 0xBF]));
        var e = Assert.Throws<HpackException>(() => d.Decode([0xC0]));
        Assert.Contains("beyond the table", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Size_update_to_zero_empties_the_table()
    {
        var d = new HpackDecoder();
        d.Decode([0x40, 0x01, (byte)'a', 0x01, (byte)'1']);
        Assert.Equal([new("a", "1")], d.Decode([0xBE]));
        d.Decode([0x20]);
        Assert.Throws<HpackException>(() => d.Decode([0xBE]));
    }

    [Theory]
    [InlineData("80", "index 0")]
    [InlineData("ff 00", "beyond the table")] // index 127 with an empty dynamic table
    [InlineData("ff ff ff ff ff 0f", "too large")]
    [InlineData("ff", "inside an integer")]
    [InlineData("40 05 61", "runs past the block")]
    [InlineData("82 20", "after a header field")]
    [InlineData("3f e1 ff 03", "exceeds")] // size update to 65,536 > 4,096
    public void Decoder_refuses_malformed_blocks(string hex, string what)
    {
        var e = Assert.Throws<HpackException>(() => new HpackDecoder().Decode(Hex(hex)));
        Assert.Contains(what, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Decoder_bounds_the_header_list()
    {
        var block = new List<byte>();
        for (int i = 0; i < 10; i++)
        {
            HpackEncoder.Write(block, "x-field-" + i, new string('v', 100));
        }

        var e = Assert.Throws<HpackException>(() => new HpackDecoder(maxHeaderListSize: 1000).Decode(block.ToArray()));
        Assert.Contains("header list larger than 1000", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Encoder_output_decodes_to_the_same_fields()
    {
        (string, string)[] fields =
        [
            (":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"), (":authority", "127.0.0.1:2379"),
            ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "4999m"),
            ("x-long", new string('z', 300)), ("x-utf8", "grüße"), ("", ""),
        ];
        var block = new List<byte>();
        foreach ((string n, string v) in fields)
        {
            HpackEncoder.Write(block, n, v);
        }

        Assert.Equal(fields.Select(f => new HeaderField(f.Item1, f.Item2)), new HpackDecoder().Decode(block.ToArray()));
        // Fully indexed static entries take one byte.
        var one = new List<byte>();
        HpackEncoder.Write(one, ":method", "POST");
        Assert.Equal([0x83], one);
    }

    [Fact]
    public void Random_blocks_decode_or_fail_with_HpackException_only()
    {
        var random = new Random(11);
        for (int i = 0; i < 20_000; i++)
        {
            byte[] block = new byte[random.Next(1, 40)];
            random.NextBytes(block);
            try
            {
                new HpackDecoder().Decode(block);
            }
            catch (HpackException)
            {
            }
        }
    }
}
