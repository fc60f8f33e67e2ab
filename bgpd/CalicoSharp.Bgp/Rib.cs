using System.Net;

namespace CalicoSharp.Bgp;

/// <summary>
/// Adj-RIB-In, Loc-RIB and Adj-RIB-Out in one table keyed by prefix. Each entry holds every peer's path
/// for the prefix in preference order (the decision process keeps the list sorted) and, per peer, whether
/// the prefix is advertised to it and whether a change waits for it. A change queues the entry for every
/// established peer once; each peer's queue is turned into packed UPDATEs while that peer's output queue
/// has room, so a slow peer only delays itself. Runs on the speaker's event loop only.
/// <para>
/// Only routes the import policy accepts are stored: a refused announcement is counted
/// (<see cref="BgpPeer.PrefixesRefused"/>) and forgotten, so what a peer sends outside the policy costs no
/// memory however much it sends. When the policy may accept more, <see cref="Reimport"/> asks the peer for its
/// routes again (RFC 2918 route refresh), as BIRD does without an import table.
/// </para>
/// </summary>
public sealed class Rib
{
    private const int ExportBatch = 2048;

    private readonly BgpSpeaker _speaker;
    private readonly RouteStore _s = new();
    private readonly Dictionary<int, ulong[]> _overflowBits = [];
    private BgpPeer[] _established = [];
    private readonly AttributeInterner _interner = new();
    private readonly List<int> _changed = [];

    // End-of-RIBs received since the last flush, told to listeners after the best-path changes of the routes before them.
    private readonly List<(BgpPeer Peer, Afi Family)> _endOfRibDue = [];
    private readonly HashSet<BgpPeer> _exportDue = [];
    private bool _flushScheduled;

    internal Rib(BgpSpeaker speaker)
    {
        _speaker = speaker;
        _s.MaxPaths = speaker.Config.MaxPaths;
    }

    public int Count => _s.EntryCount;

    public int AttributeSets => _interner.Count;

    /// <summary>Raised (on the loop) after a batch of changes, once per changed prefix: the best path(s) may differ.</summary>
    public event Action<IReadOnlyList<RouteEntry>>? BestChanged;

    /// <summary>Raised (on the loop) when a peer sent End-of-RIB for a family, after <see cref="BestChanged"/> has told
    /// the changes of every route received before it (a listener may remove what the peer did not send again).</summary>
    public event Action<BgpPeer, Afi>? EndOfRibReceived;

    public RouteEntry? Find(Prefix prefix) => _s.Find(prefix) is var i and >= 0 ? new RouteEntry(_s, i) : null;

    public IEnumerable<RouteEntry> Entries => _s.All.Select(i => new RouteEntry(_s, i));

    // ---- per-peer bits: advertised (Adj-RIB-Out) and queued (a change waits for the peer) ----

    internal bool Get(int e, int peer, bool queued)
    {
        if (peer < 32)
        {
            return (_s.Bits[e] & (1UL << (peer + (queued ? 32 : 0)))) != 0;
        }
        return _overflowBits.TryGetValue(e, out ulong[]? more) && OverflowIndex(peer, queued) is var (w, b) && w < more.Length && (more[w] & b) != 0;
    }

    internal void Set(int e, int peer, bool queued, bool value)
    {
        if (peer < 32)
        {
            ulong bit = 1UL << (peer + (queued ? 32 : 0));
            _s.Bits[e] = value ? _s.Bits[e] | bit : _s.Bits[e] & ~bit;
            return;
        }
        (int w, ulong b) = OverflowIndex(peer, queued);
        if (!_overflowBits.TryGetValue(e, out ulong[]? more))
        {
            if (!value)
            {
                return;
            }
            more = new ulong[w + 1];
            _overflowBits[e] = more;
        }
        else if (more.Length <= w)
        {
            Array.Resize(ref more, w + 1);
            _overflowBits[e] = more;
        }
        more[w] = value ? more[w] | b : more[w] & ~b;
    }

