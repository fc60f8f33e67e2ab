using System.Collections;
using CalicoSharp.Cni;

// The CNI process boundary, kept thin: environment, stdin and stdout go to the dispatcher.
var env = new Dictionary<string, string>(StringComparer.Ordinal);
foreach (DictionaryEntry e in Environment.GetEnvironmentVariables())
{
    env[(string)e.Key] = (string?)e.Value ?? string.Empty;
}

using var stdin = Console.OpenStandardInput();
using var buffer = new MemoryStream();
await stdin.CopyToAsync(buffer).ConfigureAwait(false);
using var stdout = Console.OpenStandardOutput();
return await Plugin.RunAsync(PluginKind.Network, env, buffer.ToArray(), stdout).ConfigureAwait(false);
