using System.Net;

namespace CalicoSharp.Bgp;

/// <summary>RFC 4271 §8.2.2 session states.</summary>
public enum SessionState
{
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// <summary>
/// One neighbour and its session FSM (RFC 4271 §8). A peer may have two connections at once (ours and
/// theirs) until collision resolution (§6.8) keeps one. Runs only on the speaker's event loop; time comes
/// from the speaker's <see cref="TimeProvider"/>.
/// </summary>
public sealed class BgpPeer
{
    /// <summary>RFC 4271 §8.2.2: the hold timer while waiting for OPEN is "a large value" (4 minutes suggested).</summary>
    public static readonly TimeSpan OpenHoldTime = TimeSpan.FromMinutes(4);

    private readonly BgpSpeaker _speaker;
    private readonly List<Attempt> _attempts = new(2);
    private SessionState _baseState = SessionState.Idle;
    private ITimer? _connectRetry;
    private ITimer? _idleHold;
    private int _failures;
    private bool _connecting;
    private bool _enabled;
    private CancellationTokenSource? _connectCts;
    private ITimer? _restartTimer;

    internal BgpPeer(BgpSpeaker speaker, PeerConfig config, int index)
    {
        _speaker = speaker;
        Config = config;
        Index = index;
    }

    public PeerConfig Config { get; internal set; }

    /// <summary>The peer's bit in the RIB's per-route export sets.</summary>
    public int Index { get; }

    public uint LocalAs => Config.LocalAs ?? _speaker.Config.LocalAs;

    public bool IsEbgp => Config.RemoteAs != LocalAs;

    public SessionState State
    {
        get
        {
            SessionState s = _baseState;
            foreach (Attempt a in _attempts)
            {
                if (a.State > s)
                {
                    s = a.State;
                }
            }
            return s;
        }
    }

    public string? LastError { get; private set; }

    public DateTimeOffset? EstablishedAt { get; private set; }

    public DateTimeOffset StateChangedAt { get; private set; }

    public OpenMessage? RemoteOpen => Established?.RemoteOpen;

    public uint RemoteRouterId => Established?.RemoteOpen?.BgpIdentifier ?? 0;

    /// <summary>Families both sides announced (RFC 4760 §8: none announced means IPv4 unicast).</summary>
    public IReadOnlyList<Afi> Families { get; private set; } = [];

    private int _familyMask;

    internal bool HasFamily(Afi family) => (_familyMask & (1 << (int)family)) != 0;

    public bool PeerRouteRefresh { get; private set; }

    public GracefulRestartCapability? PeerGracefulRestart { get; private set; }

    public TimeSpan NegotiatedHoldTime { get; private set; }

    public long UpdatesReceived { get; internal set; }

    public long UpdatesSent { get; internal set; }

    /// <summary>Prefixes the peer announced in this session, before import policy: every NLRI counts, each time it
    /// comes (a re-announcement, an answer to our route refresh). A counter, not a table size: refused routes are not
    /// kept, so how many distinct prefixes the peer holds is not known. Reset when the session is established.</summary>
    public long PrefixesReceived { get; internal set; }

    /// <summary>The peer's routes in the RIB (accepted by import policy, stale ones included): a gauge, and what
    /// <see cref="PeerConfig.MaxPrefixes"/> limits.</summary>
    public long PrefixesAccepted { get; internal set; }

    /// <summary>Announcements of this session that were not stored: refused by import policy, unusable (an AS loop,
    /// our own next hop) or of a family not negotiated. A counter like <see cref="PrefixesReceived"/>.</summary>
    public long PrefixesRefused { get; internal set; }

    /// <summary>Bit per <see cref="Afi"/>: import policy refused something of that family since the session came up or
    /// since the last route refresh asked for it (what a wider policy must ask the peer for again).</summary>
    internal int RefusedFamilies { get; set; }

    public long PrefixesAdvertised { get; internal set; }

    /// <summary>Time since anything arrived on the established connection.</summary>
    public TimeSpan? SinceLastReceived => Established?.Connection.SinceLastReceived;

    /// <summary>The local address of the established connection (next hop self).</summary>
    public IPAddress? SessionLocalAddress { get; private set; }

    internal BgpConnection? Connection => Established?.Connection;

    internal Attempt? Established => _attempts.Find(a => a.State == SessionState.Established);

