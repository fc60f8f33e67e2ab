using System.Net;
using CalicoSharp.Bgp.Bfd;
using Microsoft.Extensions.Time.Testing;

namespace CalicoSharp.Bgp.Tests;

/// <summary>Sends into a list: what the session put on the wire, in order.</summary>
internal sealed class RecordingTransport : IBfdTransport
{
    public List<(BfdSession Session, BfdControlPacket Packet, TimeSpan At)> Sent { get; } = [];

    public List<BfdSession> Closed { get; } = [];

    public FakeTimeProvider? Clock { get; set; }

    public void Open(BfdSession session)
    {
    }

    public void Send(BfdSession session, ReadOnlySpan<byte> packet)
    {
        Assert.Equal(BfdDiscard.None, BfdControlPacket.TryRead(packet, out BfdControlPacket p));
        Sent.Add((session, p, Clock is null ? TimeSpan.Zero : Clock.GetUtcNow() - BfdHarness.Epoch));
    }

    public void Close(BfdSession session) => Closed.Add(session);
}

internal sealed class BfdHarness
{
    public static readonly DateTimeOffset Epoch = new(2026, 12, 5, 0, 0, 0, TimeSpan.Zero);
    public static readonly IPAddress PeerAddress = IPAddress.Parse("172.30.1.1");

    public BfdHarness(int seed = 1)
    {
        Time = new FakeTimeProvider(Epoch);
        Transport = new RecordingTransport { Clock = Time };
        Endpoint = new BfdEndpoint(Time, Loop, Transport, new Random(seed));
        Endpoint.StateChanged += (s, old) => Changes.Add((old, s.State, s.LocalDiagnostic));
    }

    public FakeTimeProvider Time { get; }

    public ManualEventLoop Loop { get; } = new();

    public RecordingTransport Transport { get; }

    public BfdEndpoint Endpoint { get; }

    public List<(BfdState From, BfdState To, BfdDiagnostic Diag)> Changes { get; } = [];

    public const uint RemoteDiscriminator = 0x0BADCAFE;

    public BfdSession Add(BfdTimers? timers = null) => Endpoint.Add(PeerAddress, null, timers ?? new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 3));

    /// <summary>Steps the clock 1 ms at a time, running what the timers post, as the event loop would.</summary>
    public void Advance(TimeSpan span)
    {
        TimeSpan step = TimeSpan.FromMilliseconds(1);
        for (TimeSpan done = TimeSpan.Zero; done < span; done += step)
        {
            Time.Advance(span - done < step ? span - done : step);
            Loop.RunPending();
        }
    }

    public static BfdControlPacket Remote(BfdState state, uint your = 0, uint tx = 100_000, uint rx = 100_000, byte mult = 3, bool poll = false, bool final = false) => new()
    {
        Version = 1,
        State = state,
        DetectMultiplier = mult,
        MyDiscriminator = RemoteDiscriminator,
        YourDiscriminator = your,
        DesiredMinTxInterval = tx,
        RequiredMinRxInterval = rx,
        Poll = poll,
        Final = final,
    };

    public static byte[] Bytes(BfdControlPacket p)
    {
        var b = new byte[BfdControlPacket.Size];
        p.Write(b);
        return b;
    }

    public BfdDiscard Deliver(BfdControlPacket p, int ttl = 255, IPAddress? from = null) => Deliver(Bytes(p), ttl, from);

    public BfdDiscard Deliver(byte[] datagram, int ttl = 255, IPAddress? from = null)
    {
        BfdDiscard r = Endpoint.Receive(datagram, from ?? PeerAddress, ttl);
        Loop.RunPending();
        return r;
    }

    /// <summary>The three-way handshake of RFC 5880 §6.2 with a well-behaved remote: Down, Init... Up.</summary>
    public void BringUp(BfdSession s, uint tx = 100_000, uint rx = 100_000, byte mult = 3)
    {
        Assert.Equal(BfdDiscard.None, Deliver(Remote(BfdState.Down, 0, 1_000_000, rx, mult)));
        Assert.Equal(BfdState.Init, s.State);
        Assert.Equal(BfdDiscard.None, Deliver(Remote(BfdState.Up, s.LocalDiscriminator, tx, rx, mult)));
        Assert.Equal(BfdState.Up, s.State);
    }

    public BfdControlPacket LastSent => Transport.Sent[^1].Packet;
}

