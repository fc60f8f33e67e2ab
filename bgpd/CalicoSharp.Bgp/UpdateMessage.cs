namespace CalicoSharp.Bgp;

/// <summary>
/// A decoded UPDATE. Prefix lists are plain lists of values (no allocation per prefix beyond the list's own
/// growth). When <see cref="TreatAsWithdraw"/> is set the announced prefixes must be handled as withdrawn
/// (RFC 7606 §2) and <see cref="Error"/> says why.
/// </summary>
public sealed class UpdateMessage : BgpMessage
{
    public override MessageType Type => MessageType.Update;

    /// <summary>IPv4 withdrawals from the Withdrawn Routes field.</summary>
    public List<Prefix> Withdrawn { get; } = [];

    /// <summary>IPv4 announcements from the NLRI field; next hop in <see cref="Attributes"/>.</summary>
    public List<Prefix> Nlri { get; } = [];

    /// <summary>Attributes shared by all announcements; the next hop is the classic NEXT_HOP.</summary>
    public PathAttributes? Attributes { get; set; }

    /// <summary>MP_REACH_NLRI family, next hops and prefixes (RFC 4760 §3).</summary>
    public Afi MpReachAfi { get; set; }

    public Prefix MpNextHop { get; set; }

    public Prefix MpLinkLocalNextHop { get; set; }

    public List<Prefix> MpReach { get; } = [];

    /// <summary>MP_UNREACH_NLRI family and prefixes (RFC 4760 §4).</summary>
    public Afi MpUnreachAfi { get; set; }

    public List<Prefix> MpUnreach { get; } = [];

    public bool HasMpUnreach { get; set; }

    public bool TreatAsWithdraw { get; set; }

    /// <summary>The first error that led to treat-as-withdraw or an attribute being discarded.</summary>
    public BgpProtocolException? Error { get; set; }

    /// <summary>Attributes discarded under RFC 7606 (code and reason), for the log.</summary>
    public List<string> Discarded { get; } = [];

    /// <summary>RFC 4724 §2: set for an UPDATE with nothing in it (IPv4) or with only an empty MP_UNREACH_NLRI.</summary>
    public Afi? EndOfRib { get; set; }

    internal bool SeenOrigin { get; set; }

    internal bool SeenAsPath { get; set; }

    /// <summary>Attributes for the MP_REACH prefixes: the shared ones with the MP next hop.</summary>
    public PathAttributes? MpAttributes()
    {
        if (Attributes is null)
        {
            return null;
        }
        return Attributes.NextHop == MpNextHop && Attributes.LinkLocalNextHop == MpLinkLocalNextHop
            ? Attributes
            : Attributes with { NextHop = MpNextHop, LinkLocalNextHop = MpLinkLocalNextHop };
    }

    /// <summary>Prefixes the lists hold room for: what keeping this message for reuse keeps in memory.</summary>
    internal int PrefixCapacity => Withdrawn.Capacity + Nlri.Capacity + MpReach.Capacity + MpUnreach.Capacity;

    public void Clear()
    {
        Withdrawn.Clear();
        Nlri.Clear();
        MpReach.Clear();
        MpUnreach.Clear();
        Attributes = null;
        MpReachAfi = 0;
        MpUnreachAfi = 0;
        MpNextHop = default;
        MpLinkLocalNextHop = default;
        HasMpUnreach = false;
        EndOfRib = null;
        SeenOrigin = false;
        SeenAsPath = false;
        TreatAsWithdraw = false;
        Error = null;
        Discarded.Clear();
    }
}
