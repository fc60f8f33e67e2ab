using System.Buffers;
using System.IO.Pipelines;

namespace CalicoSharp.Bgp;

/// <summary>
/// One TCP connection to a peer: a read task that frames and decodes messages and hands them to the event
/// loop in batches of up to <see cref="Batch"/> (one work item per batch, not per message; at most
/// <see cref="ReadCredits"/> messages unprocessed at a time, so a fast sender is slowed by TCP, not buffered
/// without bound), and a write pump that drains what the loop wrote. UPDATE messages are recycled once the
/// loop has handled them: a handler must not keep one. The loop writes through
/// <see cref="Output"/> and watches <see cref="QueuedBytes"/>: a peer that stops reading stops receiving new
/// UPDATEs (its changes wait in the RIB), and never stalls the loop or the other peers.
/// </summary>
public sealed class BgpConnection : IAsyncDisposable
{
    public const int ReadCredits = 128;

    /// <summary>Messages handed to the loop in one work item (as many as the bytes at hand hold, up to this).</summary>
    public const int Batch = 32;

    /// <summary>UPDATEs kept for reuse: what can be in flight, plus a batch being decoded; only small ones (room for at
    /// most <see cref="SpareUpdateCapacity"/> prefixes), where the lists cost most per prefix and keeping them little.</summary>
    private const int SpareUpdates = ReadCredits + Batch;
    private const int SpareUpdateCapacity = 64;

    private readonly Stream _stream;
    private readonly IEventLoop _loop;
    private readonly TimeProvider _time;
    private readonly Pipe _out = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, minimumSegmentSize: 64 * 1024, useSynchronizationContext: false));
    private readonly SemaphoreSlim _credits = new(ReadCredits / Batch);
    private readonly Stack<UpdateMessage> _spareUpdates = new();
    private readonly CancellationTokenSource _cts = new();
    private Task? _reader;
    private Task? _writer;
    private long _queued;
    private long _lastReceived;
    private long _lastSent;
    private int _closed;
    private volatile bool _wantDrained;

    public BgpConnection(Stream stream, IEventLoop loop, TimeProvider time, string remote, bool outgoing)
    {
        _stream = stream;
        _loop = loop;
        _time = time;
        Remote = remote;
        Outgoing = outgoing;
        _lastReceived = time.GetTimestamp();
        _lastSent = _lastReceived;
    }

    public string Remote { get; }

    public bool Outgoing { get; }

    /// <summary>Negotiated codec options; set by the session (on the loop) before it sends its KEEPALIVE.</summary>
    public CodecOptions Options { get; set; } = new(false, false);

    public long QueuedBytes => Interlocked.Read(ref _queued);

    public bool Closed => Volatile.Read(ref _closed) != 0;

    public TimeSpan SinceLastReceived => _time.GetElapsedTime(Interlocked.Read(ref _lastReceived));

    /// <summary>Time since the pump last got bytes out while some were waiting (zero when nothing waits).</summary>
    public TimeSpan SendStalledFor => QueuedBytes == 0 ? TimeSpan.Zero : _time.GetElapsedTime(Interlocked.Read(ref _lastSent));

    /// <summary>Message handler (runs on the loop). An <see cref="UpdateMessage"/> is reused for a later message once the
    /// handler returns: keep what it holds (its attributes, copies of its prefixes), never the message or its lists.</summary>
    public Action<BgpConnection, BgpMessage>? OnMessage { get; set; }

    /// <summary>Called on the loop when reading stops: null for an orderly close, else the error.</summary>
    public Action<BgpConnection, Exception?>? OnClosed { get; set; }

    /// <summary>Called on the loop when the output queue drained below the low-water mark after <see cref="WantDrained"/>.</summary>
    public Action<BgpConnection>? OnDrained { get; set; }

    public long LowWater { get; set; } = 256 * 1024;

    /// <summary>The loop writes here (loop thread only) and then calls <see cref="Flush"/>.</summary>
    public IBufferWriter<byte> Output => _out.Writer;

    public void Start()
    {
        _reader = Task.Run(ReadLoopAsync);
        _writer = Task.Run(WriteLoopAsync);
    }

    public void Send(ReadOnlySpan<byte> message)
    {
        if (Closed)
        {
            return;
        }
        _out.Writer.Write(message);
        Flush();
    }

    public void Flush()
    {
        if (Closed)
        {
            return;
        }
        long n = _out.Writer.UnflushedBytes;
        if (n == 0)
        {
            return;
        }
        if (Interlocked.Add(ref _queued, n) == n)
        {
            Interlocked.Exchange(ref _lastSent, _time.GetTimestamp());
        }
        ValueTask<FlushResult> f = _out.Writer.FlushAsync();
        if (!f.IsCompleted)
        {
            _ = f.AsTask();
        }
    }

    /// <summary>Ask for <see cref="OnDrained"/> once the queue is below the low-water mark.</summary>
    public void WantDrained()
    {
        _wantDrained = true;
        if (QueuedBytes < LowWater)
        {
            FireDrained();
        }
    }

    private void FireDrained()
    {
        if (_wantDrained)
        {
            _wantDrained = false;
            _loop.Post(() =>
            {
                if (!Closed)
                {
                    OnDrained?.Invoke(this);
                }
            });
        }
    }

    private async Task ReadLoopAsync()
    {
        Exception? error = null;
        PipeReader reader = PipeReader.Create(_stream, new StreamPipeReaderOptions(bufferSize: 64 * 1024, minimumReadSize: 16 * 1024, leaveOpen: true));
        byte[] scratch = ArrayPool<byte>.Shared.Rent(65535);
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync(_cts.Token).ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                if (!buffer.IsEmpty)
                {
                    Interlocked.Exchange(ref _lastReceived, _time.GetTimestamp());
                }
                BgpMessage[]? batch = null;
                int count = 0;
                try
                {
                    while (TryTakeMessage(ref buffer, scratch, out BgpMessage? message))
                    {
                        batch ??= new BgpMessage[Batch];
                        batch[count++] = message!;
                        if (count == Batch)
                        {
                            await PostAsync(batch, count).ConfigureAwait(false);
                            batch = null;
                            count = 0;
                        }
                    }
                }
                finally
                {
                    // Also when the next message failed to decode: those before it are handled first.
                    if (count > 0)
                    {
                        await PostAsync(batch!, count).ConfigureAwait(false);
                    }
                }
                reader.AdvanceTo(buffer.Start, buffer.End);
                if (result.IsCompleted)
                {
                    if (!buffer.IsEmpty)
                    {
                        error = new IOException($"connection closed by {Remote} in the middle of a message");
                    }
                    break;
                }
            }
        }
        catch (OperationCanceledException) when (_cts.IsCancellationRequested)
        {
        }