/// <summary>RFC 5880 and 5881 against the codec, the discard rules and the state machine, on a fake clock.</summary>
public class BfdCodecTests
{
    [Fact]
    public void Control_packet_round_trips_every_field()
    {
        var p = new BfdControlPacket
        {
            Version = 1, Diagnostic = BfdDiagnostic.ControlDetectionTimeExpired, State = BfdState.Init, Poll = true,
            ControlPlaneIndependent = true, Demand = true, DetectMultiplier = 7, MyDiscriminator = 0xDEADBEEF,
            YourDiscriminator = 0x01020304, DesiredMinTxInterval = 300_000, RequiredMinRxInterval = 250_000, RequiredMinEchoRxInterval = 17,
        };
        byte[] b = BfdHarness.Bytes(p);
        Assert.Equal("21AA0718DEADBEEF01020304000493E00003D09000000011", Convert.ToHexString(b));
        Assert.Equal(BfdDiscard.None, BfdControlPacket.TryRead(b, out BfdControlPacket q));
        Assert.Equal(p, q);
    }

    [Fact]
    public void Final_and_state_bits_sit_where_the_rfc_puts_them()
    {
        byte[] b = BfdHarness.Bytes(new BfdControlPacket { Version = 1, State = BfdState.Up, Final = true, DetectMultiplier = 3, MyDiscriminator = 1 });
        Assert.Equal(0x20, b[0]); // version 1, diagnostic 0
        Assert.Equal(0xD0, b[1]); // Sta 3, F
        Assert.Equal(24, b[3]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(23)]
    public void Datagram_shorter_than_the_mandatory_section_is_truncated(int length)
    {
        Assert.Equal(BfdDiscard.Truncated, BfdControlPacket.TryRead(new byte[length], out _));
    }

    [Fact]
    public void A_longer_datagram_than_length_says_is_read_to_length()
    {
        byte[] b = [.. BfdHarness.Bytes(BfdHarness.Remote(BfdState.Down)), 1, 2, 3];
        Assert.Equal(BfdDiscard.None, BfdControlPacket.TryRead(b, out BfdControlPacket p));
        Assert.Equal(BfdState.Down, p.State);
    }
}

public class BfdDiscardTests
{
    private static byte[] Good(uint your = 0, BfdState state = BfdState.Down) => BfdHarness.Bytes(BfdHarness.Remote(state, your));

    public static TheoryData<string, BfdDiscard> Rules => new()
    {
        { "version 0", BfdDiscard.BadVersion },
        { "version 2", BfdDiscard.BadVersion },
        { "length 23", BfdDiscard.LengthTooShort },
        { "length 25 with the A bit", BfdDiscard.LengthTooShort },
        { "length 40 in 24 bytes", BfdDiscard.LengthBeyondPayload },
        { "detect mult 0", BfdDiscard.ZeroDetectMultiplier },
        { "multipoint", BfdDiscard.Multipoint },
        { "my discriminator 0", BfdDiscard.ZeroMyDiscriminator },
        { "unknown your discriminator", BfdDiscard.UnknownYourDiscriminator },
        { "your discriminator 0 in Up", BfdDiscard.ZeroYourDiscriminatorNotDown },
        { "your discriminator 0 in Init", BfdDiscard.ZeroYourDiscriminatorNotDown },
        { "your discriminator 0 from a stranger", BfdDiscard.NoSessionForSource },
        { "A bit, no authentication configured", BfdDiscard.AuthenticationNotConfigured },
        { "TTL 254", BfdDiscard.BadTtl },
        { "TTL 1", BfdDiscard.BadTtl },
        { "right discriminator, wrong source", BfdDiscard.WrongSource },
    };

