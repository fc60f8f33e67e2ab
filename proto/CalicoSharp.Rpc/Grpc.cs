using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using Grpc.Core;

namespace CalicoSharp.Rpc;

/// <summary>What gRPC over HTTP/2 adds to HTTP/2: the message prefix, status in trailers, timeouts and
/// the percent-encoded status message (gRPC's PROTOCOL-HTTP2.md).</summary>
internal static class GrpcWire
{
    public const string ContentType = "application/grpc";

    /// <summary>A message as it travels: compressed flag 0, 4-byte big-endian length, the bytes.</summary>
    public static byte[] Frame(ReadOnlySpan<byte> message)
    {
        byte[] framed = new byte[5 + message.Length];
        message.CopyTo(framed.AsSpan(5));
        WritePrefix(framed);
        return framed;
    }

    public static byte[] Frame(Google.Protobuf.IMessage message)
    {
        byte[] framed = new byte[5 + message.CalculateSize()];
        Google.Protobuf.MessageExtensions.WriteTo(message, framed.AsSpan(5));
        WritePrefix(framed);
        return framed;
    }

    /// <summary>Fills in the prefix of a framed message whose bytes follow it: uncompressed, its length.</summary>
    public static void WritePrefix(Span<byte> framed)
    {
        framed[0] = 0;
        BinaryPrimitives.WriteInt32BigEndian(framed[1..], framed.Length - 5);
    }

    public static byte[] Block(IEnumerable<(string Name, string Value)> fields)
    {
        var block = new List<byte>(128);
        foreach ((string name, string value) in fields)
        {
            HpackEncoder.Write(block, name, value);
        }

        return [.. block];
    }

    public static string? Get(List<HeaderField>? fields, string name)
    {
        if (fields is null)
        {
            return null;
        }

        foreach (HeaderField f in fields)
        {
            if (string.Equals(f.Name, name, StringComparison.Ordinal))
            {
                return f.Value;
            }
        }

        return null;
    }

    /// <summary>The call's status from its trailers (or a trailers-only answer).</summary>
    public static Status StatusOf(List<HeaderField>? trailers)
    {
        string? code = Get(trailers, "grpc-status");
        if (code is null)
        {
            return new Status(StatusCode.Internal, "the call ended without grpc-status");
        }

        if (!int.TryParse(code, NumberStyles.None, CultureInfo.InvariantCulture, out int value))
        {
            return new Status(StatusCode.Internal, $"grpc-status '{code}' is not a number");
        }

        return new Status((StatusCode)value, DecodeMessage(Get(trailers, "grpc-message") ?? string.Empty));
    }

    /// <summary>The custom metadata of a header block (a call's trailers): pseudo-headers, content-type and the
    /// status fields left out, <c>-bin</c> values decoded from base64 (padded or not); a field Metadata cannot
    /// hold (a name or value outside its alphabet) is skipped rather than failing the call.</summary>
    public static Metadata MetadataOf(List<HeaderField>? fields)
    {
        var m = new Metadata();
        foreach (HeaderField f in fields ?? [])
        {
            if (f.Name.StartsWith(':') || f.Name is "content-type" or "grpc-status" or "grpc-message")
            {
                continue;
            }

            try
            {
                if (f.Name.EndsWith("-bin", StringComparison.Ordinal))
                {
                    string padded = f.Value.PadRight(f.Value.Length + ((4 - (f.Value.Length % 4)) % 4), '=');
                    m.Add(f.Name, Convert.FromBase64String(padded));
                }
                else
                {
                    m.Add(f.Name, f.Value);
                }
            }
            catch (Exception e) when (e is ArgumentException or FormatException)
            {
                // not a field gRPC metadata can carry
            }
        }

        return m;
    }

    /// <summary>Metadata as header fields (binary values in base64), the status fields left to the caller.</summary>
    public static IEnumerable<(string Name, string Value)> FieldsOf(Metadata metadata)
    {
        foreach (Metadata.Entry e in metadata)
        {
            if (e.Key is not ("grpc-status" or "grpc-message"))
            {
                yield return (e.Key, e.IsBinary ? Convert.ToBase64String(e.ValueBytes) : e.Value);
            }
        }
    }

