namespace CalicoSharp.Bgp;

/// <summary>Why the best path beat the next one (RFC 4271 §9.1.2.2, RFC 4456 §9), for people and the CLI.</summary>
public enum DecisionReason : byte
{
    OnlyPath,
    LocallyOriginated,
    NotStale,
    LocalPref,
    AsPathLength,
    Origin,
    Med,
    EbgpOverIbgp,
    RouterId,
    ClusterListLength,
    PeerAddress,
}

/// <summary>A path to a prefix as one neighbour (or this speaker, <see cref="Peer"/> null) announced it.</summary>
public readonly struct RoutePath
{
    internal const byte FilteredFlag = 1;
    internal const byte StaleFlag = 2;

    internal RoutePath(BgpPeer? peer, PathAttributes attributes, byte flags)
    {
        Peer = peer;
        Attributes = attributes;
        Flags = flags;
    }

    public BgpPeer? Peer { get; }

    public PathAttributes Attributes { get; }

    internal byte Flags { get; }

    /// <summary>Rejected by import policy: kept (Adj-RIB-In) but never selected.</summary>
    public bool Filtered => (Flags & FilteredFlag) != 0;

    /// <summary>From a peer in graceful restart, waiting for it to announce again (RFC 4724 §4.2).</summary>
    public bool Stale => (Flags & StaleFlag) != 0;

    public bool IsLocal => Peer is null;

    internal RoutePath WithFlags(byte flags) => new(Peer, Attributes, flags);
}

/// <summary>
/// One prefix in the RIB: every peer's path for it in preference order (the Adj-RIB-In entries for the
/// prefix; the first unfiltered one is the Loc-RIB best) and, per peer, whether it is advertised to and
/// queued for that peer (the Adj-RIB-Out state). Built to be small: the first path lives in the entry
/// itself, other paths in a short array; an IPv4 entry is 64 bytes.
/// </summary>
public class RouteEntry
{
    private readonly ulong _lo;
    private BgpPeer? _peer0;
    private PathAttributes? _attrs0;
    private RoutePath[]? _more;
    private readonly byte _length;
    private readonly Afi _family;
    private byte _flags0;
    private byte _count;

    /// <summary>Advertised bits (low 32) and queued bits (high 32) for peers 0-31; the RIB keeps the rest.</summary>
    internal ulong Bits;

    internal RouteEntry(ulong lo, byte length, Afi family)
    {
        _lo = lo;
        _length = length;
        _family = family;
    }

    internal static RouteEntry Create(Prefix p) => p.Family == Afi.IPv6 ? new RouteEntry6(p) : new RouteEntry(p.Lo, p.Length, p.Family);

    public Prefix Prefix => _family == Afi.IPv6 ? Prefix.V6(new UInt128(((RouteEntry6)this).Hi, _lo), _length) : Prefix.V4((uint)_lo, _length);

    internal bool Matches(in Prefix p) => p.Lo == _lo && p.Length == _length && p.Family == _family && (_family != Afi.IPv6 || ((RouteEntry6)this).Hi == p.Hi);

    public DecisionReason Reason { get; internal set; }

    public int PathCount => _count;

    internal bool IsEmpty => _count == 0;

    public RoutePath PathAt(int i)
    {
        if ((uint)i >= _count)
        {
            throw new ArgumentOutOfRangeException(nameof(i));
        }
        return i == 0 ? new RoutePath(_peer0, _attrs0!, _flags0) : _more![i - 1];
    }

    /// <summary>The best path, or null when no path is usable.</summary>
    public RoutePath? Best => _count > 0 && (_flags0 & RoutePath.FilteredFlag) == 0 ? new RoutePath(_peer0, _attrs0!, _flags0) : null;

    internal bool HasBest => _count > 0 && (_flags0 & RoutePath.FilteredFlag) == 0;

    internal BgpPeer? BestPeer => _peer0;

    internal PathAttributes? BestAttributes => _attrs0;

    public IEnumerable<RoutePath> Paths
    {
        get
        {
            for (int i = 0; i < _count; i++)
            {
                yield return PathAt(i);
            }
        }
    }

    internal int IndexOf(BgpPeer? peer)
    {
        if (_count == 0)
        {
            return -1;
        }
        if (_peer0 == peer)
        {
            return 0;
        }
        for (int i = 1; i < _count; i++)
        {
            if (_more![i - 1].Peer == peer)
            {
                return i;
            }
        }
        return -1;
    }

    private void Set(int i, RoutePath p)
    {
        if (i == 0)
        {
            _peer0 = p.Peer;
            _attrs0 = p.Attributes;
            _flags0 = p.Flags;
        }
        else
        {
            _more![i - 1] = p;
        }
    }