    /// <summary>Export state: the peer waits for the output queue to drain.</summary>
    internal bool WaitingForDrain { get; set; }

    internal NativeQueue<int> Pending { get; } = new();

    /// <summary>The export's encoder, kept from one export to the next (replaced when the codec options change).</summary>
    internal UpdateEncoder? Encoder { get; set; }

    /// <summary>End-of-RIB still owed to the peer for the initial table transfer.</summary>
    internal bool EndOfRibOwed { get; set; }

    /// <summary>Graceful restart helper (RFC 4724 §4.2): the peer's routes are stale until it comes back.</summary>
    public bool RoutesStale { get; internal set; }

    internal sealed class Attempt
    {
        public required BgpConnection Connection { get; init; }

        public SessionState State { get; set; }

        public OpenMessage? RemoteOpen { get; set; }

        public ITimer? Hold { get; set; }

        public ITimer? Keepalive { get; set; }

        public TimeSpan HoldTime { get; set; }
    }

    private void Log(BgpLogLevel level, string message) => _speaker.Log(level, $"peer {Config.DisplayName}: {message}");

    private void SetBase(SessionState s)
    {
        if (_baseState != s)
        {
            _baseState = s;
            StateChangedAt = _speaker.Time.GetUtcNow();
        }
    }

    /// <summary>ManualStart (RFC 4271 §8.1.2 event 1, or 4 when passive).</summary>
    public void Start()
    {
        _enabled = true;
        _failures = 0;
        if (State == SessionState.Idle)
        {
            StartConnecting();
        }
    }

    private void StartConnecting()
    {
        _idleHold?.Dispose();
        _idleHold = null;
        if (Config.Passive)
        {
            SetBase(SessionState.Active);
            return;
        }
        SetBase(SessionState.Connect);
        Connect();
    }

    private void Connect()
    {
        if (_connecting || Config.Passive || !_enabled)
        {
            return;
        }
        _connecting = true;
        _connectRetry?.Dispose();
        TimeSpan retry = Jitter(Config.ConnectRetry);
        _connectRetry = _speaker.Time.CreateTimer(_ => _speaker.Loop.Post(OnConnectRetry), null, retry, Timeout.InfiniteTimeSpan);
        var cts = new CancellationTokenSource();
        _connectCts = cts;
        _ = ConnectAsync(cts.Token);
    }

    private async Task ConnectAsync(CancellationToken ct)
    {
        try
        {
            Stream stream = await _speaker.Connector(Config, ct).ConfigureAwait(false);
            _speaker.Loop.Post(() => OnConnected(stream, ct));
        }
#pragma warning disable CA1031 // A failed connect is an FSM event (TcpConnectionFails), not a crash.
        catch (Exception e)
#pragma warning restore CA1031
        {
            _speaker.Loop.Post(() => OnConnectFailed(e, ct));
        }
    }

    private void OnConnected(Stream stream, CancellationToken ct)
    {
        _connecting = false;
        if (ct.IsCancellationRequested || !_enabled || Established is not null || _attempts.Exists(a => a.Connection.Outgoing))
        {
            stream.Dispose();
            return;
        }
        var conn = new BgpConnection(stream, _speaker.Loop, _speaker.Time, Config.DisplayName, outgoing: true);
        Begin(conn, BgpSpeaker.LocalAddressOf(stream));
    }

    private void OnConnectFailed(Exception e, CancellationToken ct)
    {
        _connecting = false;
        if (ct.IsCancellationRequested || !_enabled)
        {
            return;
        }
        LastError = $"connect: {e.Message}";
        Log(BgpLogLevel.Debug, LastError);
        // RFC 4271 §8.2.2 (Connect, event 18): TCP failure moves to Active and waits for the retry timer.
        if (_attempts.Count == 0)
        {
            SetBase(SessionState.Active);
        }
    }

    private void OnConnectRetry()
    {
        if (!_enabled || _attempts.Count > 0 || _baseState == SessionState.Idle)
        {
            return;
        }
        _connectCts?.Cancel();
        _connecting = false;
        SetBase(SessionState.Connect);
        Connect();
    }

