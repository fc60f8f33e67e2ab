using System.Text;
using System.Text.Json;
using CalicoSharp.Cni;

namespace CalicoSharp.Cni.Tests;

/// <summary>Runs the dispatcher in-process and reads back what it printed.</summary>
internal static class PluginHarness
{
    /// <summary>The CNI versions the plugin must serve, each test's theory data.</summary>
    public static TheoryData<string> Versions => ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

    public static async Task<(int Code, JsonElement Out)> RunAsync(PluginKind kind, Dictionary<string, string> env, string stdin, PluginOptions options)
    {
        using var stdout = new MemoryStream();
        int code = await Plugin.RunAsync(kind, env, Encoding.UTF8.GetBytes(stdin), stdout, options);
        return (code, Parse(stdout.ToArray()));
    }

    public static JsonElement Parse(byte[] output) => output.Length == 0 ? default : JsonDocument.Parse(output).RootElement.Clone();
}
