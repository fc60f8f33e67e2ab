using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using CalicoSharp.Bgp.Bfd;
using CalicoSharp.Rpc;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The one thread, named <c>bfd</c>, that runs every BFD session: it waits in ppoll(2) on the receiving sockets and
/// an eventfd until the endpoint's earliest deadline (next transmit, detection time, end of an AdminDown linger),
/// then receives what arrived, runs the deadlines that are due and sends from there. No timer, task or thread-pool
/// hop per session or per packet, so 100 sessions at 100 ms cost one thread waking ~2,000 times a second.
/// Other threads (the BGP event loop: configuration, node status, metrics) reach the endpoint through
/// <see cref="Invoke"/>, which holds the loop's lock: one thread at a time sees the sessions.
/// </summary>
public sealed unsafe partial class BfdLoop : IBfdDeadlineLoop, IDisposable
{
    private const int EfdNonblock = 0x800, EfdCloexec = 0x80000;
    private const int MaxDescriptors = 8;

    private readonly object _gate = new();
    private readonly ConcurrentQueue<Action> _posted = new();
    private readonly BfdUdpTransport? _receive;
    private readonly Action<Exception> _onError;
    private readonly int _wakeFd;
    private Thread? _thread;
    private volatile bool _stopping;
    private int _wakePending;
    private bool _disposed;

    /// <param name="time">The clock of the sessions' deadlines (the BGP speaker's).</param>
    /// <param name="transport">What packets leave through.</param>
    /// <param name="receive">The UDP sockets the loop polls for received packets (null: packets come only through
    /// <see cref="BfdEndpoint.Receive"/> calls made under <see cref="Invoke"/>, as in tests).</param>
    /// <param name="onError">An exception a handler threw (the loop goes on).</param>
    public BfdLoop(TimeProvider time, IBfdTransport transport, BfdUdpTransport? receive, Action<Exception> onError, Random? random = null)
    {
        ArgumentNullException.ThrowIfNull(onError);
        _receive = receive;
        _onError = onError;
        _wakeFd = eventfd(0, EfdNonblock | EfdCloexec);
        if (_wakeFd < 0)
        {
            throw new InvalidOperationException($"BFD: eventfd failed (errno {Marshal.GetLastPInvokeError()})");
        }
        Endpoint = new BfdEndpoint(time, this, transport, random);
    }

    public BfdEndpoint Endpoint { get; }

    /// <summary>Times the thread came back from waiting (a deadline, a packet, a wake-up).</summary>
    public long Wakeups { get; private set; }

    public bool IsCurrentThread => _thread is { } t && Environment.CurrentManagedThreadId == t.ManagedThreadId;

    /// <summary>Starts the thread (and, with UDP, the receiving sockets); once.</summary>
    public void Start()
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_thread is not null)
            {
                return;
            }
            _receive?.Listen();
            _thread = new Thread(Run) { IsBackground = true, Name = "bfd" };
            _thread.Start();
        }
    }

    /// <summary>Runs <paramref name="work"/> now on the calling thread, under the loop's lock (the thread is not
    /// inside it meanwhile); a deadline it sets earlier than the thread's wait wakes the thread.</summary>
    public T Invoke<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        lock (_gate)
        {
            return work();
        }
    }

    public void Invoke(Action work)
    {
        ArgumentNullException.ThrowIfNull(work);
        lock (_gate)
        {
            work();
        }
    }

    /// <summary>Runs <paramref name="work"/> on the thread, in order, at its next turn.</summary>
    public void Post(Action work)
    {
        ArgumentNullException.ThrowIfNull(work);
        _posted.Enqueue(work);
        Wake();
    }

    public void DeadlineAdvanced()
    {
        // On the thread itself the next wait is computed afresh anyway.
        if (!IsCurrentThread)
        {
            Wake();
        }
    }

    private void Wake()
    {
        if (Interlocked.Exchange(ref _wakePending, 1) == 0)
        {
            ulong one = 1;
            _ = write(_wakeFd, &one, sizeof(ulong));
        }
    }

    private void Run()
    {
        Posix.PollFd* fds = stackalloc Posix.PollFd[MaxDescriptors];
        TimeProvider time = Endpoint.Time;
        while (!_stopping)
        {
            long next;
            int n = 1;
            lock (_gate)
            {
                RunPosted();
                next = Endpoint.NextDeadline;
                fds[0] = new Posix.PollFd { Fd = _wakeFd, Events = Posix.PollIn };
                if (_receive is not null)
                {
                    foreach (int fd in _receive.ReceiveDescriptors)
                    {
                        if (n < MaxDescriptors)
                        {
                            fds[n++] = new Posix.PollFd { Fd = fd, Events = Posix.PollIn };
                        }
                    }
                }
            }
            Posix.TimeSpec wait;
            Posix.TimeSpec* timeout = null;
            if (next != long.MaxValue)
            {
                long now = time.GetTimestamp();
                long ticks = next <= now ? 0 : time.GetElapsedTime(now, next).Ticks;
                wait = new Posix.TimeSpec { Seconds = ticks / TimeSpan.TicksPerSecond, Nanoseconds = ticks % TimeSpan.TicksPerSecond * 100 };
                timeout = &wait;
            }
            int ready = Posix.ppoll(fds, (nuint)n, timeout, null);
            if (ready < 0 && Marshal.GetLastPInvokeError() != Posix.EIntr)
            {
                _onError(new InvalidOperationException($"BFD: ppoll failed (errno {Marshal.GetLastPInvokeError()})"));
                Thread.Sleep(10);
                continue;
            }
            lock (_gate)
            {
                Wakeups++;
                if (ready > 0 && (fds[0].Revents & Posix.PollIn) != 0)
                {
                    // Cleared before the read: a wake-up after it writes again, so none is lost.
                    Volatile.Write(ref _wakePending, 0);
                    ulong value;
                    _ = read(_wakeFd, &value, sizeof(ulong));
                }
                try
                {
                    for (int i = 1; ready > 0 && i < n; i++)
                    {
                        if ((fds[i].Revents & Posix.PollIn) != 0)
                        {
                            _receive!.ReceiveAll(fds[i].Fd, Endpoint);
                        }
                    }
                    Endpoint.RunDue();
                }
#pragma warning disable CA1031 // One failing handler must not stop every session: it is reported and the loop goes on.
                catch (Exception e)
#pragma warning restore CA1031
                {
                    _onError(e);
                }
            }
        }
    }

    /// <summary>Posted work, each item on its own: one that throws is reported and the rest still run.</summary>
    private void RunPosted()
    {
        while (_posted.TryDequeue(out Action? work))
        {
            try
            {
                work();
            }
#pragma warning disable CA1031 // as above
            catch (Exception e)
#pragma warning restore CA1031
            {
                _onError(e);
            }
        }
    }

    /// <summary>Stops the thread (sessions stay as they are: clear the endpoint first to end them).</summary>
    public void Dispose()
    {
        Thread? t;
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            t = _thread;
        }
        _stopping = true;
        Wake();
        if (t is not null && !IsCurrentThread)
        {
            t.Join(TimeSpan.FromSeconds(5));
        }
        _ = Posix.close(_wakeFd);
    }

    [LibraryImport(Posix.LibC, SetLastError = true)]
    private static partial int eventfd(uint initial, int flags);

    [LibraryImport(Posix.LibC, SetLastError = true)]
    private static partial nint read(int fd, void* buffer, nuint count);

    [LibraryImport(Posix.LibC, SetLastError = true)]
    private static partial nint write(int fd, void* buffer, nuint count);
}