    private static (int Word, ulong Bit) OverflowIndex(int peer, bool queued) => ((((peer - 32) / 64) * 2) + (queued ? 1 : 0), 1UL << ((peer - 32) & 63));

    private bool AdvertisedAnywhere(int e) =>
        (_s.Bits[e] & 0xFFFF_FFFFUL) != 0 || (_overflowBits.TryGetValue(e, out ulong[]? more) && more.Where((_, i) => i % 2 == 0).Any(x => x != 0));

    private bool QueuedAnywhere(int e) =>
        (_s.Bits[e] >> 32) != 0 || (_overflowBits.TryGetValue(e, out ulong[]? more) && more.Where((_, i) => i % 2 == 1).Any(x => x != 0));

    private void RemoveEntry(int e)
    {
        _s.Remove(e);
        _overflowBits.Remove(e);
    }

    /// <summary>The longest prefix holding <paramref name="address"/> with a usable path.</summary>
    public RouteEntry? LongestMatch(IPAddress address)
    {
        int max = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128;
        for (int len = max; len >= 0; len--)
        {
            if (Find(Prefix.FromAddress(address, len)) is { Best: not null } e)
            {
                return e;
            }
        }
        return null;
    }

    // ---- local routes ----

    /// <summary>Announces a prefix from this speaker (next hop self toward every peer).</summary>
    public void Originate(Prefix prefix, PathAttributes? attributes = null)
    {
        PathAttributes a = _interner.Intern(attributes ?? new PathAttributes { Origin = Origin.Igp });
        Upsert(prefix, null, a);
        _interner.ReleaseIfUnused(a);
        ScheduleFlush();
    }

    public void WithdrawLocal(Prefix prefix)
    {
        Remove(prefix, null);
        ScheduleFlush();
    }

    // ---- from peers ----

    internal void OnUpdate(BgpPeer peer, UpdateMessage u)
    {
        if (u.Error is { } error && u.TreatAsWithdraw)
        {
            _speaker.Log(BgpLogLevel.Warning, $"peer {peer.Config.DisplayName}: malformed UPDATE handled as withdraw (RFC 7606): {NotificationMessage.Describe(error.Code, error.Subcode)}: {error.Message}");
        }
        foreach (string d in u.Discarded)
        {
            _speaker.Log(BgpLogLevel.Info, $"peer {peer.Config.DisplayName}: {d}");
        }
        foreach (Prefix p in u.Withdrawn)
        {
            Remove(p, peer);
        }
        foreach (Prefix p in u.MpUnreach)
        {
            Remove(p, peer);
        }
        if (u.EndOfRib is { } eor)
        {
            if (peer.RoutesStale)
            {
                FlushStale(peer, eor);
            }
            if (EndOfRibReceived is not null)
            {
                _endOfRibDue.Add((peer, eor));
                ScheduleFlush();
            }
        }
        if (u.Nlri.Count > 0)
        {
            AnnounceOrWithdraw(peer, u.Attributes, u.Nlri);
        }
        if (u.MpReach.Count > 0)
        {
            AnnounceOrWithdraw(peer, u.MpAttributes(), u.MpReach);
        }
        // The limit counts the routes stored for the peer (accepted by import policy), like BIRD's import limit: those
        // are what cost memory and what the node would route by; refused ones are forgotten as they arrive, and a ToR
        // that sends more than the node wants (a full table, a default route) is no reason to drop its session.
        if (peer.Config.MaxPrefixes is { } limit && peer.PrefixesAccepted > limit)
        {
            _speaker.Log(BgpLogLevel.Warning, $"peer {peer.Config.DisplayName}: {peer.PrefixesAccepted} prefixes accepted, more than the limit of {limit}: closing the session");
            // RFC 4486 §4: Cease, "Maximum Number of Prefixes Reached"; the data MAY carry AFI, SAFI and the upper bound.
            byte[] data = MessageEncoder.MaximumPrefixesData(u.MpReach.Count > 0 ? u.MpReachAfi : Afi.IPv4, Safi.Unicast, (uint)limit);
            peer.Shutdown(new BgpProtocolException(ErrorCode.Cease, Subcode.Cease.MaximumPrefixesReached, $"more than {limit} prefixes", data));
        }
        ScheduleFlush();
    }

