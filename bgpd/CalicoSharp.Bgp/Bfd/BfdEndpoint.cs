using System.Net;
using System.Security.Cryptography;

namespace CalicoSharp.Bgp.Bfd;

/// <summary>Sends a session's packets; the daemon's is UDP (RFC 5881), the tests' a list.</summary>
public interface IBfdTransport
{
    /// <summary>A session starts: open what its packets leave through (RFC 5881 §4: one source port per session).</summary>
    void Open(BfdSession session);

    void Send(BfdSession session, ReadOnlySpan<byte> packet);

    void Close(BfdSession session);
}

/// <summary>
/// A loop that runs an endpoint's deadlines itself (bgpd's BFD thread): it waits until
/// <see cref="BfdEndpoint.NextDeadline"/>, then calls <see cref="BfdEndpoint.RunDue"/>, and is told when a new
/// deadline is earlier than the one it may be waiting for.
/// </summary>
public interface IBfdDeadlineLoop : IEventLoop
{
    /// <summary>The earliest deadline moved earlier; called on whatever thread scheduled it.</summary>
    void DeadlineAdvanced();
}

/// <summary>The deadlines a session keeps (RFC 5880 §6.8.7 transmit, §6.8.4 detection) and the end of its AdminDown linger.</summary>
internal enum BfdDeadline
{
    Transmit,
    Detect,
    Close,
}

/// <summary>
/// This system's BFD sessions, one per peer address: demultiplexes received packets (RFC 5880 §6.8.6, RFC 5881 §3
/// and §5), counts what it discards and why, and reports state changes. Every session's timers are entries of one
/// deadline queue (earliest first); all of it runs on one event loop. On an <see cref="IBfdDeadlineLoop"/> (bgpd's
/// BFD thread) that loop waits for the earliest deadline; on any other loop (the tests' manual loop and fake clock)
/// the endpoint keeps one timer of its <see cref="TimeProvider"/> armed for it. Either way a session costs no timer
/// and no thread.
/// </summary>
public sealed class BfdEndpoint
{
    private readonly Dictionary<uint, BfdSession> _byDiscriminator = [];
    private readonly Dictionary<IPAddress, BfdSession> _byPeer = [];
    private readonly long[] _discards = new long[Enum.GetValues<BfdDiscard>().Length];
    private readonly IBfdTransport _transport;
    private readonly PriorityQueue<Entry, (long At, long Sequence)> _deadlines = new();
    private readonly IBfdDeadlineLoop? _driver;
    private long _sequence;
    private ITimer? _timer;
    private long _timerDue = long.MaxValue;
    private bool _running;

    private readonly record struct Entry(BfdSession Session, BfdDeadline Kind, long Generation);

    public BfdEndpoint(TimeProvider time, IEventLoop loop, IBfdTransport transport, Random? random = null)
    {
        Time = time ?? throw new ArgumentNullException(nameof(time));
        Loop = loop ?? throw new ArgumentNullException(nameof(loop));
        _transport = transport ?? throw new ArgumentNullException(nameof(transport));
        Random = random ?? new Random();
        _driver = loop as IBfdDeadlineLoop;
    }

    public TimeProvider Time { get; }

    public IEventLoop Loop { get; }

    internal Random Random { get; }

    /// <summary>A session changed state (session, the state it left). On the loop.</summary>
    public event Action<BfdSession, BfdState>? StateChanged;

    public IReadOnlyCollection<BfdSession> Sessions => _byPeer.Values;

    /// <summary>Received packets, those accepted and those discarded.</summary>
    public long Received { get; private set; }

    public long Discarded { get; private set; }

    public long DiscardedFor(BfdDiscard reason) => _discards[(int)reason];

    public BfdSession? Find(IPAddress peer) => _byPeer.GetValueOrDefault(Normalize(peer));

    private static IPAddress Normalize(IPAddress a) => a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a;