    internal RoutePath RemoveAt(int i)
    {
        RoutePath removed = PathAt(i);
        for (int k = i; k < _count - 1; k++)
        {
            Set(k, PathAt(k + 1));
        }
        _count--;
        if (_count == 0)
        {
            _peer0 = null;
            _attrs0 = null;
            _flags0 = 0;
        }
        if (_count <= 1)
        {
            _more = null;
        }
        else
        {
            _more![_count - 1] = default;
        }
        return removed;
    }

    /// <summary>Puts the path in its place in preference order (filtered paths last).</summary>
    internal void Insert(RoutePath p)
    {
        int at = 0;
        while (at < _count && Better(PathAt(at), p))
        {
            at++;
        }
        if (_count >= 1)
        {
            if (_more is null)
            {
                _more = new RoutePath[2];
            }
            else if (_more.Length < _count)
            {
                Array.Resize(ref _more, _more.Length * 2);
            }
        }
        for (int k = _count; k > at; k--)
        {
            Set(k, PathAt(k - 1));
        }
        _count++;
        Set(at, p);
    }

    internal void SetFlags(int i, byte flags) => Set(i, PathAt(i).WithFlags(flags));

    private static bool Better(RoutePath a, RoutePath b)
    {
        if (a.Filtered != b.Filtered)
        {
            return !a.Filtered;
        }
        return Decision.Compare(a, b, multipath: false).Result <= 0;
    }

    public override string ToString() => Prefix.ToString();
}

/// <summary>An IPv6 entry: the upper 64 bits of the address in addition.</summary>
internal sealed class RouteEntry6 : RouteEntry
{
    public RouteEntry6(Prefix p)
        : base(p.Lo, p.Length, Afi.IPv6)
    {
        Hi = p.Hi;
    }

    public ulong Hi { get; }
}

/// <summary>
/// Open-addressing hash table of route entries by prefix: one reference per slot (no per-entry node),
/// linear probing with backward-shift deletion, Fibonacci hashing, at most 3/4 full.
/// </summary>
internal sealed class PrefixTable
{
    private RouteEntry?[] _slots = new RouteEntry?[16];
    private int _shift = 60;

    public int Count { get; private set; }

    private int Index(in Prefix p) => (int)(((ulong)(uint)p.GetHashCode() * 0x9E3779B97F4A7C15UL) >> _shift);

    public RouteEntry? Find(in Prefix p)
    {
        RouteEntry?[] slots = _slots;
        int mask = slots.Length - 1;
        for (int i = Index(p); ; i = (i + 1) & mask)
        {
            RouteEntry? e = slots[i];
            if (e is null || e.Matches(p))
            {
                return e;
            }
        }
    }

    public void Add(RouteEntry entry)
    {
        if ((Count + 1) * 4 > _slots.Length * 3)
        {
            Grow();
        }
        Place(entry);
        Count++;
    }

    private void Place(RouteEntry entry)
    {
        int mask = _slots.Length - 1;
        int i = Index(entry.Prefix);
        while (_slots[i] is not null)
        {
            i = (i + 1) & mask;
        }
        _slots[i] = entry;
    }

    private void Grow()
    {
        RouteEntry?[] old = _slots;
        _slots = new RouteEntry?[old.Length * 2];
        _shift--;
        foreach (RouteEntry? e in old)
        {
            if (e is not null)
            {
                Place(e);
            }
        }
    }

    public bool Remove(RouteEntry entry)
    {
        RouteEntry?[] slots = _slots;
        int mask = slots.Length - 1;
        Prefix p = entry.Prefix;
        int i = Index(p);
        while (true)
        {
            RouteEntry? e = slots[i];
            if (e is null)
            {
                return false;
            }
            if (ReferenceEquals(e, entry))
            {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward-shift deletion: move later members of the probe run into the hole when their home allows it.
        int hole = i;
        for (int j = (hole + 1) & mask; slots[j] is { } next; j = (j + 1) & mask)
        {
            int home = Index(next.Prefix);
            bool movable = hole <= j ? home <= hole || home > j : home <= hole && home > j;
            if (movable)
            {
                slots[hole] = next;
                hole = j;
            }
        }
        slots[hole] = null;
        Count--;
        return true;
    }

    public IEnumerable<RouteEntry> All
    {
        get
        {
            RouteEntry?[] slots = _slots;
            foreach (RouteEntry? e in slots)
            {
                if (e is not null)
                {
                    yield return e;
                }
            }
        }
    }
}