    /// <summary>An incoming connection from this peer's address (RFC 4271 §8.2.2 event 17).</summary>
    internal void Accept(Stream stream, IPAddress? localAddress)
    {
        // RFC 4724 §4.2: a peer that can restart gracefully may come back before we noticed it went (a reboot sends no
        // FIN); its new connection is let in, and its OPEN ends the old session (OnOpen).
        bool restartWelcome = Established is not null && GracefulRestartNegotiated && !_attempts.Exists(a => a.State != SessionState.Established);
        if (!_enabled || (Established is not null && !restartWelcome) || _attempts.Exists(a => !a.Connection.Outgoing && a.State != SessionState.Established))
        {
            // §6.8: a connection that collides with an Established one is closed.
            var c = new BgpConnection(stream, _speaker.Loop, _speaker.Time, Config.DisplayName, outgoing: false);
            c.Send(MessageEncoder.Notification(new NotificationMessage(ErrorCode.Cease,
                _enabled ? Subcode.ConnectionCollisionResolution : Subcode.ConnectionRejected, ReadOnlyMemory<byte>.Empty)));
            c.Start();
            c.Close(TimeSpan.FromSeconds(1));
            return;
        }
        var conn = new BgpConnection(stream, _speaker.Loop, _speaker.Time, Config.DisplayName, outgoing: false);
        Begin(conn, localAddress);
    }

    /// <summary>For tests and in-process transports: hand the peer an already connected stream.</summary>
    public void AcceptStream(Stream stream) => _speaker.Loop.Post(() => Accept(stream, null));

    private void Begin(BgpConnection conn, IPAddress? localAddress = null)
    {
        // RFC 4271 §8.2.2 (event 16/17): the TCP connection is up, the ConnectRetryTimer stops.
        _connectRetry?.Dispose();
        _connectRetry = null;
        var a = new Attempt { Connection = conn, State = SessionState.OpenSent, HoldTime = OpenHoldTime };
        _attempts.Add(a);
        if (localAddress is not null)
        {
            SessionLocalAddress = localAddress;
        }
        conn.OnMessage = (c, m) => OnMessage(a, m);
        conn.OnClosed = (c, e) => OnConnectionClosed(a, e);
        conn.OnDrained = _ => _speaker.Rib.OnDrained(this);
        conn.Options = new CodecOptions(false, false);
        StateChangedAt = _speaker.Time.GetUtcNow();
        conn.Start();
        conn.Send(MessageEncoder.Open(BuildOpen()));
        ArmHold(a);
    }

    internal OpenMessage BuildOpen()
    {
        uint localAs = LocalAs;
        var families = new List<(Afi, Safi)>();
        foreach (Afi f in Config.Families)
        {
            families.Add((f, Safi.Unicast));
        }
        return new OpenMessage
        {
            As = localAs,
            HoldTime = Config.HoldTime,
            BgpIdentifier = _speaker.Config.RouterId,
            Multiprotocol = families,
            RouteRefresh = true,
            FourOctetAs = true,
            ExtendedMessage = true,
            GracefulRestart = Config.GracefulRestart
                // RFC 8538 §2: the N bit: a NOTIFICATION other than Hard Reset is handled as a restart (both ends keep
                // the routes as stale), once both ends set it.
                ? new GracefulRestartCapability(_speaker.Config.Restarting, true, _speaker.Config.RestartTime,
                    [.. Config.Families.Select(f => new GracefulRestartFamily(f, Safi.Unicast, _speaker.Config.Restarting))])
                : null,
        };
    }

    private void ArmHold(Attempt a)
    {
        a.Hold?.Dispose();
        if (a.HoldTime == TimeSpan.Zero)
        {
            a.Hold = null;
            return;
        }
        a.Hold = _speaker.Time.CreateTimer(_ => _speaker.Loop.Post(() => OnHoldTimer(a)), null, a.HoldTime, Timeout.InfiniteTimeSpan);
    }

    private void OnHoldTimer(Attempt a)
    {
        if (!_attempts.Contains(a))
        {
            return;
        }
        TimeSpan since = a.Connection.SinceLastReceived;
        if (since < a.HoldTime)
        {
            // Something arrived since the timer was set: wait for the rest of the hold time.
            a.Hold?.Change(a.HoldTime - since, Timeout.InfiniteTimeSpan);
            return;
        }
        // RFC 4271 §6.5: hold timer expired.
        Fail(a, new BgpProtocolException(ErrorCode.HoldTimerExpired, 0, $"hold timer expired: nothing received for {a.HoldTime.TotalSeconds:0} s"));
    }