    /// <summary>
    /// The decoder turns announcements without their well-known attributes into withdrawals; an UPDATE built some
    /// other way that still announces without attributes must not leave the peer's previous routes in place either.
    /// RFC 7606 §3(d): a missing well-known mandatory attribute is "treat-as-withdraw".
    /// </summary>
    private void AnnounceOrWithdraw(BgpPeer peer, PathAttributes? received, List<Prefix> prefixes)
    {
        if (received is not null)
        {
            Announce(peer, received, prefixes);
            return;
        }
        _speaker.Log(BgpLogLevel.Warning, $"peer {peer.Config.DisplayName}: {prefixes.Count} prefixes announced without path attributes, handled as withdrawn (RFC 7606 §3(d))");
        foreach (Prefix p in prefixes)
        {
            Remove(p, peer);
        }
    }

    private void Announce(BgpPeer peer, PathAttributes received, List<Prefix> prefixes)
    {
        peer.PrefixesReceived += prefixes.Count;
        string? reject = SessionRules(peer, received);
        if (reject is not null)
        {
            // Not an error, but the routes are unusable: a previous announcement of the prefix goes (RFC 4271 §9.1.2).
            _speaker.Log(BgpLogLevel.Debug, $"peer {peer.Config.DisplayName}: {prefixes.Count} prefixes ignored: {reject}");
            peer.PrefixesRefused += prefixes.Count;
            foreach (Prefix p in prefixes)
            {
                Remove(p, peer);
            }
            return;
        }
        PathAttributes a = received;
        if (peer.IsEbgp && a.LocalPref is not null)
        {
            // RFC 4271 §5.1.5: LOCAL_PREF from an external peer is ignored.
            a = a with { LocalPref = null };
        }
        a = _interner.Intern(a);
        RoutePolicy? import = peer.Config.Import ?? _speaker.Import;
        foreach (Prefix p in prefixes)
        {
            if (!peer.HasFamily(p.Family))
            {
                peer.PrefixesRefused++;
                continue;
            }
            PathAttributes use = a;
            if (import is not null)
            {
                PathAttributes edited = a;
                if (import(peer, p, ref edited) == PolicyResult.Reject)
                {
                    Refuse(peer, p);
                    continue;
                }
                if (!ReferenceEquals(edited, a))
                {
                    use = _interner.Intern(edited);
                }
            }
            Upsert(p, peer, use);
            if (!ReferenceEquals(use, a))
            {
                _interner.ReleaseIfUnused(use);
            }
        }
        _interner.ReleaseIfUnused(a);
    }

    /// <summary>Loop and sanity rules that make a path unusable (RFC 4271 §9.1.2, RFC 4456 §8).</summary>
    private string? SessionRules(BgpPeer peer, PathAttributes a)
    {
        if (peer.IsEbgp)
        {
            if (a.AsPath.Contains(peer.LocalAs))
            {
                return $"AS_PATH [{a.AsPath}] holds our AS {peer.LocalAs}";
            }
        }
        else
        {
            if (a.OriginatorId == _speaker.Config.RouterId)
            {
                return "ORIGINATOR_ID is our router id";
            }
            if (Array.IndexOf(a.ClusterList, _speaker.Config.EffectiveClusterId) >= 0)
            {
                return "CLUSTER_LIST holds our cluster id";
            }
        }
        if (a.HasNextHop && peer.SessionLocalAddress is { } local && a.NextHop.Address.Equals(local))
        {
            return $"NEXT_HOP {local} is our own address";
        }
        return null;
    }

    /// <summary>
    /// The policy refused the announcement: counted, not stored. The peer's previous route for the prefix goes, as
    /// any new announcement replaces the last (RFC 4271 §3.1), and the family is marked so that a wider policy asks
    /// the peer for it again.
    /// </summary>
    private void Refuse(BgpPeer peer, Prefix prefix)
    {
        peer.PrefixesRefused++;
        peer.RefusedFamilies |= 1 << (int)prefix.Family;
        Remove(prefix, peer);
    }

