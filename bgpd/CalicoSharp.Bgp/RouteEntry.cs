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
public sealed class RoutePath
{
    internal RoutePath(BgpPeer? peer, PathAttributes attributes)
    {
        Peer = peer;
        Attributes = attributes;
    }

    public BgpPeer? Peer { get; }

    public PathAttributes Attributes { get; internal set; }

    /// <summary>Rejected by import policy: kept (Adj-RIB-In) but never selected.</summary>
    public bool Filtered { get; internal set; }

    /// <summary>From a peer in graceful restart, waiting for it to announce again (RFC 4724 §4.2).</summary>
    public bool Stale { get; internal set; }

    /// <summary>Next path in preference order.</summary>
    internal RoutePath? Next { get; set; }

    public bool IsLocal => Peer is null;
}

/// <summary>
/// One prefix in the RIB: its candidate paths in preference order (Adj-RIB-In of every peer for the prefix,
/// best first — Loc-RIB), and per peer whether it is advertised to / queued for that peer (Adj-RIB-Out).
/// </summary>
public sealed class RouteEntry
{
    private ulong _advertised;
    private ulong _queued;
    private ulong[]? _more;

    internal RouteEntry(Prefix prefix)
    {
        Prefix = prefix;
    }

    /// <summary>The prefix (settable only for the RIB's lookup probe).</summary>
    public Prefix Prefix { get; internal set; }

    internal RoutePath? Head { get; set; }

    public DecisionReason Reason { get; internal set; }

    /// <summary>The best path, or null when none is usable.</summary>
    public RoutePath? Best => Head is { Filtered: false } h ? h : null;

    public IEnumerable<RoutePath> Paths
    {
        get
        {
            for (RoutePath? p = Head; p is not null; p = p.Next)
            {
                yield return p;
            }
        }
    }

    internal bool IsEmpty => Head is null;

    private ref ulong Word(int index, bool queued)
    {
        if (index < 64)
        {
            return ref queued ? ref _queued : ref _advertised;
        }
        int w = ((index / 64) - 1) * 2 + (queued ? 1 : 0);
        if (_more is null || _more.Length <= w)
        {
            Array.Resize(ref _more, Math.Max(w + 2, 2));
        }
        return ref _more[w];
    }

    internal bool Get(int index, bool queued)
    {
        if (index >= 64 && (_more is null || _more.Length <= ((index / 64) - 1) * 2 + 1))
        {
            return false;
        }
        return (Word(index, queued) & (1UL << (index & 63))) != 0;
    }

    internal void Set(int index, bool queued, bool value)
    {
        if (!value && index >= 64 && _more is null)
        {
            return;
        }
        ref ulong w = ref Word(index, queued);
        w = value ? w | (1UL << (index & 63)) : w & ~(1UL << (index & 63));
    }

    internal bool AdvertisedAnywhere => _advertised != 0 || (_more is not null && _more.Any(x => x != 0));

    public override string ToString() => Prefix.ToString();
}

internal sealed class RouteEntryComparer : IEqualityComparer<RouteEntry>
{
    public static readonly RouteEntryComparer Instance = new();

    public bool Equals(RouteEntry? x, RouteEntry? y) => x!.Prefix.Equals(y!.Prefix);

    public int GetHashCode(RouteEntry obj) => obj.Prefix.GetHashCode();
}
