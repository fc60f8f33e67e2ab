using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Bgp;

namespace CalicoSharp.Testing;

/// <summary>
/// A minimal BGP peer for load tests and benchmarks: connects, exchanges OPEN/KEEPALIVE, then either
/// sends a prepared stream of UPDATEs or counts what it receives. It can freeze: stop reading and stop
/// sending keepalives, as a stuck router would.
/// </summary>
public sealed class BgpTester : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly CancellationTokenSource _cts = new();
    private readonly TaskCompletionSource _established = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task? _reader;
    private Task? _keepalive;
    private long _announced;
    private long _withdrawn;
    private long _updates;
    private long _target = long.MaxValue;
    private readonly TaskCompletionSource<TimeSpan> _reachedTarget = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private BgpTester(Socket socket, uint asn, uint routerId, ushort hold)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        As = asn;
        RouterId = routerId;
        Hold = hold;
    }

    public uint As { get; }

    public uint RouterId { get; }

    public ushort Hold { get; }

    public long Announced => Interlocked.Read(ref _announced);

    public long Withdrawn => Interlocked.Read(ref _withdrawn);

    public long Updates => Interlocked.Read(ref _updates);

    public NotificationMessage? Notification { get; private set; }

    public bool Closed { get; private set; }

    public bool Frozen { get; private set; }

    /// <summary>Connects from <paramref name="local"/> and completes the OPEN exchange.</summary>
    public static async Task<BgpTester> ConnectAsync(IPEndPoint speaker, IPAddress local, uint asn, ushort hold = 90,
        Func<AddressFamily, Socket>? socketFactory = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(speaker);
        ArgumentNullException.ThrowIfNull(local);
        Socket s = socketFactory?.Invoke(speaker.AddressFamily) ?? new Socket(speaker.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        s.NoDelay = true;
        s.Bind(new IPEndPoint(local, 0));
        await s.ConnectAsync(speaker, ct).ConfigureAwait(false);
        byte[] id = local.GetAddressBytes();
        var t = new BgpTester(s, asn, (uint)((id[0] << 24) | (id[1] << 16) | (id[2] << 8) | id[3]), hold);
        t.Start();
        await t._established.Task.WaitAsync(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
        return t;
    }

    private void Start()
    {
        byte[] open = MessageEncoder.Open(new OpenMessage
        {
            As = As,
            HoldTime = Hold,
            BgpIdentifier = RouterId,
            Multiprotocol = [(Afi.IPv4, Safi.Unicast), (Afi.IPv6, Safi.Unicast)],
            RouteRefresh = true,
            FourOctetAs = true,
        });
        _stream.Write(open);
        _reader = Task.Run(ReadAsync);
        if (Hold > 0)
        {
            _keepalive = Task.Run(KeepaliveAsync);
        }
    }

    /// <summary>Completes when <paramref name="count"/> prefixes have been announced to this tester; returns the time since <see cref="Mark"/>.</summary>
    public Task<TimeSpan> WhenAnnounced(long count)
    {
        Interlocked.Exchange(ref _target, count);
        if (Announced >= count)
        {
            _reachedTarget.TrySetResult(_clock.Elapsed);
        }
        return _reachedTarget.Task;
    }

    /// <summary>Restarts the tester's clock (the start of a measurement).</summary>
    public void Mark() => _clock.Restart();

    /// <summary>Stops reading and stops sending keepalives; the connection stays open.</summary>
    public void Freeze() => Frozen = true;

    private async Task KeepaliveAsync()
    {
        byte[] ka = MessageEncoder.Keepalive();
        try
        {
            while (!_cts.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromSeconds(Math.Max(1, Hold / 3)), _cts.Token).ConfigureAwait(false);
                if (!Frozen)
                {
                    lock (_stream)
                    {
                        _stream.Write(ka);
                    }
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException)
        {
        }
    }

    private async Task ReadAsync()
    {
        PipeReader reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 256 * 1024, minimumReadSize: 64 * 1024, leaveOpen: true));
        var options = new CodecOptions(true, true);
        var update = new UpdateMessage();
        byte[] scratch = new byte[65535];
        bool sawOpen = false;
        try
        {
            while (true)
            {
                while (Frozen && !_cts.IsCancellationRequested)
                {
                    await Task.Delay(100, _cts.Token).ConfigureAwait(false);
                }
                ReadResult r = await reader.ReadAsync(_cts.Token).ConfigureAwait(false);
                ReadOnlySequence<byte> buf = r.Buffer;
                while (buf.Length >= 19)
                {
                    buf.Slice(0, 19).CopyTo(scratch);
                    MessageDecoder.TryReadHeader(scratch.AsSpan(0, 19), 65535, out MessageType type, out int len);
                    if (buf.Length < len)
                    {
                        break;
                    }
                    ReadOnlySequence<byte> body = buf.Slice(19, len - 19);
                    body.CopyTo(scratch);
                    ReadOnlySpan<byte> span = scratch.AsSpan(0, len - 19);
                    switch (type)
                    {
                        case MessageType.Open when !sawOpen:
                            sawOpen = true;
                            lock (_stream)
                            {
                                _stream.Write(MessageEncoder.Keepalive());
                            }
                            break;
                        case MessageType.Keepalive:
                            _established.TrySetResult();
                            break;
                        case MessageType.Update:
                            MessageDecoder.DecodeUpdate(span, options, update);
                            Interlocked.Increment(ref _updates);
                            Interlocked.Add(ref _withdrawn, update.Withdrawn.Count + update.MpUnreach.Count);
                            long n = Interlocked.Add(ref _announced, update.Nlri.Count + update.MpReach.Count);
                            if (n >= Interlocked.Read(ref _target))
                            {
                                _reachedTarget.TrySetResult(_clock.Elapsed);
                            }
                            break;
                        case MessageType.Notification:
                            Notification = (NotificationMessage)MessageDecoder.Decode(type, span, options);
                            break;
                    }
                    buf = buf.Slice(len);
                }
                reader.AdvanceTo(buf.Start, buf.End);
                if (r.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException or BgpProtocolException)
        {
        }
        Closed = true;
        _established.TrySetException(new IOException($"the speaker closed the connection{(Notification is null ? "" : $": {Notification}")}"));
        await reader.CompleteAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// UPDATEs announcing <paramref name="count"/> IPv4 /24s from <paramref name="first"/>, <paramref name="perUpdate"/>
    /// per message, each message with its own AS_PATH (asn, 100000 + message number), next hop <paramref name="nextHop"/>.
    /// </summary>
    public static byte[] PrepareAnnouncements(uint asn, IPAddress nextHop, uint first, int count, int perUpdate)
    {
        ArgumentNullException.ThrowIfNull(nextHop);
        var w = new ArrayBufferWriter<byte>(count * 12 + 1024);
        var enc = new UpdateEncoder(new CodecOptions(true, false));
        var prefixes = new Prefix[perUpdate];
        Prefix nh = Prefix.FromAddress(nextHop, 32);
        for (int i = 0, m = 0; i < count; i += perUpdate, m++)
        {
            int n = Math.Min(perUpdate, count - i);
            for (int j = 0; j < n; j++)
            {
                prefixes[j] = Prefix.V4(first + ((uint)(i + j) << 8), 24);
            }
            var a = new PathAttributes { AsPath = AsPath.Sequence(asn, 100000u + (uint)m), NextHop = nh };
            enc.WriteAnnounce(w, a, prefixes.AsSpan(0, n));
        }
        return w.WrittenSpan.ToArray();
    }

    /// <summary>Writes prepared bytes (whole messages) as fast as the speaker takes them.</summary>
    public async Task SendAsync(ReadOnlyMemory<byte> messages)
    {
        const int chunk = 256 * 1024;
        while (!messages.IsEmpty)
        {
            ReadOnlyMemory<byte> part = messages[..Math.Min(chunk, messages.Length)];
            await _stream.WriteAsync(part, _cts.Token).ConfigureAwait(false);
            messages = messages[part.Length..];
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _cts.CancelAsync().ConfigureAwait(false);
        _socket.Dispose();
        foreach (Task? t in new[] { _reader, _keepalive })
        {
            if (t is not null)
            {
                try
                {
                    await t.ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                }
            }
        }
        await _stream.DisposeAsync().ConfigureAwait(false);
        _cts.Dispose();
    }
}