    /// <summary>Starts a session to <paramref name="peer"/> (one per peer address).</summary>
    public BfdSession Add(IPAddress peer, IPAddress? local, BfdTimers timers, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(peer);
        ArgumentNullException.ThrowIfNull(timers);
        timers.Validate();
        peer = Normalize(peer);
        if (_byPeer.TryGetValue(peer, out BfdSession? existing) && !existing.Closing)
        {
            throw new ArgumentException($"BFD session to {peer} exists already");
        }
        if (existing is not null)
        {
            // A session still saying AdminDown after its removal gives way to the new one.
            Forget(existing);
        }
        var session = new BfdSession(this, peer, local, NewDiscriminator(), timers, name);
        _byDiscriminator[session.LocalDiscriminator] = session;
        _byPeer[peer] = session;
        _transport.Open(session);
        session.Start();
        return session;
    }

    /// <summary>Takes a session down administratively (§6.8.16) and forgets it once the remote has been told.</summary>
    public void Remove(BfdSession session)
    {
        ArgumentNullException.ThrowIfNull(session);
        session.BeginClose(() => Forget(session));
    }

    private void Forget(BfdSession session)
    {
        session.Dispose();
        _byDiscriminator.Remove(session.LocalDiscriminator);
        if (_byPeer.TryGetValue(session.Peer, out BfdSession? s) && s == session)
        {
            _byPeer.Remove(session.Peer);
        }
        _transport.Close(session);
    }

    /// <summary>Ends every session at once, without telling the remotes (the process is stopping).</summary>
    public void Clear()
    {
        foreach (BfdSession s in _byDiscriminator.Values.ToList())
        {
            Forget(s);
        }
        _deadlines.Clear();
        _timer?.Dispose();
        _timer = null;
        _timerDue = long.MaxValue;
    }

    /// <summary>Deadlines queued, those of ended or re-armed timers included until they come up (tests).</summary>
    public int QueuedDeadlines => _deadlines.Count;

    /// <summary>The earliest deadline of any session, in <see cref="TimeProvider.GetTimestamp"/> units;
    /// <see cref="long.MaxValue"/> when there is none.</summary>
    public long NextDeadline
    {
        get
        {
            while (_deadlines.TryPeek(out Entry e, out (long At, long Sequence) p))
            {
                if (e.Session.IsCurrent(e.Kind, e.Generation))
                {
                    return p.At;
                }
                _deadlines.Dequeue();
            }
            return long.MaxValue;
        }
    }

    /// <summary>Runs every deadline that is due, earliest first (equal ones in the order they were set), and returns how
    /// many ran. A deadline set while they run waits for the next call, even when already due.</summary>
    public int RunDue()
    {
        long now = Time.GetTimestamp();
        int ran = 0;
        _running = true;
        try
        {
            long last = _sequence;
            while (_deadlines.TryPeek(out Entry e, out (long At, long Sequence) p) && p.At <= now && p.Sequence <= last)
            {
                _deadlines.Dequeue();
                if (e.Session.IsCurrent(e.Kind, e.Generation))
                {
                    ran++;
                    e.Session.OnDeadline(e.Kind);
                }
            }
        }
        finally
        {
            _running = false;
        }
        if (_driver is null)
        {
            ArmTimer(NextDeadline);
        }
        return ran;
    }

    /// <summary>A session's deadline at <paramref name="at"/> (timestamp units); the entry counts while the session's
    /// generation of that deadline is still <paramref name="generation"/>.</summary>
    internal void Schedule(BfdSession session, BfdDeadline kind, long generation, long at)
    {
        long before = _deadlines.TryPeek(out _, out (long At, long Sequence) head) ? head.At : long.MaxValue;
        _deadlines.Enqueue(new Entry(session, kind, generation), (at, ++_sequence));
        if (at >= before)
        {
            return;
        }
        if (_driver is not null)
        {
            _driver.DeadlineAdvanced();
        }
        else if (!_running)
        {
            ArmTimer(at);
        }
    }