    private void Upsert(Prefix prefix, BgpPeer? peer, PathAttributes attributes)
    {
        int slot = _s.Find(prefix);
        if (slot < 0)
        {
            slot = _s.Add(prefix);
        }
        int at = _s.IndexOf(slot, peer);
        if (at >= 0)
        {
            RoutePath old = _s.PathAt(slot, at);
            if (ReferenceEquals(old.Attributes, attributes) && old.Flags == 0)
            {
                return;
            }
            _s.RemovePath(slot, at);
            _interner.Release(old.Attributes);
        }
        else if (peer is not null)
        {
            peer.PrefixesAccepted++;
        }
        AttributeInterner.AddReference(attributes);
        _s.InsertPath(slot, new RoutePath(peer, attributes, 0));
        Changed(slot);
    }

    private void Remove(Prefix prefix, BgpPeer? peer)
    {
        int slot = _s.Find(prefix);
        int at = slot >= 0 ? _s.IndexOf(slot, peer) : -1;
        if (at < 0)
        {
            return;
        }
        Forget(_s.RemovePath(slot, at));
        Changed(slot);
        if (_s.Count[slot] == 0)
        {
            _emptied.Add(slot);
        }
    }

    private void Forget(RoutePath path)
    {
        _interner.Release(path.Attributes);
        if (path.Peer is { } peer)
        {
            peer.PrefixesAccepted--;
        }
    }

    private void UpdateReason(int slot)
    {
        _s.Reason[slot] = (byte)(_s.Count[slot] > 1
            ? Decision.Compare(_s.PathAt(slot, 0), _s.PathAt(slot, 1), multipath: false).Reason
            : DecisionReason.OnlyPath);
    }

    private void Changed(int entry)
    {
        UpdateReason(entry);
        if (BestChanged is not null)
        {
            _changed.Add(entry);
        }
        foreach (BgpPeer peer in _established)
        {
            Enqueue(peer, entry);
        }
    }

    private void Enqueue(BgpPeer peer, int entry)
    {
        if (!Get(entry, peer.Index, queued: true) && peer.HasFamily((Afi)_s.FamilyOf[entry]))
        {
            Set(entry, peer.Index, queued: true, true);
            peer.Pending.Enqueue(entry);
            _exportDue.Add(peer);
        }
    }

    private void ScheduleFlush()
    {
        if (_flushScheduled)
        {
            return;
        }
        _flushScheduled = true;
        // Runs after the messages already queued on the loop: consecutive UPDATEs are packed together.
        _speaker.Loop.Post(Flush);
    }

    /// <summary>Exports what waits for every peer, tells listeners, removes empty entries.</summary>
    public void Flush()
    {
        _flushScheduled = false;
        foreach (BgpPeer peer in _exportDue.ToList())
        {
            Export(peer);
        }
        _exportDue.Clear();
        if (_changed.Count > 0)
        {
            RouteEntry[] changed = [.. _changed.Distinct().Select(i => new RouteEntry(_s, i))];
            _changed.Clear();
            BestChanged?.Invoke(changed);
            foreach (RouteEntry e in changed)
            {
                _emptied.Add(e.Index);
            }
        }
        if (_endOfRibDue.Count > 0)
        {
            (BgpPeer Peer, Afi Family)[] due = [.. _endOfRibDue];
            _endOfRibDue.Clear();
            foreach ((BgpPeer peer, Afi family) in due)
            {
                EndOfRibReceived?.Invoke(peer, family);
            }
        }
        FlushEmpty();
    }

    internal void OnDrained(BgpPeer peer)
    {
        peer.WaitingForDrain = false;
        Export(peer);
        FlushEmpty();
    }

    private readonly List<int> _emptied = [];