    private void OnKeepaliveTimer(Attempt a)
    {
        if (!_attempts.Contains(a) || a.State < SessionState.OpenConfirm)
        {
            return;
        }
        if (Config.SendStallLimit is { } limit && a.Connection.SendStalledFor > limit)
        {
            // A peer that has not read anything we queued for this long cannot keep up.
            Fail(a, new BgpProtocolException(ErrorCode.Cease, Subcode.OutOfResources,
                $"peer is not reading: {a.Connection.QueuedBytes} bytes queued and nothing sent for {a.Connection.SendStalledFor.TotalSeconds:0} s"));
            return;
        }
        a.Connection.Send(MessageEncoder.Keepalive());
    }

    private void OnMessage(Attempt a, BgpMessage m)
    {
        if (!_attempts.Contains(a))
        {
            return;
        }
        try
        {
            switch (m)
            {
                case OpenMessage open:
                    OnOpen(a, open);
                    break;
                case KeepaliveMessage:
                    if (a.State == SessionState.OpenConfirm)
                    {
                        OnEstablished(a);
                    }
                    else if (a.State == SessionState.OpenSent)
                    {
                        throw FsmError(a.State, "KEEPALIVE before OPEN");
                    }
                    break;
                case UpdateMessage u:
                    if (a.State != SessionState.Established)
                    {
                        throw FsmError(a.State, "UPDATE before the session is established");
                    }
                    UpdatesReceived++;
                    _speaker.Rib.OnUpdate(this, u);
                    break;
                case NotificationMessage n:
                    LastError = $"received NOTIFICATION: {n}";
                    // RFC 8538 §4: with the N bit on both ends, any NOTIFICATION but a Hard Reset is a restart: the peer's
                    // routes stay, stale, as when its connection drops (RFC 4724 §4.2).
                    bool keep = a.State == SessionState.Established && NotificationNegotiated && !n.IsHardReset;
                    Log(BgpLogLevel.Warning, LastError + (keep ? "; graceful restart with notification (RFC 8538): keeping its routes as stale" : ""));
                    Drop(a, graceful: n.Code == ErrorCode.Cease && n.Subcode == Subcode.ConnectionCollisionResolution ? null : keep);
                    break;
                case RouteRefreshMessage r:
                    if (a.State != SessionState.Established)
                    {
                        throw FsmError(a.State, "ROUTE-REFRESH before the session is established");
                    }
                    if (HasFamily(r.Afi) && r.Safi == Safi.Unicast && r.Subtype == 0)
                    {
                        _speaker.Rib.Refresh(this, r.Afi);
                    }
                    else
                    {
                        Log(BgpLogLevel.Debug, $"ROUTE-REFRESH for AFI {(ushort)r.Afi} SAFI {(byte)r.Safi} subtype {r.Subtype} ignored");
                    }
                    break;
            }
        }
        catch (BgpProtocolException e)
        {
            Fail(a, e);
        }
    }

    private static BgpProtocolException FsmError(SessionState state, string what) =>
        new(ErrorCode.FiniteStateMachine, state switch
        {
            SessionState.OpenSent => Subcode.UnexpectedInOpenSent,
            SessionState.OpenConfirm => Subcode.UnexpectedInOpenConfirm,
            _ => Subcode.UnexpectedInEstablished,
        }, $"unexpected {what} in {state}");

