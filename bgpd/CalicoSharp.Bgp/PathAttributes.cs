using System.Text;

namespace CalicoSharp.Bgp;

/// <summary>ORIGIN values, RFC 4271 §5.1.1.</summary>
public enum Origin : byte
{
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// <summary>AS_PATH segment types, RFC 4271 §4.3 and RFC 5065.</summary>
public enum SegmentType : byte
{
    AsSet = 1,
    AsSequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

public readonly record struct AsPathSegment(SegmentType Type, uint[] Asns);

/// <summary>An AS_PATH held with 4-octet AS numbers. Immutable; compares by value.</summary>
public sealed class AsPath : IEquatable<AsPath>
{
    public static readonly AsPath Empty = new([]);

    public AsPath(AsPathSegment[] segments)
    {
        Segments = segments;
    }

    public AsPathSegment[] Segments { get; }

    /// <summary>RFC 4271 §9.1.2.2 a: an AS_SET counts as one, confederation segments count as none.</summary>
    public int Length
    {
        get
        {
            int n = 0;
            foreach (AsPathSegment s in Segments)
            {
                n += s.Type switch
                {
                    SegmentType.AsSequence => s.Asns.Length,
                    SegmentType.AsSet => 1,
                    _ => 0,
                };
            }
            return n;
        }
    }

    /// <summary>The neighbour AS: the first AS of a leading AS_SEQUENCE (RFC 4271 §9.1.2.2 c), or 0.</summary>
    public uint FirstAs => Segments.Length > 0 && Segments[0].Type == SegmentType.AsSequence && Segments[0].Asns.Length > 0 ? Segments[0].Asns[0] : 0;

    public bool Contains(uint asn)
    {
        foreach (AsPathSegment s in Segments)
        {
            if (Array.IndexOf(s.Asns, asn) >= 0)
            {
                return true;
            }
        }
        return false;
    }

    public bool HasLargeAsn()
    {
        foreach (AsPathSegment s in Segments)
        {
            foreach (uint a in s.Asns)
            {
                if (a > ushort.MaxValue)
                {
                    return true;
                }
            }
        }
        return false;
    }

    /// <summary>RFC 4271 §5.1.2: prepend to the first AS_SEQUENCE, or open a new one (at most 255 per segment).</summary>
    public AsPath Prepend(uint asn)
    {
        if (Segments.Length > 0 && Segments[0].Type == SegmentType.AsSequence && Segments[0].Asns.Length < 255)
        {
            uint[] first = new uint[Segments[0].Asns.Length + 1];
            first[0] = asn;
            Segments[0].Asns.CopyTo(first, 1);
            AsPathSegment[] copy = (AsPathSegment[])Segments.Clone();
            copy[0] = new AsPathSegment(SegmentType.AsSequence, first);
            return new AsPath(copy);
        }
        AsPathSegment[] segs = new AsPathSegment[Segments.Length + 1];
        segs[0] = new AsPathSegment(SegmentType.AsSequence, [asn]);
        Segments.CopyTo(segs, 1);
        return new AsPath(segs);
    }

    public static AsPath Sequence(params uint[] asns) => asns.Length == 0 ? Empty : new AsPath([new AsPathSegment(SegmentType.AsSequence, asns)]);

    public bool Equals(AsPath? other)
    {
        if (ReferenceEquals(this, other))
        {
            return true;
        }
        if (other is null || other.Segments.Length != Segments.Length)
        {
            return false;
        }
        for (int i = 0; i < Segments.Length; i++)
        {
            if (Segments[i].Type != other.Segments[i].Type || !Segments[i].Asns.AsSpan().SequenceEqual(other.Segments[i].Asns))
            {
                return false;
            }
        }
        return true;
    }

    public override bool Equals(object? obj) => Equals(obj as AsPath);

