using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;
using CalicoSharp.Bgp.Bfd;
using CalicoSharp.Bgpd;
using Microsoft.Extensions.Time.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>
/// The BFD thread: one deadline queue for every session's transmit and detection times, run earliest first; many
/// sessions on one thread; sessions added and removed from another thread while it runs; and real UDP on loopback
/// (TTL 255, RFC 5881) received and answered on that thread.
/// </summary>
public sealed class BfdLoopTests
{
    private static readonly BfdTimers Fast = new(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 10);

    /// <summary>A deadline loop driven by the test: counts the wake-ups the endpoint asks for.</summary>
    private sealed class ManualDeadlineLoop : IBfdDeadlineLoop
    {
        public int Advanced { get; private set; }

        public void Post(Action work) => work();

        public void DeadlineAdvanced() => Advanced++;
    }

    /// <summary>Delivers each packet to the endpoint itself, as from the sending session's local address with TTL 255
    /// (posted, so it arrives on the loop's next turn as a datagram would): two sessions with swapped addresses are
    /// each other's remote.</summary>
    private sealed class LoopbackTransport : IBfdTransport
    {
        public BfdLoop? Loop { get; set; }

        public ConcurrentDictionary<string, int> SendThreads { get; } = new();

        public ConcurrentBag<string> SentAfterClose { get; } = [];

        private readonly ConcurrentDictionary<BfdSession, bool> _closed = new();

        public void Open(BfdSession session)
        {
        }

        public void Send(BfdSession session, ReadOnlySpan<byte> packet)
        {
            if (_closed.ContainsKey(session))
            {
                SentAfterClose.Add(session.Name);
            }
            SendThreads.AddOrUpdate(Thread.CurrentThread.Name ?? "?", 1, (_, n) => n + 1);
            byte[] copy = packet.ToArray();
            IPAddress from = session.Local!;
            BfdLoop loop = Loop!;
            loop.Post(() => loop.Endpoint.Receive(copy, from, 255));
        }

        public void Close(BfdSession session) => _closed[session] = true;
    }

    private static (IPAddress A, IPAddress B) Pair(int i) => (IPAddress.Parse($"10.77.{i / 200}.{(i % 200) + 1}"), IPAddress.Parse($"10.78.{i / 200}.{(i % 200) + 1}"));

    private static void AddPair(BfdEndpoint e, int i, BfdTimers timers)
    {
        (IPAddress a, IPAddress b) = Pair(i);
        e.Add(b, a, timers, $"a{i}");
        e.Add(a, b, timers, $"b{i}");
    }

