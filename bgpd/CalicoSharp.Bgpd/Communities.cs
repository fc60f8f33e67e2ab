using System.Globalization;
using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd;

/// <summary>
/// One of Calico's bgpconfigurations <c>prefixAdvertisements</c>, resolved: the standard (RFC 1997) and large
/// (RFC 8092) communities attached to every route this node originates (its blocks, its borrowed addresses, the
/// file's <c>originate</c>) inside <see cref="Cidr"/>. As Calico's BIRD filter (<c>if (net ~ cidr)</c>), a route
/// matches when it is the CIDR or inside it; the communities of every matching entry add up.
/// </summary>
internal sealed record CommunityRule(Prefix Cidr, uint[] Standard, LargeCommunity[] Large)
{
    /// <summary>Resolves names through <paramref name="names"/> (the <c>communities</c> list); anything else must be a
    /// literal value. A bad CIDR, name or value is a <see cref="ConfigException"/> that says which.</summary>
    public static CommunityRule Resolve(PrefixAdvertisement pa, IReadOnlyDictionary<string, string> names)
    {
        ArgumentNullException.ThrowIfNull(pa);
        ArgumentNullException.ThrowIfNull(names);
        Prefix cidr = DaemonConfig.ParsePrefix(pa.Cidr, "prefixAdvertisements cidr");
        var standard = new List<uint>();
        var large = new List<LargeCommunity>();
        foreach (string c in pa.Communities)
        {
            string value = names.TryGetValue(c, out string? named) ? named : c;
            string what = named is null ? $"prefixAdvertisements {pa.Cidr}: community '{c}'" : $"prefixAdvertisements {pa.Cidr}: community '{c}' (value '{value}')";
            Parse(value, what, standard, large);
        }
        return new CommunityRule(cidr, [.. standard.Distinct()], [.. large.Distinct()]);
    }

    /// <summary>"aa:nn" (two 16-bit numbers) is a standard community, "aa:nn:mm" (three 32-bit numbers) a large one.</summary>
    internal static void Parse(string value, string what, List<uint> standard, List<LargeCommunity> large)
    {
        string[] parts = value.Split(':');
        if (parts.Length == 2 && ushort.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ushort aa)
            && ushort.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out ushort nn))
        {
            standard.Add(((uint)aa << 16) | nn);
            return;
        }
        if (parts.Length == 3 && uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out uint g)
            && uint.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out uint l1)
            && uint.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out uint l2))
        {
            large.Add(new LargeCommunity(g, l1, l2));
            return;
        }
        throw new ConfigException($"{what} is neither a name from communities nor a value: a standard community is aa:nn (0-65535 each), a large one aa:nn:mm (0-4294967295 each)");
    }

    /// <summary>The attributes for a route this node originates: null (plain) when no rule matches it.</summary>
    public static PathAttributes? AttributesFor(IReadOnlyList<CommunityRule> rules, Prefix prefix)
    {
        List<uint>? standard = null;
        List<LargeCommunity>? large = null;
        foreach (CommunityRule r in rules)
        {
            if (r.Cidr.Family == prefix.Family && r.Cidr.Contains(prefix))
            {
                (standard ??= []).AddRange(r.Standard);
                (large ??= []).AddRange(r.Large);
            }
        }
        if (standard is null || large is null || (standard.Count == 0 && large.Count == 0))
        {
            return null;
        }
        return new PathAttributes { Origin = Origin.Igp, Communities = [.. standard.Distinct()], LargeCommunities = [.. large.Distinct()] };
    }

    public static string Describe(PathAttributes a)
    {
        ArgumentNullException.ThrowIfNull(a);
        IEnumerable<string> all = a.Communities.Select(c => $"{c >> 16}:{c & 0xFFFF}")
            .Concat(a.LargeCommunities.Select(l => $"{l.GlobalAdmin}:{l.Local1}:{l.Local2}"));
        return "communities " + string.Join(' ', all);
    }
}
