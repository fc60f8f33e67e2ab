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

    /// <summary>From a peer in graceful restart, waiting for it to announce again (RFC 4724 §4.2).</summary>
    public bool Stale => (Flags & StaleFlag) != 0;

    public bool IsLocal => Peer is null;

    internal RoutePath WithFlags(byte flags) => new(Peer, Attributes, flags);
}

/// <summary>
/// One prefix in the RIB, as a view of its slot: every peer's path for it that import policy accepted, in
/// preference order (the first is the Loc-RIB best). Routes the policy refused are not kept (see
/// <see cref="Rib.Reimport"/>). Valid on the speaker's loop until the RIB changes.
/// </summary>
public readonly struct RouteEntry : IEquatable<RouteEntry>
{
    private readonly RouteStore _store;

    internal RouteEntry(RouteStore store, int index)
    {
        _store = store;
        Index = index;
    }

    internal int Index { get; }

    public Prefix Prefix => _store.PrefixOf(Index);

    public DecisionReason Reason => (DecisionReason)_store.Reason[Index];

    public int PathCount => _store.Count[Index];

    public RoutePath PathAt(int i) => _store.PathAt(Index, i);

    /// <summary>The best path, or null when no path is usable.</summary>
    public RoutePath? Best => _store.HasBest(Index) ? _store.PathAt(Index, 0) : null;

    /// <summary>The paths to install: the best and those equal to it up to the tie-breakers (ECMP), at most the
    /// speaker's MaxPaths, one per next hop. What the kernel needs comes with the best-path event.</summary>
    public IReadOnlyList<RoutePath> Multipath
    {
        get
        {
            var result = new List<RoutePath>(1);
            if (Best is not { } best)
            {
                return result;
            }
            result.Add(best);
            for (int i = 1; i < PathCount && result.Count < _store.MaxPaths; i++)
            {
                RoutePath p = PathAt(i);
                if (Decision.Compare(best, p, multipath: true).Result != 0)
                {
                    break;
                }
                if (!result.Exists(r => r.Attributes.NextHop == p.Attributes.NextHop))
                {
                    result.Add(p);
                }
            }
            return result;
        }
    }

    public IEnumerable<RoutePath> Paths
    {
        get
        {
            for (int i = 0; i < PathCount; i++)
            {
                yield return PathAt(i);
            }
        }
    }

    public bool Equals(RouteEntry other) => ReferenceEquals(_store, other._store) && Index == other.Index;

    public override bool Equals(object? obj) => obj is RouteEntry e && Equals(e);

    public override int GetHashCode() => Index;

    public static bool operator ==(RouteEntry left, RouteEntry right) => left.Equals(right);

    public static bool operator !=(RouteEntry left, RouteEntry right) => !left.Equals(right);

    public override string ToString() => Prefix.ToString();
}

/// <summary>
/// The RIB's storage: one slot per prefix in parallel arrays (no object per route), an open-addressing
/// index over the slots, and a free list. A slot holds the prefix, its first path inline (peer, attributes,
/// flags), any further paths in a small array, the per-peer advertised/queued bits, the decision reason.
/// About 40 bytes per IPv4 route plus its share of the index and of its attribute set.
/// </summary>
internal sealed class RouteStore
{
    /// <summary>The prefix in one word: an IPv4 prefix as address | length &lt;&lt; 32 | 1 &lt;&lt; 40 (so one compare
    /// matches it), an IPv6 prefix's low 64 bits (with <see cref="Hi"/> and <see cref="Length"/>).</summary>
    public readonly NativeArray<ulong> Key = new(16);
    public NativeArray<ulong>? Hi;
    public readonly NativeArray<byte> Length = new(16);
    public readonly NativeArray<byte> FamilyOf = new(16);
    public readonly NativeArray<byte> Flags0 = new(16);
    public readonly NativeArray<byte> Count = new(16);
    public readonly NativeArray<byte> Reason = new(16);
    /// <summary>The first path's peer as its index + 1 (0: this speaker); see <see cref="PeerOf"/>.</summary>
    public readonly NativeArray<ushort> Peer0 = new(16);
    public PathAttributes?[] Attrs0 = new PathAttributes?[16];

    /// <summary>Paths after the first, for the few prefixes that have several.</summary>
    private readonly Dictionary<int, RoutePath[]> _more = [];
    private BgpPeer?[] _peers = new BgpPeer?[8];

    /// <summary>Advertised bits (low 32) and queued bits (high 32) for peers 0-31; the RIB keeps the rest.</summary>
    public readonly NativeArray<ulong> Bits = new(16);

    private readonly Stack<int> _free = new();
    private int _used;
    // Index entries: -1 empty, else a 5-bit tag of the prefix's hash above the slot number, so most probes that
    // pass other prefixes (every insert of a new prefix is a search that fails) never touch the key arrays.
    private const int SlotBits = 26;
    private const int SlotMask = (1 << SlotBits) - 1;
    private NativeArray<int> _index = NewIndex(16);
    private int _shift = 60;