    public override int GetHashCode()
    {
        HashCode h = default;
        foreach (AsPathSegment s in Segments)
        {
            h.Add((byte)s.Type);
            h.AddBytes(System.Runtime.InteropServices.MemoryMarshal.AsBytes(s.Asns.AsSpan()));
        }
        return h.ToHashCode();
    }

    public override string ToString()
    {
        var sb = new StringBuilder();
        foreach (AsPathSegment s in Segments)
        {
            if (sb.Length > 0)
            {
                sb.Append(' ');
            }
            (string open, string close) = s.Type switch
            {
                SegmentType.AsSet => ("{", "}"),
                SegmentType.ConfedSequence => ("(", ")"),
                SegmentType.ConfedSet => ("[", "]"),
                _ => ("", ""),
            };
            sb.Append(open).AppendJoin(' ', s.Asns).Append(close);
        }
        return sb.ToString();
    }
}

/// <summary>RFC 8092 large community.</summary>
public readonly record struct LargeCommunity(uint GlobalAdmin, uint Local1, uint Local2)
{
    public override string ToString() => $"({GlobalAdmin},{Local1},{Local2})";
}

/// <summary>An attribute passed through unread (optional transitive) or kept for display.</summary>
public readonly record struct RawAttribute(byte Flags, byte Code, byte[] Value)
{
    public bool Equals(RawAttribute other) => Flags == other.Flags && Code == other.Code && Value.AsSpan().SequenceEqual(other.Value);

    public override int GetHashCode() => HashCode.Combine(Flags, Code, Value.Length);
}

/// <summary>
/// The path attributes of a route, decoded, immutable, compared by value so that equal sets are interned
/// once (<see cref="AttributeInterner"/>) and shared by every prefix that carries them. The next hop is the
/// one for the route's family (classic NEXT_HOP for IPv4, the MP_REACH_NLRI next hop for IPv6).
/// </summary>
public sealed record PathAttributes
{
    private int _hash;

    public PathAttributes()
    {
    }

    /// <summary>Copy for <c>with</c>: values only, not the cached hash or the reference count.</summary>
    private PathAttributes(PathAttributes other)
    {
        Origin = other.Origin;
        AsPath = other.AsPath;
        NextHop = other.NextHop;
        LinkLocalNextHop = other.LinkLocalNextHop;
        Med = other.Med;
        LocalPref = other.LocalPref;
        AtomicAggregate = other.AtomicAggregate;
        Aggregator = other.Aggregator;
        Communities = other.Communities;
        LargeCommunities = other.LargeCommunities;
        OriginatorId = other.OriginatorId;
        ClusterList = other.ClusterList;
        Unknown = other.Unknown;
    }

    /// <summary>Routes that hold this interned set (RIB thread only).</summary>
    internal int References;

    public Origin Origin { get; init; } = Origin.Igp;

    public AsPath AsPath { get; init; } = AsPath.Empty;

    /// <summary>Next hop as a host prefix (/32 or /128); default when absent.</summary>
    public Prefix NextHop { get; init; }

    /// <summary>IPv6 link-local next hop (RFC 2545), when the peer sent one.</summary>
    public Prefix LinkLocalNextHop { get; init; }

    public uint? Med { get; init; }

    public uint? LocalPref { get; init; }

    public bool AtomicAggregate { get; init; }

    public (uint As, uint Address)? Aggregator { get; init; }

    public uint[] Communities { get; init; } = [];

    public LargeCommunity[] LargeCommunities { get; init; } = [];

    public uint? OriginatorId { get; init; }

    public uint[] ClusterList { get; init; } = [];

    /// <summary>Optional transitive attributes we do not know, passed on with the Partial bit set.</summary>
    public RawAttribute[] Unknown { get; init; } = [];

    public bool HasNextHop => NextHop.Family != 0;

