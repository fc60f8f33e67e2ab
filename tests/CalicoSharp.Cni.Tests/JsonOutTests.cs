using System.Text;
using System.Text.Json;
using CalicoSharp.Cni;

namespace CalicoSharp.Cni.Tests;

/// <summary>The plugin's JSON escaping: what JSON requires, and UTF-8 for the rest (as the relaxed encoder).</summary>
public class JsonOutTests
{
    [Fact]
    public void Only_what_JSON_requires_is_escaped_and_the_text_round_trips()
    {
        const string msg = "a \"quoted\" path\\x\nline\ttab \u0001 café 名前 <&> \u2028 \U0001F600";
        byte[] json = Plugin.ErrorJson("1.0.0", 100, msg, null);
        string text = Encoding.UTF8.GetString(json);
        Assert.Contains("a \\\"quoted\\\" path\\\\x\\nline\\ttab \\u0001 café 名前 <&> \\u2028 \U0001F600", text, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(json);
        Assert.Equal(msg, doc.RootElement.GetProperty("msg").GetString());
    }
}