    public int EntryCount { get; private set; }

    /// <summary>The most paths one prefix installs (the speaker's MaxPaths).</summary>
    public int MaxPaths { get; set; } = 16;

    private static NativeArray<int> NewIndex(int n)
    {
        NativeArray<int> a = new(n);
        a.AsSpan().Fill(-1);
        return a;
    }

    private static ulong KeyOf(in Prefix p) => p.Family == Afi.IPv6 ? p.Lo : p.Lo | ((ulong)p.Length << 32) | (1UL << 40);

    public Prefix PrefixOf(int i) => (Afi)FamilyOf[i] == Afi.IPv6 ? Prefix.V6(new UInt128(Hi![i], Key[i]), Length[i]) : Prefix.V4((uint)Key[i], Length[i]);

    private bool Matches(int i, ulong key, in Prefix p) =>
        Key[i] == key && (Afi)FamilyOf[i] == p.Family && (p.Family != Afi.IPv6 || (Hi![i] == p.Hi && Length[i] == p.Length));

    /// <summary>The prefix's hash from the stored key alone (an IPv4 key holds address, length and family; an IPv6
    /// one adds the high half and the length), so rehashing and removal need not rebuild the prefix.</summary>
    private static ulong Hash(ulong key, ulong hi, int v6Length)
    {
        ulong h = (key ^ (hi * 0xC2B2AE3D27D4EB4FUL) ^ ((ulong)v6Length << 56)) * 0x9E3779B97F4A7C15UL;
        return (h ^ (h >> 31)) * 0x9E3779B97F4A7C15UL;
    }

    private static ulong Hash(in Prefix p) => p.Family == Afi.IPv6 ? Hash(p.Lo, p.Hi, p.Length) : Hash(KeyOf(p), 0, 0);

    private ulong HashOf(int slot) => (Afi)FamilyOf[slot] == Afi.IPv6 ? Hash(Key[slot], Hi![slot], Length[slot]) : Hash(Key[slot], 0, 0);

    /// <summary>Home position: the hash's top bits. Tag: five low-middle bits, independent of the position.</summary>
    private int Position(ulong hash) => (int)(hash >> _shift);

    private static int Tagged(ulong hash, int slot) => (int)((hash >> 8) & 31) << SlotBits | slot;

    public int Find(in Prefix p)
    {
        NativeArray<int> idx = _index;
        int mask = idx.Length - 1;
        ulong key = KeyOf(p);
        ulong hash = Hash(p);
        int tag = Tagged(hash, 0);
        for (int h = Position(hash); ; h = (h + 1) & mask)
        {
            int e = idx[h];
            if (e < 0)
            {
                return -1;
            }
            if ((e & ~SlotMask) == tag && Matches(e & SlotMask, key, p))
            {
                return e & SlotMask;
            }
        }
    }

    public int Add(in Prefix p)
    {
        int i;
        if (_free.Count > 0)
        {
            i = _free.Pop();
        }
        else
        {
            if (_used == Key.Length)
            {
                if (_used > SlotMask / 2)
                {
                    throw new InvalidOperationException($"the RIB holds at most {SlotMask + 1:N0} prefixes");
                }
                GrowSlots();
            }
            i = _used++;
        }
        Key[i] = KeyOf(p);
        if (p.Family == Afi.IPv6)
        {
            Hi ??= new NativeArray<ulong>(Key.Length);
            Hi[i] = p.Hi;
        }
        Length[i] = p.Length;
        FamilyOf[i] = (byte)p.Family;
        Flags0[i] = 0;
        Count[i] = 0;
        Reason[i] = 0;
        Bits[i] = 0;
        if ((EntryCount + 1) * 4 > _index.Length * 3)
        {
            GrowIndex();
        }
        Place(i);
        EntryCount++;
        return i;
    }

    private void GrowSlots()
    {
        int n = Key.Length * 2;
        Key.Resize(n);
        Hi?.Resize(n);
        Length.Resize(n);
        FamilyOf.Resize(n);
        Flags0.Resize(n);
        Count.Resize(n);
        Reason.Resize(n);
        Peer0.Resize(n);
        Array.Resize(ref Attrs0, n);
        Bits.Resize(n);
    }

    private void Place(int i)
    {
        int mask = _index.Length - 1;
        ulong hash = HashOf(i);
        int h = Position(hash);
        while (_index[h] >= 0)
        {
            h = (h + 1) & mask;
        }
        _index[h] = Tagged(hash, i);
    }

    private void GrowIndex()
    {
        NativeArray<int> old = _index;
        _index = NewIndex(old.Length * 2);
        _shift--;
        foreach (int e in old.AsSpan())
        {
            if (e >= 0)
            {
                Place(e & SlotMask);
            }
        }
        old.Release();
    }

