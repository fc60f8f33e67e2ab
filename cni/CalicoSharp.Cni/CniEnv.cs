namespace CalicoSharp.Cni;

/// <summary>The CNI_* environment of one invocation, validated for the command.</summary>
public sealed class CniEnv
{
    public required string Command { get; init; }

    public string ContainerId { get; init; } = string.Empty;

    public string Netns { get; init; } = string.Empty;

    public string IfName { get; init; } = string.Empty;

    public string Path { get; init; } = string.Empty;

    public string RawArgs { get; init; } = string.Empty;

    /// <summary>CNI_ARGS as key/value pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).</summary>
    public IReadOnlyDictionary<string, string> Args { get; init; } = new Dictionary<string, string>();

    public string? PodNamespace => Args.GetValueOrDefault("K8S_POD_NAMESPACE");

    public string? PodName => Args.GetValueOrDefault("K8S_POD_NAME");

    public static readonly string[] Commands = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"];

    public static CniEnv Parse(IReadOnlyDictionary<string, string> env)
    {
        ArgumentNullException.ThrowIfNull(env);
        var command = env.GetValueOrDefault("CNI_COMMAND");
        if (string.IsNullOrEmpty(command))
        {
            throw new CniException(CniCode.InvalidEnvironment, "CNI_COMMAND is not set", "expected one of " + string.Join(", ", Commands));
        }

        if (!Commands.Contains(command))
        {
            throw new CniException(CniCode.InvalidEnvironment, $"unknown CNI_COMMAND '{command}'", "expected one of " + string.Join(", ", Commands));
        }

        var e = new CniEnv
        {
            Command = command,
            ContainerId = env.GetValueOrDefault("CNI_CONTAINERID") ?? string.Empty,
            Netns = env.GetValueOrDefault("CNI_NETNS") ?? string.Empty,
            IfName = env.GetValueOrDefault("CNI_IFNAME") ?? string.Empty,
            Path = env.GetValueOrDefault("CNI_PATH") ?? string.Empty,
            RawArgs = env.GetValueOrDefault("CNI_ARGS") ?? string.Empty,
            Args = ParseArgs(env.GetValueOrDefault("CNI_ARGS")),
        };

        // Spec: ADD, DEL and CHECK need CNI_CONTAINERID and CNI_IFNAME; ADD and CHECK need CNI_NETNS.
        if (command is "ADD" or "DEL" or "CHECK")
        {
            Require(e.ContainerId, "CNI_CONTAINERID");
            Require(e.IfName, "CNI_IFNAME");
            if (!IsValidContainerId(e.ContainerId))
            {
                throw new CniException(CniCode.InvalidEnvironment, $"invalid CNI_CONTAINERID '{e.ContainerId}'",
                    "it must start with a letter or digit and hold only letters, digits, '_', '.' and '-'");
            }

            if (!IsValidIfName(e.IfName))
            {
                throw new CniException(CniCode.InvalidEnvironment, $"invalid CNI_IFNAME '{e.IfName}'",
                    "an interface name is 1-15 characters, not '.' or '..', without '/', ':' or white space");
            }
        }

        if (command is "ADD" or "CHECK")
        {
            Require(e.Netns, "CNI_NETNS");
        }

        return e;
    }

    private static void Require(string value, string name)
    {
        if (string.IsNullOrEmpty(value))
        {
            throw new CniException(CniCode.InvalidEnvironment, $"{name} is not set");
        }
    }

    internal static bool IsValidContainerId(string id) =>
        id.Length > 0 && char.IsAsciiLetterOrDigit(id[0]) && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-');

    internal static bool IsValidIfName(string name) =>
        name.Length is > 0 and <= 15 && name is not ("." or "..") && !name.Any(c => c is '/' or ':' || char.IsWhiteSpace(c));

    private static Dictionary<string, string> ParseArgs(string? text)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in (text ?? string.Empty).Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new CniException(CniCode.InvalidEnvironment, $"CNI_ARGS entry '{pair}' is not KEY=VALUE");
            }

            map[pair[..eq]] = pair[(eq + 1)..];
        }

        return map;
    }
}