    private void OnOpen(Attempt a, OpenMessage open)
    {
        if (a.State != SessionState.OpenSent)
        {
            throw FsmError(a.State, "OPEN");
        }
        ValidateOpen(open);
        a.RemoteOpen = open;
        Attempt? other = _attempts.Find(x => x != a && x.State >= SessionState.OpenConfirm);
        if (other is { State: SessionState.Established })
        {
            if (open.GracefulRestart is null)
            {
                // Not a graceful restart: the established session wins (RFC 4271 §6.8).
                Close(a, new NotificationMessage(ErrorCode.Cease, Subcode.ConnectionCollisionResolution, ReadOnlyMemory<byte>.Empty), null);
                return;
            }
            // RFC 4724 §4.2: the peer restarted while its old session still looked up. The old TCP connection is closed
            // without a NOTIFICATION and handled as a restart: the peer's routes stay, stale, for the new session.
            Log(BgpLogLevel.Info, "a new connection while the session is established: the peer restarted (RFC 4724 §4.2), closing the old connection");
            LastError = "the peer restarted (new connection while established)";
            Close(other, null, graceful: true);
            other = null;
        }
        // RFC 4271 §6.8: with two connections, the one started by the speaker with the higher BGP id survives.
        if (other is not null)
        {
            bool keepOutgoing = _speaker.Config.RouterId > open.BgpIdentifier;
            Attempt loser = (a.Connection.Outgoing == keepOutgoing) ? other : a;
            Log(BgpLogLevel.Info, $"connection collision: keeping the {(keepOutgoing ? "outgoing" : "incoming")} connection");
            Close(loser, new NotificationMessage(ErrorCode.Cease, Subcode.ConnectionCollisionResolution, ReadOnlyMemory<byte>.Empty), null);
            if (loser == a)
            {
                return;
            }
        }
        // RFC 4271 §4.2: the smaller hold time; 0 turns the timers off.
        ushort hold = Math.Min(Config.HoldTime, open.HoldTime);
        a.HoldTime = TimeSpan.FromSeconds(hold);
        NegotiatedHoldTime = a.HoldTime;
        a.Connection.Options = new CodecOptions(open.FourOctetAs, open.ExtendedMessage);
        a.State = SessionState.OpenConfirm;
        StateChangedAt = _speaker.Time.GetUtcNow();
        a.Connection.Send(MessageEncoder.Keepalive());
        ArmHold(a);
        if (hold > 0)
        {
            TimeSpan ka = Config.KeepaliveTime is { } k && k > 0 && k < hold ? TimeSpan.FromSeconds(k) : TimeSpan.FromSeconds(hold / 3.0);
            a.Keepalive = _speaker.Time.CreateTimer(_ => _speaker.Loop.Post(() => OnKeepaliveTimer(a)), null, ka, ka);
        }
    }

    private void ValidateOpen(OpenMessage open)
    {
        // RFC 4271 §6.2 and RFC 6793 §4.1.
        if (open.As != Config.RemoteAs)
        {
            throw new BgpProtocolException(ErrorCode.OpenMessage, Subcode.BadPeerAs,
                $"peer says AS {open.As}, configured AS {Config.RemoteAs}", [(byte)(open.MyAsField >> 8), (byte)open.MyAsField]);
        }
        if (open.BgpIdentifier == 0 || (!IsEbgp && open.BgpIdentifier == _speaker.Config.RouterId))
        {
            throw new BgpProtocolException(ErrorCode.OpenMessage, Subcode.BadBgpIdentifier,
                $"BGP identifier {open.RouterId} {(open.BgpIdentifier == 0 ? "is zero" : "is our own")}");
        }
        if (open.HoldTime is 1 or 2)
        {
            throw new BgpProtocolException(ErrorCode.OpenMessage, Subcode.UnacceptableHoldTime, $"hold time {open.HoldTime} s (must be 0 or at least 3)");
        }
    }

    private void OnEstablished(Attempt a)
    {
        // RFC 4271 §6.8: once one connection is established, the other goes.
        foreach (Attempt other in _attempts.Where(x => x != a).ToList())
        {
            Close(other, new NotificationMessage(ErrorCode.Cease, Subcode.ConnectionCollisionResolution, ReadOnlyMemory<byte>.Empty), null);
        }
        OpenMessage open = a.RemoteOpen!;
        a.State = SessionState.Established;
        _failures = 0;
        LastError = null;
        EstablishedAt = _speaker.Time.GetUtcNow();
        StateChangedAt = EstablishedAt.Value;
        IReadOnlyList<(Afi Afi, Safi Safi)> offered = open.Multiprotocol.Count == 0 && open.OtherFamilies.Count == 0
            ? [(Afi.IPv4, Safi.Unicast)]
            : open.Multiprotocol;
        Families = [.. Config.Families.Where(f => offered.Any(o => o.Afi == f))];
        _familyMask = 0;
        foreach (Afi f in Families)
        {
            _familyMask |= 1 << (int)f;
        }
        PeerRouteRefresh = open.RouteRefresh;
        PeerGracefulRestart = open.GracefulRestart;
        if (RoutesStale)
        {
            KeepOnlyForwardedStale(open.GracefulRestart);
        }
        UpdatesReceived = 0;
        UpdatesSent = 0;
        PrefixesReceived = 0;
        PrefixesRefused = 0;
        RefusedFamilies = 0;
        Log(BgpLogLevel.Info, $"established (AS {open.As}, router id {open.RouterId}, hold {a.HoldTime.TotalSeconds:0} s, families {string.Join(",", Families)})");
        _speaker.Rib.OnPeerUp(this);
    }

