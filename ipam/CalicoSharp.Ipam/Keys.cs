namespace CalicoSharp.Ipam;

/// <summary>Calico's etcdv3 key layout (CIDRs in keys write '/' as '-').</summary>
public static class Keys
{
    public const string IpamRoot = "/calico/ipam/v2/";
    public const string Config = "/calico/ipam/v2/config";
    public const string HandlePrefix = "/calico/ipam/v2/handle/";
    public const string HostPrefix = "/calico/ipam/v2/host/";
    public const string ResourcePrefix = "/calico/resources/v3/projectcalico.org/";
    public const string PoolPrefix = ResourcePrefix + "ippools/";
    public const string NodePrefix = ResourcePrefix + "nodes/";

    public static string Version(bool v6) => v6 ? "ipv6" : "ipv4";

    public static string BlockPrefix(bool v6) => $"/calico/ipam/v2/assignment/{Version(v6)}/block/";

    public static string Block(IpNet cidr) => BlockPrefix(cidr.IsIPv6) + cidr.ToKeyString();

    public static string HostAffinityPrefix(string node) => $"{HostPrefix}{node}/";

    public static string HostAffinityPrefix(string node, bool v6) => $"{HostPrefix}{node}/{Version(v6)}/block/";

    public static string Affinity(string node, IpNet cidr) => HostAffinityPrefix(node, cidr.IsIPv6) + cidr.ToKeyString();

    public static string Handle(string handleId) => HandlePrefix + handleId;

    public static string Pool(string name) => PoolPrefix + name;

    public static string Node(string name) => NodePrefix + name;

    /// <summary>Parses a block key back to its CIDR.</summary>
    public static bool TryParseBlockKey(string key, out IpNet cidr)
    {
        cidr = default;
        int slash = key.LastIndexOf('/');
        return slash >= 0 && key.StartsWith("/calico/ipam/v2/assignment/", StringComparison.Ordinal) && IpNet.TryParseKey(key[(slash + 1)..], out cidr);
    }

    /// <summary>Parses /calico/ipam/v2/host/&lt;node&gt;/ipv4/block/&lt;cidr&gt;.</summary>
    public static bool TryParseAffinityKey(string key, out string node, out IpNet cidr)
    {
        node = string.Empty;
        cidr = default;
        if (!key.StartsWith(HostPrefix, StringComparison.Ordinal))
        {
            return false;
        }

        var parts = key[HostPrefix.Length..].Split('/');
        if (parts.Length != 4 || parts[2] != "block" || !IpNet.TryParseKey(parts[3], out cidr))
        {
            return false;
        }

        node = parts[0];
        return parts[1] == Version(cidr.IsIPv6);
    }

    public static string AffinityOf(string node) => "host:" + node;

    /// <summary>The node named by a block's affinity ("host:node1" → "node1"), or null.</summary>
    public static string? NodeOfAffinity(string? affinity) =>
        affinity is not null && affinity.StartsWith("host:", StringComparison.Ordinal) ? affinity[5..] : null;
}