    // Export's working sets, reused from one export to the next (the loop runs one export at a time).
    private const int MaxSpareLists = ExportBatch;
    private const int MaxSpareCapacity = 64;
    private readonly Dictionary<PathAttributes, List<Prefix>> _exportGroups = [];
    private readonly Dictionary<(BgpPeer?, PathAttributes, Afi), PathAttributes?> _exportCache = [];
    private readonly List<Prefix> _withdraw4 = [];
    private readonly List<Prefix> _withdraw6 = [];
    private readonly Stack<List<Prefix>> _spareLists = new();

    private void FlushEmpty()
    {
        foreach (int e in _emptied)
        {
            if (_s.Count[e] == 0 && !AdvertisedAnywhere(e) && !QueuedAnywhere(e) && _s.Find(_s.PrefixOf(e)) == e)
            {
                RemoveEntry(e);
            }
        }
        _emptied.Clear();
    }

    /// <summary>Turns the peer's queued changes into UPDATEs while its output has room.</summary>
    private void Export(BgpPeer peer)
    {
        BgpConnection? conn = peer.Connection;
        if (conn is null || peer.WaitingForDrain)
        {
            return;
        }
        // The encoder (its 64 KiB attribute buffer) lives with the peer, the working sets with the RIB: an export runs
        // after every batch of received UPDATEs, and allocating them each time was most of what an UPDATE cost the GC.
        UpdateEncoder encoder = peer.Encoder is { } e0 && e0.Options == conn.Options ? e0 : peer.Encoder = new UpdateEncoder(conn.Options);
        Dictionary<PathAttributes, List<Prefix>> groups = _exportGroups;
        List<Prefix> withdraw4 = _withdraw4;
        List<Prefix> withdraw6 = _withdraw6;
        Dictionary<(BgpPeer?, PathAttributes, Afi), PathAttributes?> cache = _exportCache;
        // Empty unless an export failed half-way: nothing of it may reach this peer.
        groups.Clear();
        cache.Clear();
        withdraw4.Clear();
        withdraw6.Clear();
        int exported = 0;
        while (peer.Pending.Count > 0)
        {
            if (conn.QueuedBytes >= peer.Config.OutputHighWater)
            {
                peer.WaitingForDrain = true;
                conn.WantDrained();
                return;
            }
            int n = Math.Min(ExportBatch, peer.Pending.Count);
            exported += n;
            for (int i = 0; i < n; i++)
            {
                int e = peer.Pending.Dequeue();
                Prefix prefix = _s.PrefixOf(e);
                Set(e, peer.Index, queued: true, false);
                PathAttributes? out_ = ExportAttributes(peer, e, prefix, cache);
                bool advertised = Get(e, peer.Index, queued: false);
                if (out_ is null)
                {
                    if (advertised)
                    {
                        (prefix.Family == Afi.IPv4 ? withdraw4 : withdraw6).Add(prefix);
                        Set(e, peer.Index, queued: false, false);
                        peer.PrefixesAdvertised--;
                    }
                    if (_s.Count[e] == 0)
                    {
                        _emptied.Add(e);
                    }
                    continue;
                }
                if (!groups.TryGetValue(out_, out List<Prefix>? list))
                {
                    list = _spareLists.Count > 0 ? _spareLists.Pop() : [];
                    groups[out_] = list;
                }
                list.Add(prefix);
                if (!advertised)
                {
                    Set(e, peer.Index, queued: false, true);
                    peer.PrefixesAdvertised++;
                }
            }
            Write(conn, encoder, peer, withdraw4);
            Write(conn, encoder, peer, withdraw6);
            foreach ((PathAttributes attrs, List<Prefix> prefixes) in groups)
            {
                // One attribute set may hold both families only if a policy made it so; split by family.
                prefixes.Sort(static (x, y) => x.Family.CompareTo(y.Family));
                int start = 0;
                while (start < prefixes.Count)
                {
                    int end = start;
                    while (end < prefixes.Count && prefixes[end].Family == prefixes[start].Family)
                    {
                        end++;
                    }
                    Span<Prefix> span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(prefixes)[start..end];
                    while (!span.IsEmpty)
                    {
                        int sent = encoder.WriteAnnounce(conn.Output, attrs, span);
                        peer.UpdatesSent++;
                        span = span[sent..];
                    }
                    start = end;
                }
                if (_spareLists.Count < MaxSpareLists && prefixes.Capacity <= MaxSpareCapacity)
                {
                    prefixes.Clear();
                    _spareLists.Push(prefixes);
                }
            }
            groups.Clear();
            cache.Clear();
            conn.Flush();
        }
        if (exported > 4 * ExportBatch)
        {
            // A big transfer is over: give back the queue's memory and the working sets'.
            peer.Pending.TrimExcess();
            _spareLists.Clear();
            _exportGroups.TrimExcess();
            _exportCache.TrimExcess();
        }
        if (peer.EndOfRibOwed)
        {
            peer.EndOfRibOwed = false;
            foreach (Afi f in peer.Families)
            {
                conn.Send(UpdateEncoder.EndOfRib(f));
            }
        }
    }

