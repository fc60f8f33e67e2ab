using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Net;
using CalicoSharp.Bgp;
using Microsoft.Extensions.Time.Testing;

namespace CalicoSharp.Bgp.Tests;

/// <summary>Two pipes make a connected pair of in-memory streams.</summary>
internal sealed class DuplexStream : Stream
{
    private readonly Stream _in;
    private readonly Stream _out;

    private DuplexStream(Stream input, Stream output)
    {
        _in = input;
        _out = output;
    }

    public static (Stream A, Stream B) Pair()
    {
        var ab = new Pipe(new PipeOptions(useSynchronizationContext: false, pauseWriterThreshold: 0, resumeWriterThreshold: 0));
        var ba = new Pipe(new PipeOptions(useSynchronizationContext: false, pauseWriterThreshold: 0, resumeWriterThreshold: 0));
        return (new DuplexStream(ba.Reader.AsStream(), ab.Writer.AsStream()), new DuplexStream(ab.Reader.AsStream(), ba.Writer.AsStream()));
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override void Flush() => _out.Flush();

    public override Task FlushAsync(CancellationToken cancellationToken) => _out.FlushAsync(cancellationToken);

    public override int Read(byte[] buffer, int offset, int count) => _in.Read(buffer, offset, count);

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => _in.ReadAsync(buffer, cancellationToken);

    public override void Write(byte[] buffer, int offset, int count) => _out.Write(buffer, offset, count);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => _out.WriteAsync(buffer, cancellationToken);

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _in.Dispose();
            _out.Dispose();
        }
        base.Dispose(disposing);
    }
}

/// <summary>The far end of a connection, driven by the test: sends raw messages, collects decoded ones.</summary>
internal sealed class ScriptedPeer : IDisposable
{
    private readonly Stream _stream;
    private readonly ConcurrentQueue<BgpMessage> _received = new();
    private readonly Task _reader;
    private readonly CancellationTokenSource _cts = new();

    public ScriptedPeer(Stream stream, bool fourOctet = true)
    {
        _stream = stream;
        Options = new CodecOptions(fourOctet, false);
        _reader = Task.Run(ReadAsync);
    }

    public CodecOptions Options { get; set; }

    public bool Closed { get; private set; }

    private async Task ReadAsync()
    {
        byte[] header = new byte[19];
        try
        {
            while (true)
            {
                await _stream.ReadExactlyAsync(header, _cts.Token);
                int len = (header[16] << 8) | header[17];
                byte[] m = new byte[len];
                header.CopyTo(m, 0);
                await _stream.ReadExactlyAsync(m.AsMemory(19), _cts.Token);
                _received.Enqueue(MessageDecoder.DecodeMessage(m, Options with { ExtendedMessage = true }));
            }
        }
        catch (Exception e) when (e is EndOfStreamException or IOException or ObjectDisposedException or OperationCanceledException)
        {
            Closed = true;
        }
    }

    public void Send(byte[] message) => _stream.Write(message);

    /// <summary>Sends an OPEN; <paramref name="restart"/>, when given, is the graceful restart capability as is (else
    /// <paramref name="gracefulRestart"/> adds one for IPv4 with the F bit and a 60 s restart time).</summary>
    public void SendOpen(uint asn, string routerId, ushort hold = 90, bool gracefulRestart = false, Afi[]? families = null, bool routeRefresh = true,
        GracefulRestartCapability? restart = null) =>
        Send(MessageEncoder.Open(new OpenMessage
        {
            As = asn,
            HoldTime = hold,
            BgpIdentifier = SpeakerConfig.ParseRouterId(routerId),
            Multiprotocol = [.. (families ?? [Afi.IPv4, Afi.IPv6]).Select(f => (f, Safi.Unicast))],
            RouteRefresh = routeRefresh,
            FourOctetAs = true,
            GracefulRestart = restart ?? (gracefulRestart ? new GracefulRestartCapability(false, false, 60, [new(Afi.IPv4, Safi.Unicast, true)]) : null),
        }));

    /// <summary>Announces the prefixes in as many UPDATEs as they need.</summary>
    public void Announce(PathAttributes attributes, params string[] prefixes) => Send(AnnouncementOf(attributes, prefixes));

    /// <summary>The UPDATEs that announce the prefixes, to send together with other messages in one write.</summary>
    public byte[] AnnouncementOf(PathAttributes attributes, params string[] prefixes)
    {
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        var encoder = new UpdateEncoder(Options);
        ReadOnlySpan<Prefix> left = prefixes.Select(Prefix.Parse).ToArray();
        while (!left.IsEmpty)
        {
            left = left[encoder.WriteAnnounce(w, attributes, left)..];
        }
        return w.WrittenSpan.ToArray();
    }

    public void Withdraw(params string[] prefixes)
    {
        var w = new System.Buffers.ArrayBufferWriter<byte>();
        new UpdateEncoder(Options).WriteWithdraw(w, prefixes.Select(Prefix.Parse).ToArray());
        Send(w.WrittenSpan.ToArray());
    }

    public bool TryTake(out BgpMessage? m) => _received.TryDequeue(out m);

    public void Dispose()
    {
        _cts.Cancel();
        _stream.Dispose();
        try
        {
            _reader.Wait(TimeSpan.FromSeconds(2));
        }
        catch (AggregateException)
        {
        }
    }
}

/// <summary>A speaker on a fake clock and a manual loop, with scripted peers on in-memory connections.</summary>
internal sealed class Harness : IAsyncDisposable
{
    private readonly List<ScriptedPeer> _scripted = [];
    private readonly ConcurrentQueue<ScriptedPeer> _outgoing = new();