    public bool Equals(PathAttributes? o)
    {
        if (ReferenceEquals(this, o))
        {
            return true;
        }
        if (o is null || GetHashCode() != o.GetHashCode())
        {
            return false;
        }
        return Origin == o.Origin && NextHop == o.NextHop && LinkLocalNextHop == o.LinkLocalNextHop && Med == o.Med
            && LocalPref == o.LocalPref && AtomicAggregate == o.AtomicAggregate && Aggregator == o.Aggregator
            && OriginatorId == o.OriginatorId && AsPath.Equals(o.AsPath)
            && Communities.AsSpan().SequenceEqual(o.Communities) && LargeCommunities.AsSpan().SequenceEqual(o.LargeCommunities)
            && ClusterList.AsSpan().SequenceEqual(o.ClusterList) && Unknown.AsSpan().SequenceEqual(o.Unknown);
    }

    public override int GetHashCode()
    {
        if (_hash != 0)
        {
            return _hash;
        }
        HashCode h = default;
        h.Add(Origin);
        h.Add(AsPath.GetHashCode());
        h.Add(NextHop);
        h.Add(LinkLocalNextHop);
        h.Add(Med);
        h.Add(LocalPref);
        h.Add(AtomicAggregate);
        h.Add(Aggregator);
        h.Add(OriginatorId);
        h.AddBytes(System.Runtime.InteropServices.MemoryMarshal.AsBytes(Communities.AsSpan()));
        h.Add(LargeCommunities.Length);
        h.Add(ClusterList.Length);
        h.Add(Unknown.Length);
        int v = h.ToHashCode();
        _hash = v == 0 ? 1 : v;
        return _hash;
    }

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.Append("origin ").Append(Origin switch { Origin.Igp => "igp", Origin.Egp => "egp", _ => "incomplete" });
        sb.Append(", as-path [").Append(AsPath).Append(']');
        if (HasNextHop)
        {
            sb.Append(", next-hop ").Append(NextHop.Address);
        }
        if (Med is { } med)
        {
            sb.Append(", med ").Append(med);
        }
        if (LocalPref is { } lp)
        {
            sb.Append(", local-pref ").Append(lp);
        }
        if (Communities.Length > 0)
        {
            sb.Append(", communities ").AppendJoin(' ', Communities.Select(c => $"{c >> 16}:{c & 0xFFFF}"));
        }
        if (LargeCommunities.Length > 0)
        {
            sb.Append(", large-communities ").AppendJoin(' ', LargeCommunities);
        }
        return sb.ToString();
    }
}

/// <summary>
/// Keeps one instance of each distinct attribute set: an UPDATE's attributes are looked up once and every
/// prefix of the UPDATE shares the result; a set goes when the last route holding it goes. RIB thread only.
/// </summary>
public sealed class AttributeInterner
{
    private readonly Dictionary<PathAttributes, PathAttributes> _set = [];

    public int Count => _set.Count;

    /// <summary>The shared instance equal to <paramref name="attributes"/> (no reference taken).</summary>
    public PathAttributes Intern(PathAttributes attributes)
    {
        ArgumentNullException.ThrowIfNull(attributes);
        if (_set.TryGetValue(attributes, out PathAttributes? existing))
        {
            return existing;
        }
        _set[attributes] = attributes;
        return attributes;
    }

    /// <summary>A route now holds <paramref name="attributes"/> (which must be interned).</summary>
    public static void AddReference(PathAttributes attributes) => attributes.References++;

    /// <summary>Drops a set that was interned but that no route took.</summary>
    public void ReleaseIfUnused(PathAttributes attributes)
    {
        if (attributes.References <= 0 && _set.TryGetValue(attributes, out PathAttributes? held) && ReferenceEquals(held, attributes))
        {
            _set.Remove(attributes);
        }
    }

    /// <summary>A route let go of <paramref name="attributes"/>; the last one removes the set.</summary>
    public void Release(PathAttributes attributes)
    {
        if (--attributes.References <= 0)
        {
            _set.Remove(attributes);
        }
    }
}