    [Theory]
    [MemberData(nameof(Rules))]
    public void Each_rule_of_6_8_6_discards_counts_and_changes_nothing(string rule, BfdDiscard expected)
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        byte[] b = Good();
        int ttl = 255;
        IPAddress? from = null;
        switch (rule)
        {
            case "version 0": b[0] = (byte)(b[0] & 0x1F); break;
            case "version 2": b[0] = (byte)((2 << 5) | (b[0] & 0x1F)); break;
            case "length 23": b[3] = 23; break;
            case "length 25 with the A bit": b = [.. b, 0]; b[1] |= 0x04; b[3] = 25; break;
            case "length 40 in 24 bytes": b[3] = 40; break;
            case "detect mult 0": b[2] = 0; break;
            case "multipoint": b[1] |= 0x01; break;
            case "my discriminator 0": b[4] = b[5] = b[6] = b[7] = 0; break;
            case "unknown your discriminator": b = Good(s.LocalDiscriminator + 1); break;
            case "your discriminator 0 in Up": b = Good(0, BfdState.Up); break;
            case "your discriminator 0 in Init": b = Good(0, BfdState.Init); break;
            case "your discriminator 0 from a stranger": from = IPAddress.Parse("172.30.9.9"); break;
            case "A bit, no authentication configured": b = [.. b, 1, 2, 3]; b[1] |= 0x04; b[3] = 27; break;
            case "TTL 254": ttl = 254; break;
            case "TTL 1": ttl = 1; break;
            case "right discriminator, wrong source": b = Good(s.LocalDiscriminator); from = IPAddress.Parse("172.30.9.9"); break;
            default: throw new ArgumentException(rule);
        }
        Assert.Equal(expected, h.Deliver(b, ttl, from));
        Assert.Equal(1, h.Endpoint.DiscardedFor(expected));
        Assert.Equal(1, h.Endpoint.Discarded);
        Assert.Equal(0, s.PacketsReceived);
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(0u, s.RemoteDiscriminator);
        // The same packet, made good, is accepted: the rule, not something else, discarded it.
        Assert.Equal(BfdDiscard.None, h.Deliver(Good()));
    }
}

public class BfdStateMachineTests
{
    private static readonly TimeSpan Tick = TimeSpan.FromTicks(1);