    private static void Write(BgpConnection conn, UpdateEncoder encoder, BgpPeer peer, List<Prefix> withdrawals)
    {
        Span<Prefix> span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(withdrawals);
        while (!span.IsEmpty)
        {
            int sent = encoder.WriteWithdraw(conn.Output, span);
            peer.UpdatesSent++;
            span = span[sent..];
        }
        withdrawals.Clear();
    }

    /// <summary>
    /// What we announce to <paramref name="peer"/> for the entry's best path, or null for nothing
    /// (RFC 4271 §9.2, RFC 4456 §8 reflection rules, next hop self, export policy).
    /// </summary>
    private PathAttributes? ExportAttributes(BgpPeer peer, int e, Prefix prefix, Dictionary<(BgpPeer?, PathAttributes, Afi), PathAttributes?> cache)
    {
        if (!_s.HasBest(e) || _s.FirstPeer(e) == peer)
        {
            return null;
        }
        BgpPeer? source = _s.FirstPeer(e);
        PathAttributes attrs = _s.Attrs0[e]!;
        RoutePolicy? policy = peer.Config.Export ?? _speaker.Export;
        Afi family = prefix.Family;
        if (policy is null && cache.TryGetValue((source, attrs, family), out PathAttributes? cached))
        {
            return cached;
        }
        PathAttributes? result = Transform(peer, source, attrs, family);
        if (policy is not null && result is not null)
        {
            PathAttributes edited = result;
            result = policy(peer, prefix, ref edited) == PolicyResult.Reject ? null : edited;
        }
        else
        {
            cache[(source, attrs, family)] = result;
        }
        return result;
    }

    private PathAttributes? Transform(BgpPeer peer, BgpPeer? source, PathAttributes a, Afi family)
    {
        bool reflect = false;
        if (!peer.IsEbgp && source is { IsEbgp: false })
        {
            // RFC 4456 §6: from a client to everyone; from a non-client only to clients. Without reflection,
            // iBGP-learned routes never go to iBGP peers (RFC 4271 §9.2).
            if (!source.Config.RouteReflectorClient && !peer.Config.RouteReflectorClient)
            {
                return null;
            }
            reflect = true;
        }
        Prefix self = SelfNextHop(peer, family);
        if (peer.IsEbgp)
        {
            if (self.Family == 0)
            {
                return null;
            }
            return new PathAttributes
            {
                Origin = a.Origin,
                AsPath = a.AsPath.Prepend(peer.LocalAs),
                NextHop = self,
                // RFC 4271 §5.1.4: a MED learned from one AS is not passed to another.
                Med = source is null ? a.Med : null,
                AtomicAggregate = a.AtomicAggregate,
                Aggregator = a.Aggregator,
                Communities = a.Communities,
                LargeCommunities = a.LargeCommunities,
                Unknown = a.Unknown,
            };
        }
        bool nextHopSelf = source is null || peer.Config.NextHopSelf || !a.HasNextHop;
        if (nextHopSelf && self.Family == 0)
        {
            return null;
        }
        return new PathAttributes
        {
            Origin = a.Origin,
            AsPath = a.AsPath,
            NextHop = nextHopSelf ? self : a.NextHop,
            LinkLocalNextHop = nextHopSelf ? default : a.LinkLocalNextHop,
            Med = a.Med,
            LocalPref = a.LocalPref ?? 100,
            AtomicAggregate = a.AtomicAggregate,
            Aggregator = a.Aggregator,
            Communities = a.Communities,
            LargeCommunities = a.LargeCommunities,
            OriginatorId = reflect ? a.OriginatorId ?? source!.RemoteRouterId : null,
            ClusterList = reflect ? [_speaker.Config.EffectiveClusterId, .. a.ClusterList] : [],
            Unknown = a.Unknown,
        };
    }