    /// <summary>gRPC's status for an HTTP status that is not 200 (the mapping gRPC's HTTP-to-status table gives).</summary>
    public static Status FromHttpStatus(string? status) => status switch
    {
        "400" => new Status(StatusCode.Internal, "HTTP 400 (bad request)"),
        "401" => new Status(StatusCode.Unauthenticated, "HTTP 401"),
        "403" => new Status(StatusCode.PermissionDenied, "HTTP 403"),
        "404" => new Status(StatusCode.Unimplemented, "HTTP 404: no such service"),
        "429" or "502" or "503" or "504" => new Status(StatusCode.Unavailable, $"HTTP {status}"),
        null => new Status(StatusCode.Internal, "response without :status"),
        _ => new Status(StatusCode.Unknown, $"HTTP {status}"),
    };

    /// <summary>grpc-message: UTF-8, with bytes outside 0x20..0x7E and '%' as %XX.</summary>
    public static string EncodeMessage(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            if (b is >= 0x20 and <= 0x7E && b != (byte)'%')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }

    public static string DecodeMessage(string text)
    {
        if (!text.Contains('%', StringComparison.Ordinal))
        {
            return text;
        }

        var bytes = new List<byte>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (text[i] == '%' && i + 2 < text.Length
                && byte.TryParse(text.AsSpan(i + 1, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
            {
                bytes.Add(b);
                i += 2;
            }
            else
            {
                bytes.Add((byte)text[i]);
            }
        }

        return Encoding.UTF8.GetString([.. bytes]);
    }

    /// <summary>grpc-timeout: at most 8 digits and a unit (gRPC's PROTOCOL-HTTP2.md).</summary>
    public static string FormatTimeout(TimeSpan timeout)
    {
        long ms = Math.Max(1, (long)Math.Ceiling(timeout.TotalMilliseconds));
        return ms < 100_000_000 ? ms.ToString(CultureInfo.InvariantCulture) + "m" : Math.Min(99_999_999, ms / 1000).ToString(CultureInfo.InvariantCulture) + "S";
    }

    public static TimeSpan? ParseTimeout(string? text)
    {
        if (text is null || text.Length < 2 || text.Length > 9
            || !long.TryParse(text.AsSpan(0, text.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out long n))
        {
            return null;
        }

        return text[^1] switch
        {
            'H' => TimeSpan.FromHours(n),
            'M' => TimeSpan.FromMinutes(n),
            'S' => TimeSpan.FromSeconds(n),
            'm' => TimeSpan.FromMilliseconds(n),
            'u' => TimeSpan.FromMicroseconds(n),
            'n' => TimeSpan.FromTicks(n / 100),
            _ => null,
        };
    }
}

/// <summary>Runs generated marshallers, which serialize through a context (Grpc.Core.Api's contextual
/// API): the message is written after room for the gRPC prefix, which is filled in once its length is known.</summary>
internal static class Marshalling
{
    public static byte[] Frame<T>(Marshaller<T> marshaller, T message)
    {
        var context = new Serialization();
        marshaller.ContextualSerializer(message, context);
        return context.Framed();
    }

    public static T Parse<T>(Marshaller<T> marshaller, byte[] payload) => marshaller.ContextualDeserializer(new Deserialization(payload));

    private sealed class Serialization : SerializationContext
    {
        private readonly System.Buffers.ArrayBufferWriter<byte> buffer = new(256);
        private byte[]? whole;

        public Serialization()
        {
            // Room for the prefix, written in Framed().
            buffer.GetSpan(5);
            buffer.Advance(5);
        }

        public override void Complete(byte[] payload) => whole = payload;

        public override System.Buffers.IBufferWriter<byte> GetBufferWriter() => buffer;

        public override void SetPayloadLength(int payloadLength)
        {
        }

        public override void Complete()
        {
        }

        public byte[] Framed()
        {
            if (whole is not null)
            {
                return GrpcWire.Frame(whole);
            }

            byte[] framed = buffer.WrittenSpan.ToArray();
            GrpcWire.WritePrefix(framed);
            return framed;
        }
    }

    private sealed class Deserialization(byte[] payload) : DeserializationContext
    {
        public override int PayloadLength => payload.Length;

        public override byte[] PayloadAsNewBuffer() => (byte[])payload.Clone();

        public override System.Buffers.ReadOnlySequence<byte> PayloadAsReadOnlySequence() => new(payload);
    }
}
