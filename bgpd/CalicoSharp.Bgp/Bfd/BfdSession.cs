using System.Net;

namespace CalicoSharp.Bgp.Bfd;

/// <summary>
/// One single-hop BFD session in asynchronous mode, active role (RFC 5880 §6.1, §6.8). Every method runs on the
/// endpoint's event loop; its timers (transmit, detection, the end of the AdminDown linger) are deadlines in the
/// endpoint's queue, so a session costs no timer and no thread. A deadline is re-armed by bumping its generation:
/// the queue's older entry for it no longer counts.
/// </summary>
public sealed class BfdSession
{
    private readonly BfdEndpoint _endpoint;
    private readonly long[] _generation = new long[3];
    private bool _started;
    private bool _closed;
    private Action? _onClosed;

    // RFC 5880 §6.8.1 state variables; intervals in microseconds as on the wire.
    private uint _desiredMinTx;
    private uint _requiredMinRx;
    private uint _remoteMinRx = 1;
    private uint _remoteDesiredTx;
    private byte _remoteMultiplier;
    private bool _remoteDemand;

    // The values in force while a Poll Sequence is under way (§6.8.3): an increased transmit interval and a reduced
    // receive interval take effect only when the Final arrives.
    private uint _txInForce;
    private uint _rxInForce;
    private bool _pollActive;
    private long _lastReceived;
    private long _detectDeadline;
    private long _detectDue;
    private bool _detectArmed;

    internal BfdSession(BfdEndpoint endpoint, IPAddress peer, IPAddress? local, uint localDiscriminator, BfdTimers timers, string? name)
    {
        _endpoint = endpoint;
        Peer = peer;
        Local = local;
        Name = name ?? peer.ToString();
        LocalDiscriminator = localDiscriminator;
        Timers = timers;
        _requiredMinRx = BfdTimers.Micros(timers.MinRx);
        _desiredMinTx = BfdTimers.Micros(timers.IdleTx);
        _txInForce = _desiredMinTx;
        _rxInForce = _requiredMinRx;
        StateChangedAt = endpoint.Time.GetUtcNow();
    }

    public IPAddress Peer { get; }

    /// <summary>The address packets leave from (null: the kernel's choice toward the peer).</summary>
    public IPAddress? Local { get; }

    public string Name { get; }

    public BfdTimers Timers { get; private set; }

    public BfdState State { get; private set; } = BfdState.Down;

    public BfdState RemoteState { get; private set; } = BfdState.Down;

    public BfdDiagnostic LocalDiagnostic { get; private set; }

    public BfdDiagnostic RemoteDiagnostic { get; private set; }

    public uint LocalDiscriminator { get; }

    public uint RemoteDiscriminator { get; private set; }

    public DateTimeOffset StateChangedAt { get; private set; }

    public long PacketsSent { get; private set; }

    public long PacketsReceived { get; private set; }

    /// <summary>Times the session went Up, and came down from Up.</summary>
    public long UpTransitions { get; private set; }

    public long DownTransitions { get; private set; }

    /// <summary>A Poll Sequence is under way (packets carry P until a Final arrives).</summary>
    public bool PollActive => _pollActive;

    /// <summary>The interval between this system's packets before jitter: §6.8.7, the larger of what we want and
    /// what the remote can receive.</summary>
    public TimeSpan TransmitInterval => FromMicros(Math.Max(_txInForce, _remoteMinRx));

    /// <summary>§6.8.4: how long without a packet before the session is declared down; zero until the remote's
    /// multiplier is known.</summary>
    public TimeSpan DetectionTime => _remoteMultiplier == 0 ? TimeSpan.Zero : FromMicros((ulong)_remoteMultiplier * Math.Max(_rxInForce, _remoteDesiredTx));

    /// <summary>What the remote last asked: its Required Min RX and Desired Min TX intervals and multiplier.</summary>
    public TimeSpan RemoteMinRx => FromMicros(_remoteMinRx);

    public TimeSpan RemoteMinTx => FromMicros(_remoteDesiredTx);

    public byte RemoteMultiplier => _remoteMultiplier;

    /// <summary>bfd.DesiredMinTxInterval as sent now: the idle interval until Up (§6.8.3), then the configured one.</summary>
    public TimeSpan DesiredMinTx => FromMicros(_desiredMinTx);

    /// <summary>The detection time that last expired (the log says how long the remote was silent).</summary>
    public TimeSpan ExpiredDetectionTime { get; private set; }

    internal bool Closing { get; private set; }

    private static TimeSpan FromMicros(ulong us) => TimeSpan.FromTicks((long)Math.Min(us * TimeSpan.TicksPerMicrosecond, (ulong)TimeSpan.MaxValue.Ticks));

    internal void Start()
    {
        _started = true;
        Transmit(final: false);
    }

    /// <summary>Whether a queued deadline is still the one in force.</summary>
    internal bool IsCurrent(BfdDeadline kind, long generation) => !_closed && _generation[(int)kind] == generation;

