using System.Globalization;
using System.Text.Json;

namespace CalicoSharp.Cni;

/// <summary>The network configuration on stdin, with Calico's field names.</summary>
public sealed class NetConf
{
    public static readonly string[] SupportedVersions = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

    public required string CniVersion { get; init; }

    public required string Name { get; init; }

    public required string Type { get; init; }

    public int Mtu { get; init; } = 1500;

    public required IpamConf Ipam { get; init; }

    public IReadOnlyList<string> EtcdEndpoints { get; init; } = [];

    public TimeSpan EtcdTimeout { get; init; } = TimeSpan.FromSeconds(5);

    public string? NodeName { get; init; }

    public string NodeNameFile { get; init; } = "/var/lib/calico/nodename";

    /// <summary>The node's bgpd control socket, asked to allocate and release first; "" never asks.</summary>
    public string BgpdSocket { get; init; } = Proto.ControlSocket.Default;

    public string LogLevel { get; init; } = "info";

    public string? LogFilePath { get; init; }

    public CniResult? PrevResult { get; init; }

    /// <summary>GC: the attachments that are still valid (container id, interface), or null when the
    /// runtime sent none (then GC releases nothing).</summary>
    public IReadOnlyList<(string ContainerId, string IfName)>? ValidAttachments { get; init; }

    /// <summary>The bytes as received, passed on unchanged to a delegated IPAM plugin.</summary>
    public required byte[] Raw { get; init; }

    /// <summary>Parses and validates a network config. <paramref name="requireIpam"/>: the CNI plugin needs
    /// an ipam section; VERSION does not.</summary>
    public static NetConf Parse(byte[] stdin, bool requireIpam = true)
    {
        ArgumentNullException.ThrowIfNull(stdin);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(stdin);
        }
        catch (JsonException e)
        {
            throw new CniException(CniCode.DecodingFailure, "the network config on stdin is not valid JSON", e.Message);
        }

        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new CniException(CniCode.DecodingFailure, "the network config on stdin is not a JSON object");
            }

            string version = Str(root, "cniVersion") ?? throw Invalid("cniVersion is missing");
            if (!SupportedVersions.Contains(version))
            {
                throw new CniException(CniCode.IncompatibleVersion, $"CNI version {version} is not supported",
                    "supported versions: " + string.Join(", ", SupportedVersions));
            }

            var ipam = root.TryGetProperty("ipam", out var ipamEl) && ipamEl.ValueKind == JsonValueKind.Object
                ? IpamConf.Parse(ipamEl)
                : requireIpam ? throw Invalid("the ipam section is missing") : new IpamConf { Type = string.Empty };

            int mtu = 1500;
            if (root.TryGetProperty("mtu", out var mtuEl))
            {
                if (!mtuEl.TryGetInt32(out mtu) || mtu < 68 || mtu > 65535)
                {
                    throw Invalid($"mtu {mtuEl.GetRawText()} is not a number from 68 to 65535");
                }
            }

            double timeout = 5;
            if (root.TryGetProperty("etcd_timeout", out var tEl) && (!tEl.TryGetDouble(out timeout) || timeout <= 0 || timeout > 300))
            {
                throw Invalid($"etcd_timeout {tEl.GetRawText()} is not a number of seconds from 0 to 300");
            }

            var endpoints = Str(root, "etcd_endpoints") ?? Environment.GetEnvironmentVariable("ETCD_ENDPOINTS") ?? string.Empty;
            return new NetConf
            {
                CniVersion = version,
                Name = Str(root, "name") is { Length: > 0 } n ? ValidName(n) : throw Invalid("name is missing"),
                Type = Str(root, "type") ?? throw Invalid("type is missing"),
                Mtu = mtu,
                Ipam = ipam,
                EtcdEndpoints = endpoints.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                EtcdTimeout = TimeSpan.FromSeconds(timeout),
                NodeName = Str(root, "nodename"),
                NodeNameFile = Str(root, "nodename_file") ?? "/var/lib/calico/nodename",
                BgpdSocket = Str(root, "bgpd_socket") ?? Proto.ControlSocket.Default,
                LogLevel = (Str(root, "log_level") ?? "info").ToLowerInvariant(),
                LogFilePath = Str(root, "log_file_path"),
                PrevResult = root.TryGetProperty("prevResult", out var prev) && prev.ValueKind == JsonValueKind.Object ? CniResult.Parse(prev) : null,
                ValidAttachments = Attachments(root),
                Raw = stdin,
            };
        }
    }

    private static string ValidName(string name) =>
        name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-') && char.IsAsciiLetterOrDigit(name[0])
            ? name
            : throw Invalid($"network name '{name}' must start with a letter or digit and hold only letters, digits, '_', '.' and '-'");

    private static List<(string, string)>? Attachments(JsonElement root)
    {
        foreach (var key in new[] { "cni.dev/valid-attachments", "cni.dev/attachments" })
        {
            if (root.TryGetProperty(key, out var list))
            {
                if (list.ValueKind != JsonValueKind.Array)
                {
                    throw Invalid($"{key} is not a list");
                }

                var result = new List<(string, string)>();
                foreach (var a in list.EnumerateArray())
                {
                    result.Add((Str(a, "containerID") ?? throw Invalid($"an entry of {key} has no containerID"), Str(a, "ifname") ?? string.Empty));
                }

                return result;
            }
        }

        return null;
    }

    internal static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v)
            ? v.ValueKind switch
            {
                JsonValueKind.String => v.GetString(),
                JsonValueKind.Null => null,
                _ => throw Invalid($"{name} must be a string, not {v.ValueKind.ToString().ToLowerInvariant()}"),
            }
            : null;

    internal static CniException Invalid(string message) => new(CniCode.InvalidConfig, "invalid network config: " + message);
}