    /// <summary>The timestamp <paramref name="after"/> from now.</summary>
    internal long Deadline(TimeSpan after)
    {
        long f = Time.TimestampFrequency;
        long delta = f == TimeSpan.TicksPerSecond ? after.Ticks : (long)(after.Ticks * ((double)f / TimeSpan.TicksPerSecond));
        return Time.GetTimestamp() + delta;
    }

    private void ArmTimer(long at)
    {
        if (at == _timerDue)
        {
            return;
        }
        _timerDue = at;
        _timer ??= Time.CreateTimer(_ => Loop.Post(() =>
        {
            _timerDue = long.MaxValue;
            RunDue();
        }), null, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
        _timer.Change(at == long.MaxValue ? Timeout.InfiniteTimeSpan : Time.GetElapsedTime(Time.GetTimestamp(), Math.Max(at, Time.GetTimestamp())), Timeout.InfiniteTimeSpan);
    }

    /// <summary>§6.8.1: a nonzero local discriminator unique on this system, chosen at random.</summary>
    private uint NewDiscriminator()
    {
        while (true)
        {
            uint d = (uint)RandomNumberGenerator.GetInt32(1, int.MaxValue);
            if (!_byDiscriminator.ContainsKey(d))
            {
                return d;
            }
        }
    }

    /// <summary>
    /// One received datagram, with its source and the TTL (hop limit) it arrived with. Applies every discard rule of
    /// RFC 5880 §6.8.6 and RFC 5881 §5, in the RFC's order, counts a discard by its reason, and hands a good packet
    /// to its session. Never throws on what the network sends.
    /// </summary>
    public BfdDiscard Receive(ReadOnlySpan<byte> datagram, IPAddress source, int ttl)
    {
        ArgumentNullException.ThrowIfNull(source);
        Received++;
        BfdDiscard why = Demultiplex(datagram, Normalize(source), ttl, out BfdSession? session, out BfdControlPacket packet);
        if (why != BfdDiscard.None)
        {
            Discarded++;
            _discards[(int)why]++;
            return why;
        }
        session!.Receive(packet);
        return BfdDiscard.None;
    }

    private BfdDiscard Demultiplex(ReadOnlySpan<byte> datagram, IPAddress source, int ttl, out BfdSession? session, out BfdControlPacket packet)
    {
        session = null;
        // RFC 5881 §5: single hop, without authentication: anything but TTL 255 came from further away.
        if (ttl != 255)
        {
            packet = default;
            return BfdDiscard.BadTtl;
        }
        BfdDiscard why = BfdControlPacket.TryRead(datagram, out packet);
        if (why != BfdDiscard.None)
        {
            return why;
        }
        if (packet.YourDiscriminator != 0)
        {
            if (!_byDiscriminator.TryGetValue(packet.YourDiscriminator, out session))
            {
                return BfdDiscard.UnknownYourDiscriminator;
            }
            if (!session.Peer.Equals(source))
            {
                // One session per peer address: another address naming it is not its peer.
                session = null;
                return BfdDiscard.WrongSource;
            }
        }
        else
        {
            if (packet.State is not (BfdState.Down or BfdState.AdminDown))
            {
                return BfdDiscard.ZeroYourDiscriminatorNotDown;
            }
            // RFC 5881 §3: with Your Discriminator zero, the session is found by the source address.
            if (!_byPeer.TryGetValue(source, out session))
            {
                return BfdDiscard.NoSessionForSource;
            }
        }
        if (packet.Authentication)
        {
            // No authentication is configured on this system (§6.8.6: A bit set, bfd.AuthType zero).
            session = null;
            return BfdDiscard.AuthenticationNotConfigured;
        }
        return BfdDiscard.None;
    }

    internal void Send(BfdSession session, ReadOnlySpan<byte> packet) => _transport.Send(session, packet);

    internal void OnStateChanged(BfdSession session, BfdState old) => StateChanged?.Invoke(session, old);
}