    private void Arm(BfdDeadline kind, long at) => _endpoint.Schedule(this, kind, ++_generation[(int)kind], at);

    internal void OnDeadline(BfdDeadline kind)
    {
        switch (kind)
        {
            case BfdDeadline.Transmit:
                Transmit(final: false);
                break;
            case BfdDeadline.Detect:
                OnDetectionDeadline();
                break;
            case BfdDeadline.Close:
                Action? closed = _onClosed;
                Dispose();
                closed?.Invoke();
                break;
        }
    }

    /// <summary>New timers from the configuration, applied to the running session: a changed interval starts a Poll
    /// Sequence (§6.8.3); the session stays as it is.</summary>
    public void Configure(BfdTimers timers)
    {
        ArgumentNullException.ThrowIfNull(timers);
        timers.Validate();
        if (timers == Timers || _closed)
        {
            return;
        }
        Timers = timers;
        SetIntervals(State == BfdState.Up ? BfdTimers.Micros(timers.MinTx) : BfdTimers.Micros(timers.IdleTx), BfdTimers.Micros(timers.MinRx));
        Transmit(final: false);
    }

    /// <summary>§6.8.3: changes bfd.DesiredMinTxInterval and bfd.RequiredMinRxInterval. A higher transmit interval
    /// and a lower receive interval wait for the Poll Sequence's Final while the session is Up; the others apply now.</summary>
    private void SetIntervals(uint desiredTx, uint requiredRx)
    {
        if (desiredTx == _desiredMinTx && requiredRx == _requiredMinRx)
        {
            return;
        }
        bool up = State == BfdState.Up;
        _desiredMinTx = desiredTx;
        _requiredMinRx = requiredRx;
        if (!up || desiredTx < _txInForce)
        {
            _txInForce = desiredTx;
        }
        if (!up || requiredRx > _rxInForce)
        {
            _rxInForce = requiredRx;
        }
        _pollActive = true;
    }

    /// <summary>A packet that passed §6.8.6's discard rules and selected this session: the rest of §6.8.6.</summary>
    internal void Receive(in BfdControlPacket p)
    {
        if (_closed)
        {
            return;
        }
        PacketsReceived++;
        RemoteDiscriminator = p.MyDiscriminator;
        RemoteState = p.State;
        RemoteDiagnostic = p.Diagnostic;
        _remoteDemand = p.Demand;
        _remoteMinRx = p.RequiredMinRxInterval;
        _remoteDesiredTx = p.DesiredMinTxInterval;
        _remoteMultiplier = p.DetectMultiplier;
        if (p.Final && _pollActive)
        {
            // §6.5: the Final ends the Poll Sequence; the new intervals are now in force on both sides.
            _pollActive = false;
            _txInForce = _desiredMinTx;
            _rxInForce = _requiredMinRx;
        }
        _lastReceived = _endpoint.Time.GetTimestamp();
        ArmDetection();
        if (State == BfdState.AdminDown || Closing)
        {
            return;
        }
        if (p.State == BfdState.AdminDown)
        {
            if (State != BfdState.Down)
            {
                SetState(BfdState.Down, BfdDiagnostic.NeighborSignaledSessionDown);
            }
        }
        else if (State == BfdState.Down)
        {
            if (p.State == BfdState.Down)
            {
                SetState(BfdState.Init, BfdDiagnostic.None);
            }
            else if (p.State == BfdState.Init)
            {
                SetState(BfdState.Up, BfdDiagnostic.None);
            }
        }
        else if (State == BfdState.Init)
        {
            if (p.State is BfdState.Init or BfdState.Up)
            {
                SetState(BfdState.Up, BfdDiagnostic.None);
            }
        }
        else if (p.State == BfdState.Down)
        {
            SetState(BfdState.Down, BfdDiagnostic.NeighborSignaledSessionDown);
        }
        if (p.Poll)
        {
            // §6.8.6: answer a Poll with a Final at once, whatever the transmit timer says.
            Transmit(final: true);
        }
    }

    private void SetState(BfdState next, BfdDiagnostic diagnostic)
    {
        BfdState old = State;
        State = next;
        if (diagnostic != BfdDiagnostic.None || next == BfdState.Up)
        {
            LocalDiagnostic = diagnostic;
        }
        StateChangedAt = _endpoint.Time.GetUtcNow();
        if (next == BfdState.Up)
        {
            UpTransitions++;
            SetIntervals(BfdTimers.Micros(Timers.MinTx), _requiredMinRx);
        }
        else if (old == BfdState.Up)
        {
            DownTransitions++;
            // §6.8.3: not Up, no faster than the idle rate (at least 1 s).
            SetIntervals(BfdTimers.Micros(Timers.IdleTx), _requiredMinRx);
        }
        _endpoint.OnStateChanged(this, old);
        // The remote learns of the change now rather than an interval later.
        Transmit(final: false);
    }