    private static Prefix SelfNextHop(BgpPeer peer, Afi family)
    {
        IPAddress? local = peer.SessionLocalAddress ?? peer.Config.LocalAddress;
        if (local is not null && (local.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) == (family == Afi.IPv4))
        {
            return Prefix.FromAddress(local, family == Afi.IPv4 ? 32 : 128);
        }
        IPAddress? other = peer.Config.LocalAddressOtherFamily;
        if (other is not null && (other.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork) == (family == Afi.IPv4))
        {
            return Prefix.FromAddress(other, family == Afi.IPv4 ? 32 : 128);
        }
        return default;
    }

    // ---- peer state ----

    internal void OnPeerUp(BgpPeer peer)
    {
        _established = [.. _established.Where(p => p != peer), peer];
        peer.Pending.Clear();
        peer.WaitingForDrain = false;
        peer.PrefixesAdvertised = 0;
        peer.EndOfRibOwed = true;
        foreach (int e in _s.All)
        {
            Set(e, peer.Index, queued: false, false);
            Set(e, peer.Index, queued: true, false);
            if (_s.HasBest(e))
            {
                Enqueue(peer, e);
            }
        }
        _exportDue.Add(peer);
        ScheduleFlush();
    }

    /// <summary>The session went down: the peer's paths go, except those of <paramref name="keepFamilies"/>, which
    /// stay as stale for a graceful restart.</summary>
    internal void OnPeerDown(BgpPeer peer, IReadOnlyCollection<Afi> keepFamilies)
    {
        _established = [.. _established.Where(p => p != peer)];
        peer.Pending.Clear();
        peer.Pending.TrimExcess();
        peer.WaitingForDrain = false;
        peer.PrefixesAdvertised = 0;
        _exportDue.Remove(peer);
        int stale = 0;
        foreach (int e in _s.All)
        {
            Set(e, peer.Index, queued: false, false);
            Set(e, peer.Index, queued: true, false);
            int at = _s.IndexOf(e, peer);
            if (at < 0)
            {
                continue;
            }
            if (keepFamilies.Contains((Afi)_s.FamilyOf[e]))
            {
                _s.SetFlags(e, at, (byte)(_s.PathAt(e, at).Flags | RoutePath.StaleFlag));
                stale++;
            }
            else
            {
                Forget(_s.RemovePath(e, at));
                Changed(e);
                _emptied.Add(e);
            }
        }
        if (stale > 0)
        {
            peer.RoutesStale = true;
            _speaker.Log(BgpLogLevel.Info, $"peer {peer.Config.DisplayName}: graceful restart: keeping its {stale} routes as stale");
        }
        ScheduleFlush();
    }

    /// <summary>Removes the peer's stale paths (of one family, or all).</summary>
    public void FlushStale(BgpPeer peer, Afi? family = null)
    {
        ArgumentNullException.ThrowIfNull(peer);
        int n = 0;
        bool anyLeft = false;
        foreach (int e in _s.All)
        {
            int at = _s.IndexOf(e, peer);
            if (at < 0 || !_s.PathAt(e, at).Stale)
            {
                continue;
            }
            if (family is { } f && (Afi)_s.FamilyOf[e] != f)
            {
                anyLeft = true;
                continue;
            }
            Forget(_s.RemovePath(e, at));
            Changed(e);
            _emptied.Add(e);
            n++;
        }
        if (!anyLeft)
        {
            peer.RoutesStale = false;
            peer.StopRestartTimer();
        }
        if (n > 0)
        {
            _speaker.Log(BgpLogLevel.Info, $"peer {peer.Config.DisplayName}: {n} stale routes removed");
        }
        ScheduleFlush();
    }