    /// <summary>Both ends announced graceful restart on the established session.</summary>
    internal bool GracefulRestartNegotiated => Config.GracefulRestart && PeerGracefulRestart is not null;

    /// <summary>Both ends set graceful restart's N bit (RFC 8538): a NOTIFICATION other than Hard Reset keeps the routes.
    /// This speaker sets it whenever it announces graceful restart.</summary>
    public bool NotificationNegotiated => GracefulRestartNegotiated && PeerGracefulRestart!.Notification;

    /// <summary>The Cease subcodes that end a session for good, sent as Hard Reset once the N bit is negotiated (RFC 8538
    /// §4: a MUST for Maximum Number of Prefixes Reached, a SHOULD for Administrative Shutdown and Peer De-configured).
    /// BFD Down too: the path to the peer is gone, stale routes through it would lead nowhere. Administrative Reset and
    /// Other Configuration Change (a reset, the session comes back) stay graceful.</summary>
    private static bool EndsForGood(NotificationMessage n) => n.Code == ErrorCode.Cease
        && n.Subcode is Subcode.MaximumPrefixesReached or Subcode.AdministrativeShutdown or Subcode.PeerDeconfigured or Subcode.BfdDown;

    /// <summary>What this speaker sends to end the established session <paramref name="a"/> with <paramref name="n"/>, and
    /// whether the peer's routes stay (stale): with the N bit negotiated, a Hard Reset around a NOTIFICATION that ends it for
    /// good (both ends drop the routes), any other as it is (both ends keep them, RFC 8538 §4).</summary>
    private (NotificationMessage Sent, bool KeepRoutes) ForSession(Attempt a, NotificationMessage n)
    {
        if (a.State != SessionState.Established || !NotificationNegotiated)
        {
            return (n, false);
        }
        return EndsForGood(n) ? (NotificationMessage.HardReset(n), false) : (n, true);
    }

    /// <summary>RFC 4724 §4.2: when the session is back, the stale routes of a family go at once if the new OPEN has no
    /// graceful restart capability, does not list the family, or lists it without the Forwarding State bit (the
    /// peer did not keep forwarding, so the old routes may lead nowhere), or the family is no longer negotiated.</summary>
    private void KeepOnlyForwardedStale(GracefulRestartCapability? now)
    {
        foreach (Afi f in Enum.GetValues<Afi>())
        {
            bool forwarded = now is not null && HasFamily(f) && now.Families.Any(x => x.Afi == f && x.Safi == Safi.Unicast && x.ForwardingPreserved);
            if (!forwarded && RoutesStale)
            {
                string why = now is null ? "without the graceful restart capability"
                    : HasFamily(f) ? $"without the forwarding state bit for {f}" : $"without {f}";
                Log(BgpLogLevel.Info, $"back {why}: its stale {f} routes go now (RFC 4724 §4.2)");
                _speaker.Rib.FlushStale(this, f);
            }
        }
    }

    /// <summary>The families whose routes stay (stale) when the session drops without a NOTIFICATION: those the
    /// peer's graceful restart capability lists (RFC 4724 §4.2), of the session's families.</summary>
    private List<Afi> FamiliesToKeep(bool? graceful)
    {
        if (graceful != true || !GracefulRestartNegotiated || PeerGracefulRestart!.RestartTime == 0)
        {
            return [];
        }
        return [.. Families.Where(f => PeerGracefulRestart.Families.Any(x => x.Afi == f && x.Safi == Safi.Unicast))];
    }

    /// <summary>How long the peer's routes stay stale: the restart time it announced, at most <see cref="PeerConfig.MaxRestartTime"/>.</summary>
    internal TimeSpan RestartTime
    {
        get
        {
            TimeSpan announced = TimeSpan.FromSeconds(PeerGracefulRestart?.RestartTime ?? 0);
            return Config.MaxRestartTime is { } max && max < announced ? max : announced;
        }
    }