    static Harness()
    {
        // Tests block their own thread while pumping the loop; keep I/O continuations from waiting for threads.
        ThreadPool.GetMinThreads(out int worker, out int io);
        ThreadPool.SetMinThreads(Math.Max(worker, 16), Math.Max(io, 16));
    }

    public Harness(uint asn = 64512, string routerId = "10.0.0.254", TimeSpan? connectFailure = null)
    {
        Speaker = new BgpSpeaker(new SpeakerConfig
        {
            LocalAs = asn,
            RouterId = SpeakerConfig.ParseRouterId(routerId),
            Log = (level, text) => Log.Enqueue($"{level}: {text}"),
        }, Time, Loop);
        Speaker.Connector = (peer, ct) =>
        {
            Connects++;
            if (FailConnects)
            {
                return Task.FromException<Stream>(new IOException("connection refused"));
            }
            (Stream a, Stream b) = DuplexStream.Pair();
            var s = new ScriptedPeer(b);
            _scripted.Add(s);
            _outgoing.Enqueue(s);
            return Task.FromResult(a);
        };
    }

    public FakeTimeProvider Time { get; } = new(new DateTimeOffset(2026, 11, 25, 12, 0, 0, TimeSpan.Zero));

    public ManualEventLoop Loop { get; } = new();

    public BgpSpeaker Speaker { get; }

    public ConcurrentQueue<string> Log { get; } = new();

    public int Connects { get; private set; }

    public bool FailConnects { get; set; }

    public BgpPeer AddPeer(string address, uint asn, bool passive = true, ushort hold = 90, Func<PeerConfig, PeerConfig>? edit = null)
    {
        var c = new PeerConfig
        {
            Address = IPAddress.Parse(address),
            RemoteAs = asn,
            Passive = passive,
            HoldTime = hold,
            LocalAddress = IPAddress.Parse("10.0.0.254"),
            LocalAddressOtherFamily = IPAddress.Parse("fd00::254"),
        };
        return Speaker.AddPeer(edit is null ? c : edit(c));
    }

    /// <summary>The peer connects to us (an incoming connection).</summary>
    public ScriptedPeer ConnectIn(BgpPeer peer)
    {
        (Stream a, Stream b) = DuplexStream.Pair();
        var s = new ScriptedPeer(b);
        _scripted.Add(s);
        peer.AcceptStream(a);
        Pump();
        return s;
    }

    /// <summary>The connection the speaker opened most recently.</summary>
    public ScriptedPeer TakeOutgoing()
    {
        ScriptedPeer? s = null;
        Until(() => _outgoing.TryDequeue(out s), "an outgoing connection");
        return s!;
    }

    /// <summary>Runs loop work until nothing happened for a little while (I/O runs on other threads).</summary>
    public void Pump(int quietMs = 30)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        long lastWork = 0;
        while (sw.ElapsedMilliseconds - lastWork < quietMs)
        {
            if (Loop.RunPending() > 0)
            {
                lastWork = sw.ElapsedMilliseconds;
            }
            else
            {
                Thread.Sleep(1);
            }
            if (sw.Elapsed > TimeSpan.FromSeconds(20))
            {
                throw new TimeoutException("the loop never went quiet");
            }
        }
    }

    public void Until(Func<bool> condition, string what, double seconds = 10)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!condition())
        {
            if (Loop.RunPending() == 0)
            {
                Thread.Sleep(1);
            }
            if (sw.Elapsed.TotalSeconds > seconds)
            {
                throw new TimeoutException($"waited {seconds} s for {what}; log:\n{string.Join("\n", Log)}");
            }
        }
    }

    public T Next<T>(ScriptedPeer s)
        where T : BgpMessage
    {
        BgpMessage? m = null;
        Until(() => s.TryTake(out m), $"a {typeof(T).Name}");
        return Assert.IsType<T>(m);
    }

    /// <summary>Waits for the first message of type <typeparamref name="T"/>, skipping others.</summary>
    public T Expect<T>(ScriptedPeer s, double seconds = 10)
        where T : BgpMessage
    {
        T? found = null;
        Until(() =>
        {
            while (found is null && s.TryTake(out BgpMessage? m))
            {
                found = m as T;
            }
            return found is not null;
        }, $"a {typeof(T).Name}", seconds);
        return found!;
    }

    /// <summary>Messages the peer got, after letting things settle.</summary>
    public List<BgpMessage> Drain(ScriptedPeer s)
    {
        Pump();
        var list = new List<BgpMessage>();
        while (s.TryTake(out BgpMessage? m))
        {
            list.Add(m!);
        }
        return list;
    }

    public void Advance(TimeSpan by)
    {
        Time.Advance(by);
        Pump();
    }

    /// <summary>Brings a peer to Established over an incoming connection.</summary>
    public ScriptedPeer Establish(BgpPeer peer, string routerId, ushort hold = 90, bool gracefulRestart = false, Afi[]? families = null, bool routeRefresh = true,
        GracefulRestartCapability? restart = null)
    {
        ScriptedPeer s = ConnectIn(peer);
        Next<OpenMessage>(s);
        s.SendOpen(peer.Config.RemoteAs, routerId, hold, gracefulRestart, families, routeRefresh, restart);
        Next<KeepaliveMessage>(s);
        s.Send(MessageEncoder.Keepalive());
        Until(() => peer.State == SessionState.Established, "Established");
        return s;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (ScriptedPeer s in _scripted)
        {
            s.Dispose();
        }
        Task stop = Speaker.DisposeAsync().AsTask();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (!stop.IsCompleted && sw.Elapsed < TimeSpan.FromSeconds(10))
        {
            Loop.RunPending();
            Thread.Sleep(1);
        }
        await stop;
    }
}