    /// <summary>Removes the slot from the index (backward-shift deletion) and frees it.</summary>
    public void Remove(int slot)
    {
        NativeArray<int> idx = _index;
        int mask = idx.Length - 1;
        int h = Position(HashOf(slot));
        for (; (idx[h] & SlotMask) != slot; h = (h + 1) & mask)
        {
            if (idx[h] < 0)
            {
                return; // not indexed
            }
        }
        int hole = h;
        for (int j = (hole + 1) & mask; idx[j] >= 0; j = (j + 1) & mask)
        {
            int home = Position(HashOf(idx[j] & SlotMask));
            bool movable = hole <= j ? home <= hole || home > j : home <= hole && home > j;
            if (movable)
            {
                idx[hole] = idx[j];
                hole = j;
            }
        }
        idx[hole] = -1;
        Peer0[slot] = 0;
        Attrs0[slot] = null;
        _more.Remove(slot);
        Count[slot] = 0;
        Bits[slot] = 0;
        EntryCount--;
        _free.Push(slot);
    }

    public IEnumerable<int> All
    {
        get
        {
            NativeArray<int> idx = _index;
            for (int h = 0; h < idx.Length; h++)
            {
                int e = idx[h];
                if (e >= 0)
                {
                    yield return e & SlotMask;
                }
                if (!ReferenceEquals(idx, _index))
                {
                    throw new InvalidOperationException("the RIB grew while its entries were listed");
                }
            }
        }
    }

    public bool HasBest(int i) => Count[i] > 0;

    public RoutePath PathAt(int i, int k)
    {
        if ((uint)k >= Count[i])
        {
            throw new ArgumentOutOfRangeException(nameof(k));
        }
        return k == 0 ? new RoutePath(PeerOf(Peer0[i]), Attrs0[i]!, Flags0[i]) : _more[i][k - 1];
    }

    public BgpPeer? PeerOf(ushort code) => code == 0 ? null : _peers[code - 1];

    public BgpPeer? FirstPeer(int i) => PeerOf(Peer0[i]);

    private ushort CodeOf(BgpPeer? peer)
    {
        if (peer is null)
        {
            return 0;
        }
        if (peer.Index >= ushort.MaxValue - 1)
        {
            throw new InvalidOperationException("too many peers");
        }
        if (_peers.Length <= peer.Index)
        {
            Array.Resize(ref _peers, Math.Max(_peers.Length * 2, peer.Index + 1));
        }
        _peers[peer.Index] = peer;
        return (ushort)(peer.Index + 1);
    }

    public int IndexOf(int i, BgpPeer? peer)
    {
        int n = Count[i];
        if (n == 0)
        {
            return -1;
        }
        if (PeerOf(Peer0[i]) == peer)
        {
            return 0;
        }
        if (n == 1)
        {
            return -1;
        }
        RoutePath[] more = _more[i];
        for (int k = 1; k < n; k++)
        {
            if (more[k - 1].Peer == peer)
            {
                return k;
            }
        }
        return -1;
    }

    private void SetPath(int i, int k, RoutePath p)
    {
        if (k == 0)
        {
            Peer0[i] = CodeOf(p.Peer);
            Attrs0[i] = p.Attributes;
            Flags0[i] = p.Flags;
        }
        else
        {
            _more[i][k - 1] = p;
        }
    }

    public RoutePath RemovePath(int i, int k)
    {
        RoutePath removed = PathAt(i, k);
        int n = Count[i];
        for (int j = k; j < n - 1; j++)
        {
            SetPath(i, j, PathAt(i, j + 1));
        }
        n--;
        Count[i] = (byte)n;
        if (n == 0)
        {
            Peer0[i] = 0;
            Attrs0[i] = null;
            Flags0[i] = 0;
        }
        if (n <= 1)
        {
            _more.Remove(i);
        }
        else
        {
            _more[i][n - 1] = default;
        }
        return removed;
    }

    /// <summary>Puts the path in its place in preference order.</summary>
    public void InsertPath(int i, RoutePath p)
    {
        int n = Count[i];
        if (n == byte.MaxValue)
        {
            throw new InvalidOperationException($"more than {byte.MaxValue} paths for {PrefixOf(i)}");
        }
        int at = 0;
        while (at < n && Better(PathAt(i, at), p))
        {
            at++;
        }
        if (n >= 1)
        {
            if (!_more.TryGetValue(i, out RoutePath[]? more))
            {
                _more[i] = new RoutePath[2];
            }
            else if (more.Length < n)
            {
                Array.Resize(ref more, more.Length * 2);
                _more[i] = more;
            }
        }
        Count[i] = (byte)(n + 1);
        for (int j = n; j > at; j--)
        {
            SetPath(i, j, PathAt(i, j - 1));
        }
        SetPath(i, at, p);
    }

    public void SetFlags(int i, int k, byte flags) => SetPath(i, k, PathAt(i, k).WithFlags(flags));

    private static bool Better(RoutePath a, RoutePath b) => Decision.Compare(a, b, multipath: false).Result <= 0;
}