    private void ArmDetection()
    {
        if (_remoteMultiplier == 0 || !_started)
        {
            return;
        }
        TimeSpan detect = DetectionTime;
        _detectDeadline = _lastReceived + (long)(detect.TotalSeconds * _endpoint.Time.TimestampFrequency);
        if (!_detectArmed || _detectDeadline < _detectDue)
        {
            // Each packet only moves the deadline later; the queued deadline, when it comes up early, re-arms itself
            // for what is left (one queue entry per detection time, not per packet). A shorter detection time re-arms
            // it now.
            _detectArmed = true;
            _detectDue = _detectDeadline;
            Arm(BfdDeadline.Detect, _detectDue);
        }
    }

    private void OnDetectionDeadline()
    {
        if (_closed || !_detectArmed)
        {
            return;
        }
        long now = _endpoint.Time.GetTimestamp();
        if (now < _detectDeadline)
        {
            _detectDue = _detectDeadline;
            Arm(BfdDeadline.Detect, _detectDue);
            return;
        }
        _detectArmed = false;
        ExpiredDetectionTime = DetectionTime;
        // §6.8.1: a Detection Time without a packet forgets the remote; §6.8.4: Init or Up go Down.
        RemoteDiscriminator = 0;
        RemoteState = BfdState.Down;
        _remoteMinRx = 1;
        _remoteDesiredTx = 0;
        _remoteMultiplier = 0;
        _remoteDemand = false;
        if (State is BfdState.Init or BfdState.Up && !Closing)
        {
            SetState(BfdState.Down, BfdDiagnostic.ControlDetectionTimeExpired);
        }
    }

    /// <summary>Sends one Control packet (§6.8.7) and schedules the next, jittered.</summary>
    private void Transmit(bool final)
    {
        if (_closed)
        {
            return;
        }
        // §6.8.7: no periodic packets while the remote asks for none (Required Min RX 0), nor in Demand mode once
        // both ends are Up — except a Final, and the packets of a Poll Sequence.
        bool quiet = _remoteMinRx == 0 || (_remoteDemand && State == BfdState.Up && RemoteState == BfdState.Up);
        if (final || !quiet || _pollActive)
        {
            Span<byte> buffer = stackalloc byte[BfdControlPacket.Size];
            var packet = new BfdControlPacket
            {
                Version = 1,
                Diagnostic = LocalDiagnostic,
                State = State,
                Poll = _pollActive && !final, // §6.8.7: never P and F together
                Final = final,
                DetectMultiplier = Timers.Multiplier,
                MyDiscriminator = LocalDiscriminator,
                YourDiscriminator = RemoteDiscriminator,
                DesiredMinTxInterval = _desiredMinTx,
                RequiredMinRxInterval = _requiredMinRx,
                RequiredMinEchoRxInterval = 0,
            };
            int n = packet.Write(buffer);
            PacketsSent++;
            _endpoint.Send(this, buffer[..n]);
        }
        if (!final)
        {
            Arm(BfdDeadline.Transmit, _endpoint.Deadline(Jittered(TransmitInterval)));
        }
    }

    /// <summary>§6.8.7: each interval reduced by 0-25 % at random, by 10-25 % when bfd.DetectMult is 1.</summary>
    private TimeSpan Jittered(TimeSpan interval)
    {
        double max = Timers.Multiplier == 1 ? 0.90 : 1.0;
        double f = 0.75 + (_endpoint.Random.NextDouble() * (max - 0.75));
        return TimeSpan.FromTicks(Math.Max(1, (long)(interval.Ticks * f)));
    }

    /// <summary>§6.8.16: the session is taken down administratively. It keeps telling the remote (AdminDown) for a
    /// detection time of the remote's, so the remote does not see a failure, then <paramref name="closed"/> runs.</summary>
    internal void BeginClose(Action closed)
    {
        if (Closing || _closed)
        {
            return;
        }
        Closing = true;
        BfdState old = State;
        State = BfdState.AdminDown;
        LocalDiagnostic = BfdDiagnostic.AdministrativelyDown;
        StateChangedAt = _endpoint.Time.GetUtcNow();
        if (old != BfdState.AdminDown)
        {
            _endpoint.OnStateChanged(this, old);
        }
        Transmit(final: false);
        TimeSpan linger = TimeSpan.FromTicks(TransmitInterval.Ticks * Math.Max(Timers.Multiplier, _remoteMultiplier == 0 ? (byte)1 : _remoteMultiplier));
        if (RemoteDiscriminator == 0 || linger > TimeSpan.FromSeconds(5))
        {
            // Nobody listening, or too slow to wait for: one AdminDown packet is all the remote gets.
            linger = TimeSpan.Zero;
        }
        _onClosed = closed;
        Arm(BfdDeadline.Close, _endpoint.Deadline(linger));
    }

    /// <summary>The session ends: its queued deadlines no longer count.</summary>
    internal void Dispose()
    {
        _closed = true;
        _onClosed = null;
    }
}
