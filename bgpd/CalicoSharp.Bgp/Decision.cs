namespace CalicoSharp.Bgp;

/// <summary>
/// The decision process as a chain of small comparisons (RFC 4271 §9.1.2.2, RFC 4456 §9), each naming
/// itself so the winner's reason can be shown. Paths equal down to the eBGP/iBGP step are equal-cost
/// (multipath) candidates; the remaining steps only break the tie.
/// </summary>
public static class Decision
{
    public const uint DefaultLocalPref = 100;

    private delegate int Step(RoutePath a, RoutePath b);

    private static readonly (DecisionReason Reason, Step Compare, bool TieBreak)[] Steps =
    [
        (DecisionReason.LocallyOriginated, (a, b) => (b.IsLocal ? 1 : 0) - (a.IsLocal ? 1 : 0), false),
        (DecisionReason.NotStale, (a, b) => (a.Stale ? 1 : 0) - (b.Stale ? 1 : 0), false),
        (DecisionReason.LocalPref, (a, b) => LocalPref(b).CompareTo(LocalPref(a)), false),
        (DecisionReason.AsPathLength, (a, b) => a.Attributes.AsPath.Length.CompareTo(b.Attributes.AsPath.Length), false),
        (DecisionReason.Origin, (a, b) => ((byte)a.Attributes.Origin).CompareTo((byte)b.Attributes.Origin), false),
        // §9.1.2.2 c: MED only compares paths from the same neighbour AS; a missing MED is 0.
        (DecisionReason.Med, (a, b) => a.Attributes.AsPath.FirstAs == b.Attributes.AsPath.FirstAs
            ? (a.Attributes.Med ?? 0).CompareTo(b.Attributes.Med ?? 0) : 0, false),
        (DecisionReason.EbgpOverIbgp, (a, b) => (IsEbgp(b) ? 1 : 0) - (IsEbgp(a) ? 1 : 0), false),
        // RFC 4456 §9: the ORIGINATOR_ID stands in for the router id of a reflected path.
        (DecisionReason.RouterId, (a, b) => RouterId(a).CompareTo(RouterId(b)), true),
        (DecisionReason.ClusterListLength, (a, b) => a.Attributes.ClusterList.Length.CompareTo(b.Attributes.ClusterList.Length), true),
        (DecisionReason.PeerAddress, (a, b) => ComparePeerAddress(a, b), true),
    ];

    private static uint LocalPref(RoutePath p) => p.Attributes.LocalPref ?? DefaultLocalPref;

    private static bool IsEbgp(RoutePath p) => p.Peer is { IsEbgp: true };

    private static uint RouterId(RoutePath p) => p.Attributes.OriginatorId ?? p.Peer?.RemoteRouterId ?? 0;

    private static int ComparePeerAddress(RoutePath a, RoutePath b)
    {
        if (a.Peer is null || b.Peer is null)
        {
            return 0;
        }
        Span<byte> x = stackalloc byte[16];
        Span<byte> y = stackalloc byte[16];
        x.Clear();
        y.Clear();
        a.Peer.Config.Address.TryWriteBytes(x, out int nx);
        b.Peer.Config.Address.TryWriteBytes(y, out int ny);
        int c = nx.CompareTo(ny);
        return c != 0 ? c : x.SequenceCompareTo(y);
    }

    /// <summary>Negative when <paramref name="a"/> is preferred, with the step that decided.</summary>
    public static (int Result, DecisionReason Reason) Compare(RoutePath a, RoutePath b, bool multipath)
    {
        foreach ((DecisionReason reason, Step compare, bool tieBreak) in Steps)
        {
            if (multipath && tieBreak)
            {
                return (0, DecisionReason.OnlyPath);
            }
            int c = compare(a, b);
            if (c != 0)
            {
                return (c, reason);
            }
        }
        return (0, DecisionReason.PeerAddress);
    }

    public static string Describe(DecisionReason reason) => reason switch
    {
        DecisionReason.OnlyPath => "only path",
        DecisionReason.LocallyOriginated => "locally originated",
        DecisionReason.NotStale => "not stale (the other peer is restarting)",
        DecisionReason.LocalPref => "higher LOCAL_PREF",
        DecisionReason.AsPathLength => "shorter AS_PATH",
        DecisionReason.Origin => "lower ORIGIN",
        DecisionReason.Med => "lower MED",
        DecisionReason.EbgpOverIbgp => "eBGP over iBGP",
        DecisionReason.RouterId => "lower router id",
        DecisionReason.ClusterListLength => "shorter CLUSTER_LIST",
        DecisionReason.PeerAddress => "lower peer address",
        _ => reason.ToString(),
    };
}
