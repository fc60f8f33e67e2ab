using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace CalicoSharp.Ctl;

/// <summary>Human tables and JSON documents, written without reflection (NativeAOT).</summary>
internal static class Output
{
    public static void Table(TextWriter w, IReadOnlyList<string> header, IEnumerable<IReadOnlyList<string>> rows)
    {
        var all = new List<IReadOnlyList<string>> { header };
        all.AddRange(rows);
        var widths = new int[header.Count];
        foreach (var r in all)
        {
            for (int i = 0; i < r.Count; i++)
            {
                widths[i] = Math.Max(widths[i], r[i].Length);
            }
        }

        var sb = new StringBuilder();
        foreach (var r in all)
        {
            sb.Clear();
            for (int i = 0; i < r.Count; i++)
            {
                sb.Append(i == r.Count - 1 ? r[i] : r[i].PadRight(widths[i] + 2));
            }

            w.WriteLine(sb.ToString().TrimEnd());
        }
    }

    public static void Json(TextWriter w, Action<Utf8JsonWriter> body)
    {
        using var ms = new MemoryStream();
        using (var jw = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            body(jw);
        }

        w.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
    }

    /// <summary>Writes {"name":[{...},...]}: one object per item, its fields written by <paramref name="fields"/>.</summary>
    public static void JsonList<T>(TextWriter w, string name, IEnumerable<T> items, Action<Utf8JsonWriter, T> fields) => Json(w, jw =>
    {
        jw.WriteStartObject();
        jw.WriteObjectArray(name, items, fields);
        jw.WriteEndObject();
    });

    /// <summary>Writes "name":["a","b",...].</summary>
    public static void WriteStringArray(this Utf8JsonWriter w, string name, IEnumerable<string> items)
    {
        w.WriteStartArray(name);
        foreach (string item in items)
        {
            w.WriteStringValue(item);
        }

        w.WriteEndArray();
    }

    /// <summary>Writes "name":[{...},...]: one object per item, its fields written by <paramref name="fields"/>.</summary>
    public static void WriteObjectArray<T>(this Utf8JsonWriter w, string name, IEnumerable<T> items, Action<Utf8JsonWriter, T> fields)
    {
        w.WriteStartArray(name);
        foreach (T item in items)
        {
            w.WriteStartObject();
            fields(w, item);
            w.WriteEndObject();
        }

        w.WriteEndArray();
    }

    /// <summary>Writes an unsigned 128-bit count as a JSON number.</summary>
    public static void WriteNumber(this Utf8JsonWriter w, string name, UInt128 value)
    {
        w.WritePropertyName(name);
        w.WriteRawValue(value.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }
}
