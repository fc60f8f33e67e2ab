using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace CalicoSharp.Ipam;

/// <summary>Source-generated serialisation of every record kept in etcd.</summary>
[JsonSourceGenerationOptions(GenerationMode = JsonSourceGenerationMode.Default)]
[JsonSerializable(typeof(AllocationBlock))]
[JsonSerializable(typeof(BlockAffinity))]
[JsonSerializable(typeof(IpamHandle))]
[JsonSerializable(typeof(IpamConfig))]
[JsonSerializable(typeof(IpPoolResource))]
[JsonSerializable(typeof(NodeResource))]
[JsonSerializable(typeof(CheckReport))]
[JsonSerializable(typeof(ulong))]
[JsonSerializable(typeof(int))]
[JsonSerializable(typeof(string))]
internal sealed partial class RecordJsonContext : JsonSerializerContext;

/// <summary>Encodes and decodes etcd values the way Calico's Go code does.</summary>
public static class RecordJson
{
    // Go's encoder writes non-ASCII as UTF-8 and does not escape '+' (Go time strings hold "+0000").
    private static readonly JsonSerializerOptions Options = new()
    {
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        TypeInfoResolver = RecordJsonContext.Default,
    };

    private static readonly RecordJsonContext Context = new(Options);

    public static byte[] Encode(AllocationBlock value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.AllocationBlock);

    public static byte[] Encode(BlockAffinity value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.BlockAffinity);

    public static byte[] Encode(IpamHandle value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.IpamHandle);

    public static byte[] Encode(IpamConfig value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.IpamConfig);

    public static byte[] Encode(IpPoolResource value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.IpPoolResource);

    public static byte[] Encode(NodeResource value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.NodeResource);

    public static byte[] Encode(CheckReport value) => JsonSerializer.SerializeToUtf8Bytes(value, Context.CheckReport);

    public static AllocationBlock DecodeBlock(ReadOnlySpan<byte> json, string key) => Decode(json, Context.AllocationBlock, key);

    public static BlockAffinity DecodeAffinity(ReadOnlySpan<byte> json, string key) => Decode(json, Context.BlockAffinity, key);

    public static IpamHandle DecodeHandle(ReadOnlySpan<byte> json, string key) => Decode(json, Context.IpamHandle, key);

    public static IpamConfig DecodeConfig(ReadOnlySpan<byte> json, string key) => Decode(json, Context.IpamConfig, key);

    public static IpPoolResource DecodePool(ReadOnlySpan<byte> json, string key) => Decode(json, Context.IpPoolResource, key);

    public static NodeResource DecodeNode(ReadOnlySpan<byte> json, string key) => Decode(json, Context.NodeResource, key);

    public static CheckReport DecodeReport(ReadOnlySpan<byte> json, string source) => Decode(json, Context.CheckReport, source);

    private static T Decode<T>(ReadOnlySpan<byte> json, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info, string key)
    {
        try
        {
            return JsonSerializer.Deserialize(json, info) ?? throw new IpamException(IpamErrorKind.Corrupt, $"{key}: value is JSON null");
        }
        catch (JsonException e)
        {
            throw new IpamException(IpamErrorKind.Corrupt, $"{key}: value is not a valid {typeof(T).Name}: {e.Message}", e);
        }
    }
}

/// <summary>Writes a string-keyed map with its keys in ordinal order, as Go's encoder does ("0" &lt; "10" &lt; "2").</summary>
public sealed class SortedMapConverter<TValue> : JsonConverter<Dictionary<string, TValue>>
{
    public override Dictionary<string, TValue>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null)
        {
            return null;
        }

        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException($"expected an object, found {reader.TokenType}");
        }

        var map = new Dictionary<string, TValue>(StringComparer.Ordinal);
        var info = (System.Text.Json.Serialization.Metadata.JsonTypeInfo<TValue>)options.GetTypeInfo(typeof(TValue));
        while (reader.Read())
        {
            if (reader.TokenType == JsonTokenType.EndObject)
            {
                return map;
            }

            string key = reader.GetString()!;
            reader.Read();
            map[key] = JsonSerializer.Deserialize(ref reader, info)!;
        }

        throw new JsonException("unterminated object");
    }

    public override void Write(Utf8JsonWriter writer, Dictionary<string, TValue> value, JsonSerializerOptions options)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(value);
        var info = (System.Text.Json.Serialization.Metadata.JsonTypeInfo<TValue>)options.GetTypeInfo(typeof(TValue));
        var keys = value.Keys.ToArray();
        Array.Sort(keys, StringComparer.Ordinal);
        writer.WriteStartObject();
        foreach (var key in keys)
        {
            writer.WritePropertyName(key);
            JsonSerializer.Serialize(writer, value[key], info);
        }

        writer.WriteEndObject();
    }
}