    private void OnConnectionClosed(Attempt a, Exception? e)
    {
        if (!_attempts.Contains(a))
        {
            return;
        }
        if (e is BgpProtocolException p)
        {
            Fail(a, p);
            return;
        }
        LastError = e is null ? "connection closed by the peer" : $"connection lost: {e.Message}";
        Log(BgpLogLevel.Warning, LastError);
        Drop(a, graceful: true);
    }

    /// <summary>Sends the NOTIFICATION for a protocol error and drops the connection.</summary>
    private void Fail(Attempt a, BgpProtocolException e)
    {
        (NotificationMessage sent, bool keep) = ForSession(a, e.ToNotification());
        LastError = $"sent NOTIFICATION: {(sent.IsHardReset ? "hard reset: " : "")}{NotificationMessage.Describe(e.Code, e.Subcode)}: {e.Message}";
        Log(BgpLogLevel.Warning, LastError + (keep ? "; graceful restart with notification (RFC 8538): keeping its routes as stale" : ""));
        Close(a, sent, graceful: keep || e.Code == ErrorCode.HoldTimerExpired);
    }

    private void Close(Attempt a, NotificationMessage? notification, bool? graceful)
    {
        if (notification is not null)
        {
            a.Connection.Send(MessageEncoder.Notification(notification));
        }
        a.Connection.Close(TimeSpan.FromSeconds(1));
        Drop(a, graceful);
    }

    /// <summary>
    /// Forgets a connection. When it was the established one, the peer's routes go (or, when the peer can
    /// restart gracefully and the session ended without a NOTIFICATION, they are kept as stale, RFC 4724
    /// §4.2). <paramref name="graceful"/> null: a collision loser; nothing else changes while another connection
    /// remains.
    /// </summary>
    private void Drop(Attempt a, bool? graceful)
    {
        if (!_attempts.Remove(a))
        {
            return;
        }
        a.Hold?.Dispose();
        a.Keepalive?.Dispose();
        a.Connection.Close(TimeSpan.FromSeconds(1));
        if (a.State == SessionState.Established)
        {
            EstablishedAt = null;
            List<Afi> keep = FamiliesToKeep(graceful);
            _speaker.Rib.OnPeerDown(this, keep);
            if (RoutesStale)
            {
                StartRestartTimer(RestartTime);
            }
        }
        StateChangedAt = _speaker.Time.GetUtcNow();
        // Another connection lives on (a collision's winner): it carries the session. Otherwise, even when this
        // one lost a collision (both ends can each close one of two crossing connections), start again.
        if (_attempts.Count > 0)
        {
            return;
        }
        SetBase(SessionState.Idle);
        if (_enabled)
        {
            // RFC 4271 §8.1.1 (DampPeerOscillations): wait longer after each failure before starting again.
            _failures++;
            double factor = Math.Pow(2, Math.Min(_failures - 1, 6));
            TimeSpan wait = TimeSpan.FromTicks(Math.Min(Config.ConnectRetryMax.Ticks, (long)(Config.ConnectRetry.Ticks * factor)));
            if (Config.Passive)
            {
                SetBase(SessionState.Active);
                return;
            }
            _idleHold?.Dispose();
            _idleHold = _speaker.Time.CreateTimer(_ => _speaker.Loop.Post(() =>
            {
                if (_enabled && _attempts.Count == 0 && _baseState == SessionState.Idle)
                {
                    StartConnecting();
                }
            }), null, Jitter(wait), Timeout.InfiniteTimeSpan);
        }
    }

    private void StartRestartTimer(TimeSpan restartTime)
    {
        _restartTimer?.Dispose();
        _restartTimer = _speaker.Time.CreateTimer(_ => _speaker.Loop.Post(() =>
        {
            if (RoutesStale)
            {
                Log(BgpLogLevel.Info, "restart time over: its stale routes go");
                _speaker.Rib.FlushStale(this);
            }
        }), null, restartTime, Timeout.InfiniteTimeSpan);
    }

    internal void StopRestartTimer()
    {
        _restartTimer?.Dispose();
        _restartTimer = null;
    }