#pragma warning disable CA1031 // Every read failure ends the connection and is reported to the FSM.
        catch (Exception e)
#pragma warning restore CA1031
        {
            error = e;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
            await reader.CompleteAsync().ConfigureAwait(false);
        }
        if (!_cts.IsCancellationRequested)
        {
            Exception? e = error;
            _loop.Post(() =>
            {
                if (!Closed)
                {
                    OnClosed?.Invoke(this, e);
                }
            });
        }
    }

    private async Task PostAsync(BgpMessage[] batch, int count)
    {
        await _credits.WaitAsync(_cts.Token).ConfigureAwait(false);
        _loop.Post(() => Deliver(batch, count));
    }

    private void Deliver(BgpMessage[] batch, int count)
    {
        try
        {
            for (int i = 0; i < count; i++)
            {
                BgpMessage m = batch[i];
                if (!Closed)
                {
                    OnMessage?.Invoke(this, m);
                }
                if (m is UpdateMessage u && u.PrefixCapacity <= SpareUpdateCapacity)
                {
                    lock (_spareUpdates)
                    {
                        if (_spareUpdates.Count < SpareUpdates)
                        {
                            _spareUpdates.Push(u);
                        }
                    }
                }
            }
        }
        finally
        {
            if (!_cts.IsCancellationRequested)
            {
                _credits.Release();
            }
        }
    }

    /// <summary>Frames one message (header checked before the body is awaited) and decodes it.</summary>
    private bool TryTakeMessage(ref ReadOnlySequence<byte> buffer, byte[] scratch, out BgpMessage? message)
    {
        message = null;
        if (buffer.Length < MessageDecoder.HeaderLength)
        {
            return false;
        }
        Span<byte> header = stackalloc byte[MessageDecoder.HeaderLength];
        buffer.Slice(0, MessageDecoder.HeaderLength).CopyTo(header);
        CodecOptions options = Options;
        MessageDecoder.TryReadHeader(header, options.MaxMessageLength, out MessageType type, out int length);
        if (buffer.Length < length)
        {
            return false;
        }
        ReadOnlySequence<byte> body = buffer.Slice(MessageDecoder.HeaderLength, length - MessageDecoder.HeaderLength);
        ReadOnlySpan<byte> span;
        if (body.IsSingleSegment)
        {
            span = body.FirstSpan;
        }
        else
        {
            body.CopyTo(scratch);
            span = scratch.AsSpan(0, (int)body.Length);
        }
        UpdateMessage? reuse = null;
        if (type == MessageType.Update)
        {
            lock (_spareUpdates)
            {
                _spareUpdates.TryPop(out reuse);
            }
        }
        message = MessageDecoder.Decode(type, span, options, reuse);
        buffer = buffer.Slice(length);
        return true;
    }

    private async Task WriteLoopAsync()
    {
        PipeReader reader = _out.Reader;
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync(_cts.Token).ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    await _stream.WriteAsync(segment, _cts.Token).ConfigureAwait(false);
                    Interlocked.Exchange(ref _lastSent, _time.GetTimestamp());
                    if (Interlocked.Add(ref _queued, -segment.Length) < LowWater)
                    {
                        FireDrained();
                    }
                }
                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    break;
                }
            }
            await _stream.FlushAsync(_cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_cts.IsCancellationRequested)
        {
        }
#pragma warning disable CA1031 // A write failure surfaces through the reader (the socket is closed below).
        catch (Exception)
#pragma warning restore CA1031
        {
            await _cts.CancelAsync().ConfigureAwait(false);
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
        await reader.CompleteAsync().ConfigureAwait(false);
    }

    /// <summary>Sends what is queued (at most <paramref name="linger"/>), then closes. Safe to call twice.</summary>
    public void Close(TimeSpan linger)
    {
        if (Interlocked.Exchange(ref _closed, 1) != 0)
        {
            return;
        }
        _ = CloseAsync(linger);
    }

    private async Task CloseAsync(TimeSpan linger)
    {
        try
        {
            await _out.Writer.CompleteAsync().ConfigureAwait(false);
            if (_writer is not null && linger > TimeSpan.Zero)
            {
                await Task.WhenAny(_writer, Task.Delay(linger, _time)).ConfigureAwait(false);
            }
        }
        finally
        {
            await _cts.CancelAsync().ConfigureAwait(false);
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        Close(TimeSpan.Zero);
        await _cts.CancelAsync().ConfigureAwait(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        try
        {
            if (_reader is not null)
            {
                await _reader.ConfigureAwait(false);
            }
            if (_writer is not null)
            {
                await _writer.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
        }
        _cts.Dispose();
        _credits.Dispose();
    }
}