    [Fact]
    public void Down_then_remote_Down_goes_Init_then_remote_Up_goes_Up()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        Assert.Equal(BfdState.Down, h.LastSent.State);
        h.BringUp(s);
        Assert.Equal([(BfdState.Down, BfdState.Init, BfdDiagnostic.None), (BfdState.Init, BfdState.Up, BfdDiagnostic.None)], h.Changes);
        Assert.Equal(BfdHarness.RemoteDiscriminator, s.RemoteDiscriminator);
        // Each change is told to the remote at once, with its discriminator echoed.
        Assert.Equal(BfdState.Up, h.LastSent.State);
        Assert.Equal(BfdHarness.RemoteDiscriminator, h.LastSent.YourDiscriminator);
    }

    [Fact]
    public void Down_with_remote_Init_goes_straight_Up()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.Deliver(BfdHarness.Remote(BfdState.Init, s.LocalDiscriminator));
        Assert.Equal(BfdState.Up, s.State);
    }

    [Fact]
    public void Down_ignores_remote_Up_and_Init_ignores_remote_Down()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator));
        Assert.Equal(BfdState.Down, s.State);
        h.Deliver(BfdHarness.Remote(BfdState.Down));
        Assert.Equal(BfdState.Init, s.State);
        h.Deliver(BfdHarness.Remote(BfdState.Down, s.LocalDiscriminator));
        Assert.Equal(BfdState.Init, s.State);
        h.Deliver(BfdHarness.Remote(BfdState.Init, s.LocalDiscriminator));
        Assert.Equal(BfdState.Up, s.State);
    }

    [Fact]
    public void Up_with_remote_Down_goes_Down_neighbor_signaled()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.BringUp(s);
        h.Deliver(BfdHarness.Remote(BfdState.Down, s.LocalDiscriminator));
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(BfdDiagnostic.NeighborSignaledSessionDown, s.LocalDiagnostic);
        Assert.Equal(1, s.DownTransitions);
    }

    [Fact]
    public void Remote_AdminDown_takes_Up_and_Init_Down_and_leaves_Down_alone()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.Deliver(BfdHarness.Remote(BfdState.AdminDown));
        Assert.Equal(BfdState.Down, s.State);
        Assert.Empty(h.Changes);
        h.BringUp(s);
        h.Deliver(BfdHarness.Remote(BfdState.AdminDown, s.LocalDiscriminator));
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(BfdState.AdminDown, s.RemoteState);
        Assert.Equal(BfdDiagnostic.NeighborSignaledSessionDown, s.LocalDiagnostic);
        h.Deliver(BfdHarness.Remote(BfdState.Down));
        Assert.Equal(BfdState.Init, s.State);
        h.Deliver(BfdHarness.Remote(BfdState.AdminDown, s.LocalDiscriminator));
        Assert.Equal(BfdState.Down, s.State);
    }

    [Fact]
    public void Detection_time_is_remote_multiplier_times_the_slower_of_our_rx_and_its_tx()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(1), 3));
        h.BringUp(s, tx: 300_000, rx: 100_000, mult: 4);
        Assert.Equal(TimeSpan.FromMilliseconds(1200), s.DetectionTime); // 4 × max(50 ms, 300 ms)
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, tx: 20_000, rx: 100_000, mult: 2));
        Assert.Equal(TimeSpan.FromMilliseconds(100), s.DetectionTime); // 2 × max(50 ms, 20 ms)
    }

    [Fact]
    public void Up_goes_Down_at_the_detection_time_and_not_a_tick_before()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 3));
        h.BringUp(s, tx: 300_000, rx: 100_000, mult: 3);
        h.Advance(TimeSpan.FromMilliseconds(500));
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, tx: 300_000, rx: 100_000, mult: 3));
        h.Time.Advance(TimeSpan.FromMilliseconds(900) - Tick);
        h.Loop.RunPending();
        Assert.Equal(BfdState.Up, s.State);
        h.Time.Advance(Tick);
        h.Loop.RunPending();
        h.Loop.RunPending();
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(BfdDiagnostic.ControlDetectionTimeExpired, s.LocalDiagnostic);
        Assert.Equal(0u, s.RemoteDiscriminator); // §6.8.1: forgotten after a detection time of silence
        Assert.Equal(BfdState.Down, h.LastSent.State);
        Assert.Equal(BfdDiagnostic.ControlDetectionTimeExpired, h.LastSent.Diagnostic);
    }

    [Fact]
    public void Init_goes_Down_when_the_remote_falls_silent()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.Deliver(BfdHarness.Remote(BfdState.Down, 0, tx: 1_000_000, mult: 3));
        Assert.Equal(BfdState.Init, s.State);
        h.Advance(TimeSpan.FromSeconds(3) + TimeSpan.FromMilliseconds(1));
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(BfdDiagnostic.ControlDetectionTimeExpired, s.LocalDiagnostic);
    }

    [Fact]
    public void Packets_arriving_in_time_keep_the_session_Up()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.BringUp(s, tx: 100_000, rx: 100_000, mult: 3);
        for (int i = 0; i < 50; i++)
        {
            h.Advance(TimeSpan.FromMilliseconds(290));
            h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator));
        }
        Assert.Equal(BfdState.Up, s.State);
        Assert.Equal(1, s.UpTransitions);
    }

    [Fact]
    public void Until_Up_it_sends_at_the_idle_rate_no_faster_than_once_a_second()
    {
        var h = new BfdHarness();
        // The remote asks for nothing slower than 10 ms, and we would send every 100 ms once Up: until then, 1 s.
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 3));
        h.Advance(TimeSpan.FromSeconds(10));
        var sent = h.Transport.Sent.Select(x => x.At).ToList();
        Assert.InRange(sent.Count, 10, 14);
        for (int i = 1; i < sent.Count; i++)
        {
            Assert.InRange(sent[i] - sent[i - 1], TimeSpan.FromMilliseconds(750), TimeSpan.FromMilliseconds(1001));
        }
        Assert.All(h.Transport.Sent, x => Assert.Equal(1_000_000u, x.Packet.DesiredMinTxInterval));
        Assert.Equal(TimeSpan.FromSeconds(1), s.TransmitInterval);
    }

    [Theory]
    [InlineData(3, 0.75, 1.0)]
    [InlineData(1, 0.75, 0.90)]
    public void Jitter_is_75_to_100_percent_and_75_to_90_at_multiplier_1(byte multiplier, double low, double high)
    {
        var h = new BfdHarness(seed: 7);
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), multiplier));
        h.BringUp(s, tx: 100_000, rx: 100_000, mult: 3);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, final: true));
        int from = h.Transport.Sent.Count;
        for (int i = 0; i < 40; i++)
        {
            h.Advance(TimeSpan.FromMilliseconds(100));
            h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator));
        }
        var at = h.Transport.Sent.Skip(from).Select(x => x.At.TotalMilliseconds).ToList();
        var gaps = at.Zip(at.Skip(1), (a, b) => b - a).ToList();
        Assert.True(gaps.Count > 30, $"{gaps.Count} gaps");
        Assert.All(gaps, g => Assert.InRange(g, (100 * low) - 1, (100 * high) + 1));
        Assert.True(gaps.Max() - gaps.Min() > 5, "the intervals vary");
    }

    [Fact]
    public void Going_Up_polls_for_the_fast_rate_and_the_Final_ends_the_poll()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 3));
        h.BringUp(s, tx: 100_000, rx: 100_000, mult: 3);
        Assert.True(s.PollActive);
        Assert.True(h.LastSent.Poll);
        Assert.False(h.LastSent.Final);
        Assert.Equal(100_000u, h.LastSent.DesiredMinTxInterval);
        h.Advance(TimeSpan.FromMilliseconds(150));
        Assert.True(h.LastSent.Poll); // every packet of the sequence carries P
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, final: true));
        Assert.False(s.PollActive);
        h.Advance(TimeSpan.FromMilliseconds(150));
        Assert.False(h.LastSent.Poll);
        Assert.Equal(TimeSpan.FromMilliseconds(100), s.TransmitInterval);
    }

    [Fact]
    public void A_Poll_is_answered_at_once_with_a_Final_and_never_P_and_F_together()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.BringUp(s);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, final: true));
        int before = h.Transport.Sent.Count;
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, tx: 200_000, rx: 300_000, poll: true));
        Assert.Equal(before + 1, h.Transport.Sent.Count); // no waiting for the transmit timer
        Assert.True(h.LastSent.Final);
        Assert.False(h.LastSent.Poll);
        // The remote's new receive interval slows our transmission: §6.8.7, the larger of ours and its.
        Assert.Equal(TimeSpan.FromMilliseconds(300), s.TransmitInterval);
        Assert.All(h.Transport.Sent, x => Assert.False(x.Packet.Poll && x.Packet.Final));
    }

    [Fact]
    public void A_slower_transmit_rate_waits_for_the_Final_and_a_faster_receive_rate_keeps_the_old_detection()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(300), TimeSpan.FromSeconds(1), 3));
        h.BringUp(s, tx: 10_000, rx: 10_000, mult: 3);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, tx: 10_000, rx: 10_000, final: true));
        Assert.Equal(TimeSpan.FromMilliseconds(900), s.DetectionTime);
        s.Configure(new BfdTimers(TimeSpan.FromMilliseconds(500), TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(1), 3));
        h.Loop.RunPending();
        Assert.True(h.LastSent.Poll);
        Assert.Equal(500_000u, h.LastSent.DesiredMinTxInterval);
        Assert.Equal(50_000u, h.LastSent.RequiredMinRxInterval);
        // §6.8.3: until the Final, we still send every 100 ms and judge the remote by the old 300 ms.
        Assert.Equal(TimeSpan.FromMilliseconds(100), s.TransmitInterval);
        Assert.Equal(TimeSpan.FromMilliseconds(900), s.DetectionTime);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, tx: 10_000, rx: 10_000, final: true));
        Assert.Equal(TimeSpan.FromMilliseconds(500), s.TransmitInterval);
        Assert.Equal(TimeSpan.FromMilliseconds(150), s.DetectionTime);
        Assert.Equal(BfdState.Up, s.State);
        Assert.Equal(1, s.UpTransitions);
    }

    [Fact]
    public void A_remote_asking_for_no_packets_gets_none_but_its_Poll_gets_a_Final()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.BringUp(s);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, rx: 0, final: true));
        int before = h.Transport.Sent.Count;
        h.Advance(TimeSpan.FromMilliseconds(250));
        Assert.Equal(before, h.Transport.Sent.Count);
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator, rx: 0, poll: true));
        Assert.Equal(before + 1, h.Transport.Sent.Count);
        Assert.True(h.LastSent.Final);
    }

    [Fact]
    public void Going_Down_returns_to_the_idle_rate()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(2), 3));
        h.BringUp(s);
        h.Deliver(BfdHarness.Remote(BfdState.Down, s.LocalDiscriminator));
        Assert.Equal(BfdState.Down, s.State);
        Assert.Equal(2_000_000u, h.LastSent.DesiredMinTxInterval);
        Assert.Equal(TimeSpan.FromSeconds(2), s.TransmitInterval);
    }

    [Fact]
    public void Removing_a_session_sends_AdminDown_and_then_forgets_it()
    {
        var h = new BfdHarness();
        BfdSession s = h.Add();
        h.BringUp(s);
        h.Endpoint.Remove(s);
        h.Loop.RunPending();
        Assert.Equal(BfdState.AdminDown, h.LastSent.State);
        Assert.Equal(BfdDiagnostic.AdministrativelyDown, h.LastSent.Diagnostic);
        Assert.Equal((BfdState.Up, BfdState.AdminDown, BfdDiagnostic.AdministrativelyDown), h.Changes[^1]);
        // Packets from the remote meanwhile change nothing (§6.8.6: AdminDown discards).
        h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator));
        Assert.Equal(BfdState.AdminDown, s.State);
        h.Advance(TimeSpan.FromSeconds(1));
        Assert.Null(h.Endpoint.Find(BfdHarness.PeerAddress));
        Assert.Equal([s], h.Transport.Closed);
        Assert.Equal(BfdDiscard.UnknownYourDiscriminator, h.Deliver(BfdHarness.Remote(BfdState.Up, s.LocalDiscriminator)));
    }

    [Fact]
    public void Bad_timers_are_refused_with_the_field_named()
    {
        var h = new BfdHarness();
        var e = Assert.Throws<ArgumentException>(() => h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(500), 3)));
        Assert.Contains("idleSendInterval 500ms", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => h.Add(new BfdTimers(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), 0)));
        Assert.Contains("multiplier 0", e.Message, StringComparison.Ordinal);
        Assert.Empty(h.Endpoint.Sessions);
    }
}