    /// <summary>RFC 4271 §8.1.2 event 2 (ManualStop): Cease with an RFC 8203 message; no automatic restart. With the N
    /// bit negotiated (RFC 8538) an Administrative Shutdown or Peer De-configured goes as a Hard Reset, so the peer drops
    /// our routes at once. With <paramref name="restarting"/> (this speaker stops to start again, RFC 4724 §4.1), an
    /// established session with graceful restart on both ends keeps our routes at the peer while we are away: closed
    /// with Cease / Administrative Reset when the N bit is negotiated (the peer learns why), else without a
    /// NOTIFICATION (any NOTIFICATION would make a peer without RFC 8538 withdraw them).</summary>
    public void Stop(string? message, byte subcode = Subcode.AdministrativeShutdown, bool restarting = false) => Stop(message, subcode, restarting, resetting: false);

    private void Stop(string? message, byte subcode, bool restarting, bool resetting)
    {
        _enabled = false;
        _connectCts?.Cancel();
        _connecting = false;
        _connectRetry?.Dispose();
        _idleHold?.Dispose();
        bool kept = false;
        foreach (Attempt a in _attempts.ToList())
        {
            NotificationMessage? sent;
            bool keep = false;
            if (restarting && a.State == SessionState.Established && GracefulRestartNegotiated)
            {
                sent = NotificationNegotiated ? NotificationMessage.Shutdown(message, Subcode.AdministrativeReset) : null;
                Log(BgpLogLevel.Info, sent is null
                    ? "closing without a NOTIFICATION: the peer keeps our routes while we restart (RFC 4724)"
                    : "closing with Cease / administrative reset: the peer keeps our routes while we restart (RFC 8538)");
            }
            else
            {
                (sent, keep) = ForSession(a, NotificationMessage.Shutdown(message, subcode));
                // Only a reset comes back: a stopped peer keeps nothing.
                keep &= resetting;
            }
            Close(a, sent, keep);
            kept |= keep;
        }
        if (!kept)
        {
            StopRestartTimer();
            if (RoutesStale)
            {
                _speaker.Rib.FlushStale(this);
            }
        }
        SetBase(SessionState.Idle);
    }

    /// <summary>Resets the session (a configuration change it must see, RFC 4486 Cease / Other Configuration Change):
    /// closed with the Cease, then started again at once. With the N bit negotiated both ends keep the routes, stale,
    /// until the new session's End-of-RIB (RFC 8538), so a reset drops no traffic.</summary>
    internal void Reset(string message)
    {
        if (!_enabled)
        {
            return;
        }
        Stop(message, Subcode.OtherConfigurationChange, restarting: false, resetting: true);
        Start();
    }

    /// <summary>Closes the session with a NOTIFICATION from the RIB (e.g. maximum prefixes).</summary>
    internal void Shutdown(BgpProtocolException reason)
    {
        if (Established is { } a)
        {
            Fail(a, reason);
        }
    }

    /// <summary>
    /// RFC 5882 §3.2: the BFD session to this peer went down, so the path to it is gone: the BGP session is taken down
    /// at once, its routes withdrawn (not kept as stale: the peer is unreachable, not restarting), with Cease / BFD Down
    /// (RFC 9384) in case the peer can still hear it. The peer stays enabled and connects again as after any failure.
    /// Returns whether a session or connection attempt was closed.
    /// </summary>
    public bool CloseForBfd(string reason)
    {
        if (_attempts.Count == 0)
        {
            return false;
        }
        foreach (Attempt a in _attempts.ToList())
        {
            LastError = $"BFD: {reason}";
            Close(a, ForSession(a, NotificationMessage.Shutdown(null, Subcode.BfdDown)).Sent, graceful: false);
        }
        return true;
    }

    /// <summary>Sends a ROUTE-REFRESH for <paramref name="family"/> (RFC 2918), when the peer supports it.</summary>
    public bool RequestRefresh(Afi family)
    {
        if (Established is not { } a || !PeerRouteRefresh || !Families.Contains(family))
        {
            return false;
        }
        a.Connection.Send(MessageEncoder.RouteRefresh(new RouteRefreshMessage(family, Safi.Unicast)));
        return true;
    }

    private TimeSpan Jitter(TimeSpan t)
    {
        // RFC 4271 §10: jitter timers by a factor between 0.75 and 1.
        double f = 0.75 + (_speaker.Random.NextDouble() * 0.25);
        return TimeSpan.FromTicks((long)(t.Ticks * f));
    }
}