    private static async Task WaitAsync(Func<bool> condition, string what, double seconds = 60)
    {
        var sw = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(sw.Elapsed.TotalSeconds < seconds, $"{what}: not within {seconds} s");
            await Task.Delay(20);
        }
    }

    [Fact]
    public void Deadlines_run_earliest_first_and_an_earlier_one_asks_for_a_wakeup()
    {
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 12, 6, 0, 0, 0, TimeSpan.Zero));
        var loop = new ManualDeadlineLoop();
        var sent = new List<(string Name, long At)>();
        var transport = new CallbackTransport((s, _) => sent.Add((s.Name, time.GetTimestamp())));
        var e = new BfdEndpoint(time, loop, transport, new Random(7));
        Assert.Equal(long.MaxValue, e.NextDeadline);
        // Idle rate (not Up): 3 s, 1 s and 2 s, each jittered to 75-100 %; every Add sends one packet at once.
        foreach ((string name, int seconds) in new[] { ("slow", 3), ("fast", 1), ("mid", 2) })
        {
            e.Add(IPAddress.Parse($"10.9.0.{seconds}"), null, Fast with { IdleTx = TimeSpan.FromSeconds(seconds) }, name);
        }
        // The first deadline (3 s) asked for a wake-up, the earlier 1 s one too; the 2 s one is later than 1 s.
        Assert.Equal(2, loop.Advanced);
        sent.Clear();
        long start = time.GetTimestamp();
        long previous = start;
        for (int step = 0; step < 10_000 && time.GetTimestamp() - start < 10 * TimeSpan.TicksPerSecond; step++)
        {
            long next = e.NextDeadline;
            Assert.True(next >= previous, "deadlines went backwards");
            time.SetUtcNow(time.GetUtcNow() + TimeSpan.FromTicks(next - time.GetTimestamp()));
            Assert.True(e.RunDue() >= 1);
            previous = next;
        }
        // Sent in time order, each session at its own rate: ~10, ~5 and ~3.3 packets in 10 s (jitter shortens).
        Assert.Equal(sent.OrderBy(s => s.At), sent);
        int Count(string n) => sent.Count(s => s.Name == n);
        Assert.InRange(Count("fast"), 10, 14);
        Assert.InRange(Count("mid"), 5, 7);
        Assert.InRange(Count("slow"), 3, 5);
        // Nothing is due until the next deadline, and the queue holds one live deadline per session and kind.
        Assert.Equal(0, e.RunDue());
        Assert.InRange(e.QueuedDeadlines, 3, 6);
    }

    [Fact]
    public async Task Many_sessions_come_up_and_stay_up_on_one_thread()
    {
        const int pairs = 100;
        var transport = new LoopbackTransport();
        var errors = new ConcurrentBag<Exception>();
        using var loop = new BfdLoop(TimeProvider.System, transport, null, errors.Add);
        transport.Loop = loop;
        loop.Start();
        loop.Invoke(() =>
        {
            for (int i = 0; i < pairs; i++)
            {
                AddPair(loop.Endpoint, i, Fast);
            }
        });
        int Up() => loop.Invoke(() => loop.Endpoint.Sessions.Count(s => s.State == BfdState.Up));
        await WaitAsync(() => Up() == 2 * pairs, $"{2 * pairs} sessions Up");
        long sent0 = loop.Invoke(() => loop.Endpoint.Sessions.Sum(s => s.PacketsSent));
        var sw = Stopwatch.StartNew();
        await Task.Delay(1500);
        long sent = loop.Invoke(() => loop.Endpoint.Sessions.Sum(s => s.PacketsSent)) - sent0;
        Assert.Equal(2 * pairs, Up());
        Assert.Equal(0, loop.Invoke(() => loop.Endpoint.Sessions.Sum(s => s.DownTransitions)));
        // Up: 100 ms jittered to 75-100 %, ~11.4 packets a second each; at most 13.3.
        double rate = sent / sw.Elapsed.TotalSeconds / (2 * pairs);
        Assert.True(rate is > 5 and < 14, $"{rate:0.0} packets/s per session");
        // Everything after the first packets (sent by Add, on the caller's thread) left from the BFD thread.
        Assert.True(transport.SendThreads.GetValueOrDefault("bfd") > 10 * pairs, string.Join(", ", transport.SendThreads));
        Assert.Empty(errors);
        loop.Invoke(loop.Endpoint.Clear);
    }

    [Fact]
    public async Task Sessions_added_and_removed_while_the_loop_runs()
    {
        var transport = new LoopbackTransport();
        var errors = new ConcurrentBag<Exception>();
        var changes = new ConcurrentBag<(string Name, BfdState From, BfdState To)>();
        using var loop = new BfdLoop(TimeProvider.System, transport, null, errors.Add);
        transport.Loop = loop;
        loop.Endpoint.StateChanged += (s, old) => changes.Add((s.Name, old, s.State));
        loop.Start();
        loop.Invoke(() =>
        {
            for (int i = 0; i < 20; i++)
            {
                AddPair(loop.Endpoint, i, Fast);
            }
        });
        // Churn: every round removes the oldest pair and adds a new one, from this thread, while the loop sends.
        for (int round = 0; round < 40; round++)
        {
            int gone = round, added = 20 + round;
            loop.Invoke(() =>
            {
                foreach (BfdSession s in loop.Endpoint.Sessions.Where(s => s.Name == $"a{gone}" || s.Name == $"b{gone}").ToList())
                {
                    loop.Endpoint.Remove(s);
                }
                AddPair(loop.Endpoint, added, Fast);
            });
            await Task.Delay(25);
        }
        // The last 20 pairs come Up; the removed ones say AdminDown, linger, and are forgotten.
        await WaitAsync(() => loop.Invoke(() => loop.Endpoint.Sessions.Count == 40 && loop.Endpoint.Sessions.All(s => s.State == BfdState.Up)), "the 20 remaining pairs Up and the removed ones gone");
        Assert.Equal(Enumerable.Range(40, 20).SelectMany(i => new[] { $"a{i}", $"b{i}" }).Order(), loop.Invoke(() => loop.Endpoint.Sessions.Select(s => s.Name).Order().ToList()));
        Assert.Empty(transport.SentAfterClose);
        Assert.Empty(errors);
        // No remaining session ever went down: the churn of others did not disturb it.
        Assert.DoesNotContain(changes, c => c.From == BfdState.Up && int.Parse(c.Name[1..], System.Globalization.CultureInfo.InvariantCulture) >= 40);
        loop.Invoke(loop.Endpoint.Clear);
    }

    [Fact]
    public async Task Two_sessions_come_up_over_udp_on_loopback()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }
        var log = new ConcurrentBag<string>();
        using var udp = new BfdUdpTransport((_, m) => log.Add(m), port);
        var errors = new ConcurrentBag<Exception>();
        using var loop = new BfdLoop(TimeProvider.System, udp, udp, errors.Add);
        loop.Start();
        IPAddress a = IPAddress.Parse("127.0.0.2"), b = IPAddress.Parse("127.0.0.3");
        loop.Invoke(() =>
        {
            loop.Endpoint.Add(b, a, Fast, "a");
            loop.Endpoint.Add(a, b, Fast, "b");
        });
        await WaitAsync(() => loop.Invoke(() => loop.Endpoint.Sessions.All(s => s.State == BfdState.Up)), "both Up over UDP", 30);
        Assert.Equal(0, loop.Invoke(() => loop.Endpoint.DiscardedFor(BfdDiscard.BadTtl)));
        Assert.Empty(errors);
        Assert.Empty(log);
        loop.Invoke(loop.Endpoint.Clear);
    }
}

/// <summary>Hands each packet to a callback.</summary>
internal sealed class CallbackTransport(Action<BfdSession, byte[]> sent) : IBfdTransport
{
    public void Open(BfdSession session)
    {
    }

    public void Send(BfdSession session, ReadOnlySpan<byte> packet) => sent(session, packet.ToArray());

    public void Close(BfdSession session)
    {
    }
}