    /// <summary>RFC 2918: the peer asked for our routes of one family again.</summary>
    /// <summary>After the export policy changed: every route is judged again for every established peer (what the
    /// policy refuses now is withdrawn, what it accepts now is announced).</summary>
    public void Reexport()
    {
        foreach (BgpPeer peer in _established)
        {
            foreach (Afi f in peer.Families)
            {
                Refresh(peer, f);
            }
        }
    }

    internal void Refresh(BgpPeer peer, Afi family)
    {
        foreach (int e in _s.All)
        {
            if ((Afi)_s.FamilyOf[e] == family && _s.HasBest(e))
            {
                Enqueue(peer, e);
            }
        }
        ScheduleFlush();
    }

    /// <summary>
    /// After the import policy changed: runs it again over the peer's stored routes (those it refuses now go), and,
    /// when the new policy may accept more (<paramref name="mayAcceptMore"/>: a pool added, a block released) and the
    /// peer had routes refused in a family this session, gets those routes back from the peer, since they were never
    /// kept. With route refresh negotiated, a ROUTE-REFRESH per such family (RFC 2918 §3: "A BGP speaker may send a
    /// ROUTE-REFRESH message to its peer only if it has received the Route Refresh Capability from its peer"; §4: the
    /// peer re-advertises its Adj-RIB-Out). Without it the session is reset, as BIRD resets a channel whose import
    /// filter changed when it has neither an import table nor route refresh (nest/proto.c channel_reconfigure).
    /// </summary>
    public void Reimport(BgpPeer peer, bool mayAcceptMore)
    {
        ArgumentNullException.ThrowIfNull(peer);
        RoutePolicy? import = peer.Config.Import ?? _speaker.Import;
        int dropped = 0;
        if (import is not null)
        {
            foreach (int e in _s.All)
            {
                int at = _s.IndexOf(e, peer);
                if (at < 0)
                {
                    continue;
                }
                PathAttributes a = _s.PathAt(e, at).Attributes;
                Prefix prefix = _s.PrefixOf(e);
                if (import(peer, prefix, ref a) == PolicyResult.Reject)
                {
                    Refuse(peer, prefix);
                    dropped++;
                }
            }
        }
        if (dropped > 0)
        {
            _speaker.Log(BgpLogLevel.Info, $"peer {peer.Config.DisplayName}: {dropped} routes refused by the changed import policy, removed");
        }
        if (mayAcceptMore && peer.RefusedFamilies != 0 && peer.State == SessionState.Established)
        {
            Afi[] families = [.. peer.Families.Where(f => (peer.RefusedFamilies & (1 << (int)f)) != 0)];
            if (peer.PeerRouteRefresh)
            {
                peer.RefusedFamilies = 0;
                foreach (Afi f in families)
                {
                    _ = peer.RequestRefresh(f);
                }
                _speaker.Log(BgpLogLevel.Info, $"peer {peer.Config.DisplayName}: import policy widened: route refresh requested for {string.Join(",", families)} (routes refused before were not kept)");
            }
            else
            {
                // RFC 4486 §4: a reset for a configuration change other than those with their own subcode is
                // Cease / "Other Configuration Change".
                _speaker.Log(BgpLogLevel.Warning, $"peer {peer.Config.DisplayName}: import policy widened and the peer has no route refresh (RFC 2918): resetting the session so it sends its routes again");
                peer.Shutdown(new BgpProtocolException(ErrorCode.Cease, Subcode.Cease.OtherConfigurationChange,
                    "import policy changed; the peer cannot be asked for its routes again without route refresh"));
            }
        }
        ScheduleFlush();
    }
}