/// <summary>The ipam section: Calico's fields (assign_ipv4 and assign_ipv6 as Calico writes them, strings
/// "true"/"false", or JSON booleans).</summary>
public sealed class IpamConf
{
    public required string Type { get; init; }

    public bool AssignIpv4 { get; init; } = true;

    public bool AssignIpv6 { get; init; }

    public IReadOnlyList<string> Ipv4Pools { get; init; } = [];

    public IReadOnlyList<string> Ipv6Pools { get; init; } = [];

    public static IpamConf Parse(JsonElement e)
    {
        var type = NetConf.Str(e, "type");
        if (string.IsNullOrEmpty(type))
        {
            throw NetConf.Invalid("ipam.type is missing");
        }

        if (type.Contains('/', StringComparison.Ordinal) || type.Contains("..", StringComparison.Ordinal))
        {
            throw NetConf.Invalid($"ipam.type '{type}' is not a plugin name");
        }

        var conf = new IpamConf
        {
            Type = type,
            AssignIpv4 = Bool(e, "assign_ipv4") ?? true,
            AssignIpv6 = Bool(e, "assign_ipv6") ?? false,
            Ipv4Pools = List(e, "ipv4_pools"),
            Ipv6Pools = List(e, "ipv6_pools"),
        };
        if (type == Plugin.IpamType && !conf.AssignIpv4 && !conf.AssignIpv6)
        {
            throw NetConf.Invalid("ipam assigns no address: assign_ipv4 and assign_ipv6 are both false");
        }

        return conf;
    }

    private static bool? Bool(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            JsonValueKind.String when bool.TryParse(v.GetString(), out var b) => b,
            _ => throw NetConf.Invalid($"ipam.{name} must be true or false (or \"true\"/\"false\"), not {v.GetRawText()}"),
        };
    }

    private static List<string> List(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return [];
        }

        if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.String))
        {
            throw NetConf.Invalid($"ipam.{name} must be a list of pool names or CIDRs");
        }

        return [.. v.EnumerateArray().Select(x => x.GetString()!)];
    }
}

internal static class Inv
{
    public static string S(int v) => v.ToString(CultureInfo.InvariantCulture);
}
