using System.Buffers.Binary;
using Grpc.Core;

namespace CalicoSharp.Rpc;

/// <summary>
/// One HTTP/2 connection (RFC 9113), the part client and server share: the frame reader with every
/// frame-level rule, SETTINGS, PING, GOAWAY, both directions of flow control, header blocks through
/// HPACK, and the writer that coalesces frames into one send. The roles add how streams begin and end.
/// </summary>
internal abstract class Http2Connection : IAsyncDisposable
{
    /// <summary>What the peer may send on one stream before this side credits more (SETTINGS_INITIAL_WINDOW_SIZE).</summary>
    protected const int StreamWindow = 1 << 20;

    /// <summary>What the peer may send on the whole connection before this side credits more.</summary>
    protected const int ConnectionWindow = 16 << 20;

    /// <summary>Complete messages a stream may hold unread before its credit is held back.</summary>
    private const int UnreadHighWater = 1 << 20;

    /// <summary>The largest header block (all fragments) accepted: HPACK can only shrink it so far.</summary>
    private const int MaxHeaderBlock = 64 * 1024;

    private readonly Stream io;
    private readonly SemaphoreSlim writeLock = new(1, 1);
    private readonly FrameWriter writer = new();
    private readonly FrameWriter control = new();
    private readonly HpackDecoder decoder = new(4096, 16 * 1024);
    private byte[] headerBlock = [];
    private TaskCompletionSource windowChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long connectionSendWindow = Http2.DefaultWindow;
    private long peerInitialWindow = Http2.DefaultWindow;
    private int peerMaxFrameSize = Http2.DefaultMaxFrameSize;
    private long peerMaxHeaderListSize = long.MaxValue; // RFC 9113 §6.5.2: unlimited until the peer says
    // Until the peer's SETTINGS say otherwise, as Go's HTTP/2 client assumes: a burst at connection start is
    // not refused wholesale by a server with the common limit of 100.
    private long peerMaxConcurrentStreams = 100;
    private long connectionReceiveWindow = ConnectionWindow;
    private int connectionCredit;
    private bool settingsSeen;
    private int headerStream;
    private bool headerEndStream;
    private int headerFill;
    private Exception? failure;
    // Both buffers grow with what arrives (a process that makes one small call touches little memory):
    // the read buffer to the frame being received, up to 64 KiB; the header block to its fragments.
    private byte[] readBuffer = new byte[4096];
    private int readStart;
    private int readEnd;
    private int frameNeeded;
    private int prefaceLeft;
    private bool frameHandled;

    protected Http2Connection(Stream io, int maxMessageSize, bool blocking = false)
    {
        this.io = io;
        MaxMessageSize = maxMessageSize;
        Blocking = blocking;
    }

    /// <summary>Blocking mode: no reader of its own; callers write and read on their thread with the
    /// stream's blocking calls (see <see cref="ReadBlocking"/>). For short-lived, one-call-at-a-time
    /// processes, where starting the thread pool and the socket engine costs more than the calls.</summary>
    protected bool Blocking { get; }

    /// <summary>Sends what the writer holds (under the write lock); whole frames, never cancelled midway.</summary>
    private ValueTask WriteOutAsync()
    {
        if (Blocking)
        {
            io.Write(writer.Written.Span);
            return ValueTask.CompletedTask;
        }

        return io.WriteAsync(writer.Written, CancellationToken.None);
    }

    protected Lock Gate { get; } = new();

    /// <summary>Open streams by id. Guarded by <see cref="Gate"/>.</summary>
    protected Dictionary<int, Http2Stream> Streams { get; } = [];

    protected int MaxMessageSize { get; }

    /// <summary>Why the connection can no longer be used, once it cannot.</summary>
    public Exception? Failure
    {
        get
        {
            lock (Gate)
            {
                return failure;
            }
        }
    }

    /// <summary>The first bytes this side sends: the client preface (client only) and its SETTINGS, plus
    /// credit that opens the connection window to <see cref="ConnectionWindow"/>. Queued, so they leave
    /// with the first request or answer.</summary>
    protected void QueueHandshake(bool client, ReadOnlySpan<(ushort Id, uint Value)> settings)
    {
        lock (Gate)
        {
            if (client)
            {
                control.Raw(Http2.ClientPreface);
            }

            control.Settings(settings);
            control.WindowUpdate(0, ConnectionWindow - Http2.DefaultWindow);
        }
    }

    /// <summary>Reads and handles frames until the connection ends; never throws. (Asynchronous mode.)</summary>
    public async Task RunAsync(bool expectPreface)
    {
        prefaceLeft = expectPreface ? Http2.ClientPreface.Length : 0;
        try
        {
            while (true)
            {
                // Answers (acknowledgements, credit) leave once per read; a client's preface waits for its
                // first request instead, so that both go out in one write.
                if (ProcessBuffered())
                {
                    await FlushControlAsync().ConfigureAwait(false);
                }

                Received(await io.ReadAsync(ReadSpace()).ConfigureAwait(false));
            }
        }
        catch (Exception e) when (IsReaderFailure(e))
        {
            await FailReaderAsync(e).ConfigureAwait(false);
        }
    }

    /// <summary>Blocking mode: reads once on the calling thread and handles what arrived. A broken
    /// connection is failed (its streams see why); a read timeout propagates to the caller.</summary>
    protected void ReadBlocking()
    {
        BeforeBlockingRead();
        try
        {
            Received(io.Read(ReadSpace().Span));
            if (ProcessBuffered())
            {
                FlushControlAsync().GetAwaiter().GetResult();
            }
        }
        catch (IOException e) when (e.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.TimedOut })
        {
            throw new TimeoutException("read timed out", e);
        }
        catch (Exception e) when (IsReaderFailure(e))
        {
            FailReaderAsync(e).GetAwaiter().GetResult();
        }
    }

    /// <summary>Blocking mode: bounds the next read (a client sets its call's deadline here).</summary>
    protected virtual void BeforeBlockingRead()
    {
    }

    private static bool IsReaderFailure(Exception e) => e is Http2Exception or HpackException or IOException or ObjectDisposedException
        or OperationCanceledException or System.Net.Sockets.SocketException or InvalidOperationException;

    private async Task FailReaderAsync(Exception e)
    {
        switch (e)
        {
            case Http2Exception h:
                await GoAwayAsync(h.Code, h.Message).ConfigureAwait(false);
                Fail(h);
                break;
            case HpackException c:
                await GoAwayAsync(Http2ErrorCode.CompressionError, c.Message).ConfigureAwait(false);
                Fail(new Http2Exception(Http2ErrorCode.CompressionError, c.Message));
                break;
            default:
                Fail(e);
                break;
        }
    }

    /// <summary>Where the next read goes: after what is buffered, the buffer compacted when a whole
    /// frame would no longer fit.</summary>
    private Memory<byte> ReadSpace()
    {
        if (readStart == readEnd)
        {
            readStart = readEnd = 0;
        }
        else if (readStart > 0 && readBuffer.Length - readEnd < Math.Max(frameNeeded, 1024))
        {
            Buffer.BlockCopy(readBuffer, readStart, readBuffer, 0, readEnd - readStart);
            readEnd -= readStart;
            readStart = 0;
        }

        if (readEnd == readBuffer.Length || frameNeeded > readBuffer.Length)
        {
            Array.Resize(ref readBuffer, Math.Min(Math.Max(readBuffer.Length * 2, frameNeeded), 64 * 1024));
        }

        return readBuffer.AsMemory(readEnd);
    }

    private void Received(int n)
    {
        if (n == 0)
        {
            throw new IOException("the peer closed the connection");
        }

        readEnd += n;
    }

    /// <summary>Handles every complete frame in the buffer; true once any frame was ever handled.</summary>
    private bool ProcessBuffered()
    {
        byte[] buf = readBuffer;
        if (prefaceLeft > 0 && readEnd - readStart >= prefaceLeft)
        {
            // RFC 9113 §3.4: anything but the exact preface ends the connection.
            if (!buf.AsSpan(readStart, prefaceLeft).SequenceEqual(Http2.ClientPreface))
            {
                throw new Http2Exception(Http2ErrorCode.ProtocolError, "the client did not send the HTTP/2 connection preface (is it speaking HTTP/1.1 or TLS?)");
            }

            readStart += prefaceLeft;
            prefaceLeft = 0;
        }

        while (prefaceLeft == 0 && readEnd - readStart >= Http2.FrameHeaderLength)
        {
            int start = readStart;
            int length = (buf[start] << 16) | (buf[start + 1] << 8) | buf[start + 2];
            if (length > Http2.DefaultMaxFrameSize)
            {
                throw new Http2Exception(Http2ErrorCode.FrameSizeError, $"frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE {Http2.DefaultMaxFrameSize}");
            }

            if (readEnd - start < Http2.FrameHeaderLength + length)
            {
                frameNeeded = Http2.FrameHeaderLength + length;
                break;
            }

            frameNeeded = 0;

            var type = (FrameType)buf[start + 3];
            byte flags = buf[start + 4];
            int stream = BinaryPrimitives.ReadInt32BigEndian(buf.AsSpan(start + 5)) & int.MaxValue;
            readStart = start + Http2.FrameHeaderLength + length;
            HandleFrame(type, flags, stream, buf.AsSpan(start + Http2.FrameHeaderLength, length));
            frameHandled = true;
        }

        return frameHandled;
    }

    private void HandleFrame(FrameType type, byte flags, int stream, ReadOnlySpan<byte> payload)
    {
        if (!settingsSeen && type != FrameType.Settings)
        {
            // RFC 9113 §3.4: the peer's preface is a SETTINGS frame.
            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"expected SETTINGS first, got {type}");
        }

        if (headerStream != 0 && type != FrameType.Continuation)
        {
            // RFC 9113 §6.10: a header block is contiguous.
            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"{type} frame inside the header block of stream {headerStream}");
        }

        switch (type)
        {
            case FrameType.Data:
                OnDataFrame(flags, stream, payload);
                break;
            case FrameType.Headers:
                OnHeadersFrame(flags, stream, payload);
                break;
            case FrameType.Continuation:
                if (headerStream == 0 || stream != headerStream)
                {
                    throw new Http2Exception(Http2ErrorCode.ProtocolError, "CONTINUATION without a header block in progress on its stream");
                }

                AppendHeaderFragment(payload, flags);
                break;
            case FrameType.Priority:
                RequireStream(stream, type);
                if (payload.Length != 5)
                {
                    QueueReset(stream, Http2ErrorCode.FrameSizeError);
                }

                break;
            case FrameType.RstStream:
                RequireStream(stream, type);
                RequireLength(payload, 4, type);
                OnRstStream(stream, (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload));
                break;
            case FrameType.Settings:
                OnSettings(flags, stream, payload);
                break;
            case FrameType.PushPromise:
                // This side never enables push (clients say so; servers never receive it).
                throw new Http2Exception(Http2ErrorCode.ProtocolError, "PUSH_PROMISE is not allowed on this connection");
            case FrameType.Ping:
                RequireConnection(stream, type);
                RequireLength(payload, 8, type);
                if ((flags & Http2.FlagAck) == 0)
                {
                    lock (Gate)
                    {
                        control.Frame(FrameType.Ping, Http2.FlagAck, 0, payload);
                    }
                }
                else
                {
                    OnPingAck(BinaryPrimitives.ReadInt64BigEndian(payload));
                }

                break;
            case FrameType.GoAway:
                RequireConnection(stream, type);
                if (payload.Length < 8)
                {
                    throw new Http2Exception(Http2ErrorCode.FrameSizeError, "GOAWAY shorter than 8 bytes");
                }

                OnGoAway(BinaryPrimitives.ReadInt32BigEndian(payload) & int.MaxValue, (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload[4..]),
                    System.Text.Encoding.UTF8.GetString(payload[8..Math.Min(payload.Length, 264)]));
                break;
            case FrameType.WindowUpdate:
                RequireLength(payload, 4, type);
                OnWindowUpdate(stream, BinaryPrimitives.ReadInt32BigEndian(payload) & int.MaxValue);
                break;
            default:
                // RFC 9113 §5.5: unknown frame types are ignored.
                break;
        }
    }

    private static void RequireStream(int stream, FrameType type)
    {
        if (stream == 0)
        {
            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"{type} on stream 0");
        }
    }

    private static void RequireConnection(int stream, FrameType type)
    {
        if (stream != 0)
        {
            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"{type} on stream {stream}, not 0");
        }
    }

    private static void RequireLength(ReadOnlySpan<byte> payload, int length, FrameType type)
    {
        if (payload.Length != length)
        {
            throw new Http2Exception(Http2ErrorCode.FrameSizeError, $"{type} of {payload.Length} bytes, not {length}");
        }
    }

    /// <summary>RFC 9113 §6.1 and §6.2: strips the pad length byte and the padding.</summary>
    private static ReadOnlySpan<byte> Unpad(byte flags, ReadOnlySpan<byte> payload, FrameType type)
    {
        if ((flags & Http2.FlagPadded) == 0)
        {
            return payload;
        }

        if (payload.Length < 1 || payload[0] >= payload.Length)
        {
            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"{type} padding is as long as the frame");
        }

        return payload[1..(payload.Length - payload[0])];
    }

    private void OnDataFrame(byte flags, int id, ReadOnlySpan<byte> payload)
    {
        RequireStream(id, FrameType.Data);
        int frameLength = payload.Length;
        ReadOnlySpan<byte> data = Unpad(flags, payload, FrameType.Data);
        bool end = (flags & Http2.FlagEndStream) != 0;
        Http2Stream? s;
        lock (Gate)
        {
            connectionReceiveWindow -= frameLength;
            if (connectionReceiveWindow < 0)
            {
                throw new Http2Exception(Http2ErrorCode.FlowControlError, "the peer sent more DATA than the connection window allows");
            }

            // The connection window is credited at once: one slow stream must not stop the others.
            connectionCredit += frameLength;
            if (connectionCredit >= ConnectionWindow / 4)
            {
                control.WindowUpdate(0, connectionCredit);
                connectionReceiveWindow += connectionCredit;
                connectionCredit = 0;
            }

            s = FindStreamLocked(id, FrameType.Data);
            if (s is null)
            {
                return;
            }

            if (s.RemoteClosed)
            {
                QueueResetLocked(s, Http2ErrorCode.StreamClosed, "DATA after END_STREAM");
                return;
            }

            s.ReceiveWindow -= frameLength;
            if (s.ReceiveWindow < 0)
            {
                QueueResetLocked(s, Http2ErrorCode.FlowControlError, "the peer sent more DATA than the stream window allows");
                return;
            }
        }

        if (!s.HeadersReceived)
        {
            QueueReset(id, Http2ErrorCode.ProtocolError, "DATA before HEADERS");
            return;
        }

        int completed = s.OnData(data);
        lock (Gate)
        {
            if (s.Failure is not null)
            {
                OnMessageFailureLocked(s);
                return;
            }

            s.Unread += completed;
            if (!end)
            {
                Credit(s, frameLength);
            }
        }

        if (end)
        {
            EndRemote(s);
        }
    }

    /// <summary>A message on the stream broke the rules (over the size limit, compressed): its reader gets the
    /// failure. By default the stream is reset (CANCEL) at once; no more credit is given either way. Under the gate.</summary>
    protected virtual void OnMessageFailureLocked(Http2Stream s) => QueueResetLocked(s, Http2ErrorCode.Cancel, null);

    /// <summary>Whether this side stops sending on a stream the peer has ended: a client, whose answer is then
    /// complete (RFC 9113 §8.1: a server may answer before the request is whole).</summary>
    protected virtual bool StopsSendingWhenPeerEnds => false;

    /// <summary>Credits consumed bytes to a stream, held back while its reader is behind. Under the gate.</summary>
    private void Credit(Http2Stream s, int bytes)
    {
        if (s.Unread > UnreadHighWater)
        {
            s.HeldCredit += bytes;
            return;
        }

        s.CreditPending += bytes + s.HeldCredit;
        s.HeldCredit = 0;
        if (s.CreditPending >= StreamWindow / 4 && !s.RemoteClosed)
        {
            control.WindowUpdate(s.Id, s.CreditPending);
            s.ReceiveWindow += s.CreditPending;
            s.CreditPending = 0;
        }
    }

    /// <summary>Takes the next complete message of a stream: null at its end. Faults with the stream's
    /// failure (reset, connection lost, message too large).</summary>
    public async ValueTask<byte[]?> ReadMessageAsync(Http2Stream s, CancellationToken ct)
    {
        if (!await s.Messages.WaitToReadAsync(ct).ConfigureAwait(false))
        {
            return null;
        }

        if (!s.Messages.TryRead(out byte[]? m))
        {
            return null;
        }

        bool flush;
        lock (Gate)
        {
            s.Unread -= m.Length;
            bool held = s.HeldCredit > 0;
            if (held)
            {
                Credit(s, 0);
            }

            flush = held && !control.IsEmpty;
        }

        if (flush)
        {
            await FlushControlAsync().ConfigureAwait(false);
        }

        return m;
    }

    private void OnHeadersFrame(byte flags, int id, ReadOnlySpan<byte> payload)
    {
        RequireStream(id, FrameType.Headers);
        ReadOnlySpan<byte> fragment = Unpad(flags, payload, FrameType.Headers);
        if ((flags & Http2.FlagPriority) != 0)
        {
            if (fragment.Length < 5)
            {
                throw new Http2Exception(Http2ErrorCode.FrameSizeError, "HEADERS with PRIORITY shorter than 5 bytes");
            }

            fragment = fragment[5..];
        }

        headerStream = id;
        headerEndStream = (flags & Http2.FlagEndStream) != 0;
        headerFill = 0;
        AppendHeaderFragment(fragment, flags);
    }

    private void AppendHeaderFragment(ReadOnlySpan<byte> fragment, byte flags)
    {
        if (fragment.Length > MaxHeaderBlock - headerFill)
        {
            throw new Http2Exception(Http2ErrorCode.EnhanceYourCalm, $"header block larger than {MaxHeaderBlock} bytes");
        }

        if (fragment.Length > headerBlock.Length - headerFill)
        {
            Array.Resize(ref headerBlock, Math.Min(MaxHeaderBlock, Math.Max(headerFill + fragment.Length, headerBlock.Length * 2)));
        }

        fragment.CopyTo(headerBlock.AsSpan(headerFill));
        headerFill += fragment.Length;
        if ((flags & Http2.FlagEndHeaders) == 0)
        {
            return;
        }

        int id = headerStream;
        headerStream = 0;

        // Every block is decoded, even for a stream already gone: the dynamic table must stay in step.
        List<HeaderField> fields = decoder.Decode(headerBlock.AsSpan(0, headerFill));
        OnHeaderBlock(id, fields, headerEndStream);
    }

    /// <summary>A complete, decoded header block arrived for a stream.</summary>
    protected abstract void OnHeaderBlock(int id, List<HeaderField> fields, bool endStream);

    /// <summary>Whether a stream id names a stream not yet opened (frames other than HEADERS on it are errors).</summary>
    protected abstract bool IsIdle(int id);

    /// <summary>The peer ended a stream (END_STREAM). The server answers it; the client's call completes.</summary>
    protected virtual void OnRemoteEnd(Http2Stream s)
    {
    }

    /// <summary>The peer sent GOAWAY.</summary>
    protected abstract void OnGoAway(int lastStream, Http2ErrorCode code, string debug);

    protected virtual void OnPingAck(long payload)
    {
    }

    /// <summary>Marks the remote side ended and retires the stream when both sides are done.</summary>
    protected void EndRemote(Http2Stream s)
    {
        s.OnRemoteEnd();
        OnRemoteEnd(s);
        lock (Gate)
        {
            if (s.LocalClosed)
            {
                RetireLocked(s);
            }
        }
    }

    /// <summary>Removes a finished stream; a connection left with none may close (see <see cref="OnIdle"/>).</summary>
    protected void RetireLocked(Http2Stream s)
    {
        if (!Streams.Remove(s.Id))
        {
            return;
        }

        SignalWindowLocked(); // a stream slot is free
        if (Streams.Count == 0 && ClosesWhenIdle)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static c => c.OnIdle(), this, preferLocal: false);
        }
    }

    /// <summary>Whether <see cref="OnIdle"/> has anything to do (a connection that is going away).</summary>
    protected virtual bool ClosesWhenIdle => false;

    /// <summary>The last open stream ended while <see cref="ClosesWhenIdle"/>.</summary>
    protected virtual void OnIdle()
    {
    }

    protected void QueueControlLocked(FrameType type, byte flags, int stream, ReadOnlySpan<byte> payload) => control.Frame(type, flags, stream, payload);

    /// <summary>Under the gate: the open stream a frame names, or null for one already closed (frames in
    /// flight after a close are dropped); a frame on a stream never opened is a connection error
    /// (RFC 9113 §5.1, the idle state).</summary>
    protected Http2Stream? FindStreamLocked(int id, FrameType type) =>
        Streams.TryGetValue(id, out Http2Stream? s) ? s
        : IsIdle(id) ? throw new Http2Exception(Http2ErrorCode.ProtocolError, $"{type} on idle stream {id}")
        : null;

    private void OnRstStream(int id, Http2ErrorCode code)
    {
        Http2Stream? s;
        lock (Gate)
        {
            s = FindStreamLocked(id, FrameType.RstStream);
            if (s is null)
            {
                return;
            }

            RetireLocked(s);
        }

        s.LocalClosed = true;
        s.Abort(code == Http2ErrorCode.RefusedStream
            ? new StreamRefusedException("the peer refused the stream (REFUSED_STREAM)")
            : new RpcException(new Status(code == Http2ErrorCode.Cancel ? StatusCode.Cancelled : StatusCode.Internal, $"the peer reset the stream ({code})")));
        OnStreamReset(s);
    }

    /// <summary>A stream ended by RST_STREAM, either side's.</summary>
    protected virtual void OnStreamReset(Http2Stream s)
    {
    }

    private void OnSettings(byte flags, int stream, ReadOnlySpan<byte> payload)
    {
        RequireConnection(stream, FrameType.Settings);
        if ((flags & Http2.FlagAck) != 0)
        {
            if (payload.Length != 0)
            {
                throw new Http2Exception(Http2ErrorCode.FrameSizeError, "SETTINGS acknowledgement with a payload");
            }

            if (!settingsSeen)
            {
                throw new Http2Exception(Http2ErrorCode.ProtocolError, "expected SETTINGS first, got an acknowledgement");
            }

            return;
        }

        if (payload.Length % 6 != 0)
        {
            throw new Http2Exception(Http2ErrorCode.FrameSizeError, $"SETTINGS of {payload.Length} bytes, not a multiple of 6");
        }

        settingsSeen = true;
        lock (Gate)
        {
            for (int i = 0; i < payload.Length; i += 6)
            {
                ushort key = BinaryPrimitives.ReadUInt16BigEndian(payload[i..]);
                uint value = BinaryPrimitives.ReadUInt32BigEndian(payload[(i + 2)..]);
                switch (key)
                {
                    case Http2.SettingsEnablePush when value > 1:
                        throw new Http2Exception(Http2ErrorCode.ProtocolError, $"SETTINGS_ENABLE_PUSH {value}");
                    case Http2.SettingsInitialWindowSize:
                        if (value > Http2.MaxWindow)
                        {
                            throw new Http2Exception(Http2ErrorCode.FlowControlError, $"SETTINGS_INITIAL_WINDOW_SIZE {value} exceeds 2^31-1");
                        }

                        // RFC 9113 §6.9.2: the change applies to every open stream's window.
                        long delta = value - peerInitialWindow;
                        peerInitialWindow = value;
                        foreach (Http2Stream s in Streams.Values)
                        {
                            s.SendWindow += delta;
                            if (s.SendWindow > Http2.MaxWindow)
                            {
                                throw new Http2Exception(Http2ErrorCode.FlowControlError, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window");
                            }
                        }

                        break;
                    case Http2.SettingsMaxConcurrentStreams:
                        peerMaxConcurrentStreams = value;
                        break;
                    case Http2.SettingsMaxFrameSize:
                        if (value < Http2.DefaultMaxFrameSize || value > 16_777_215)
                        {
                            throw new Http2Exception(Http2ErrorCode.ProtocolError, $"SETTINGS_MAX_FRAME_SIZE {value} outside 16384..16777215");
                        }

                        peerMaxFrameSize = (int)value;
                        break;
                    case Http2.SettingsMaxHeaderListSize:
                        peerMaxHeaderListSize = value;
                        break;
                    default:
                        // The header table size the peer allows us is moot (this side never indexes).
                        break;
                }
            }

            control.Frame(FrameType.Settings, Http2.FlagAck, 0, []);
            SignalWindowLocked();
        }
    }

    private void OnWindowUpdate(int id, int increment)
    {
        lock (Gate)
        {
            if (id == 0)
            {
                if (increment == 0)
                {
                    throw new Http2Exception(Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0 on the connection");
                }

                connectionSendWindow += increment;
                if (connectionSendWindow > Http2.MaxWindow)
                {
                    throw new Http2Exception(Http2ErrorCode.FlowControlError, "connection window above 2^31-1");
                }
            }
            else if (FindStreamLocked(id, FrameType.WindowUpdate) is { } s)
            {
                if (increment == 0)
                {
                    QueueResetLocked(s, Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0");
                    return;
                }

                s.SendWindow += increment;
                if (s.SendWindow > Http2.MaxWindow)
                {
                    QueueResetLocked(s, Http2ErrorCode.FlowControlError, "stream window above 2^31-1");
                    return;
                }
            }

            SignalWindowLocked();
        }
    }

    private void SignalWindowLocked()
    {
        TaskCompletionSource t = windowChanged;
        windowChanged = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        t.TrySetResult();
    }

    /// <summary>Under the gate: whether the peer's SETTINGS_MAX_CONCURRENT_STREAMS allows one more stream
    /// (RFC 9113 §5.1.2); if not, what completes when a slot may have come free.</summary>
    protected Task? WaitForStreamSlotLocked() => Streams.Count < peerMaxConcurrentStreams ? null : windowChanged.Task;

    /// <summary>The id for a stream this side opens (odd for a client). Under the gate.</summary>
    protected virtual int NextStreamIdLocked() => throw new InvalidOperationException("this side does not open streams");

    /// <summary>Creates a stream with this side's and the peer's initial windows.</summary>
    protected Http2Stream NewStreamLocked(int id) => new(id, peerInitialWindow, StreamWindow, MaxMessageSize);

    protected void QueueReset(int id, Http2ErrorCode code, string? why = null)
    {
        lock (Gate)
        {
            if (Streams.TryGetValue(id, out Http2Stream? s))
            {
                QueueResetLocked(s, code, why);
            }
            else
            {
                control.RstStream(id, code);
            }
        }
    }

    /// <summary>Resets a stream from this side: RST_STREAM is queued, the stream retired and its reader told.</summary>
    protected void QueueResetLocked(Http2Stream s, Http2ErrorCode code, string? why)
    {
        control.RstStream(s.Id, code);
        RetireLocked(s);
        s.LocalClosed = true;
        s.Abort(s.Failure ?? new RpcException(new Status(code == Http2ErrorCode.Cancel ? StatusCode.Cancelled : StatusCode.Internal,
            why is null ? $"stream reset ({code})" : $"stream reset ({code}): {why}")));
        OnStreamReset(s);
    }

    /// <summary>The largest header list the peer said it accepts (SETTINGS_MAX_HEADER_LIST_SIZE; unlimited until
    /// its SETTINGS arrive).</summary>
    public long PeerMaxHeaderListSize
    {
        get
        {
            lock (Gate)
            {
                return peerMaxHeaderListSize;
            }
        }
    }

    /// <summary>Sends whatever control frames are queued (acknowledgements, credit, resets).</summary>
    public async Task FlushControlAsync()
    {
        lock (Gate)
        {
            if (control.IsEmpty)
            {
                return;
            }
        }

        await writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            writer.Clear();
            TakeControl();
            if (!writer.IsEmpty)
            {
                await WriteOutAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            writeLock.Release();
        }
    }

    /// <summary>Sends the queued control frames; a failed write fails the connection instead of throwing.</summary>
    protected async Task FlushQuietlyAsync()
    {
        try
        {
            await FlushControlAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
        {
            Fail(e);
        }
    }

    private void TakeControl()
    {
        lock (Gate)
        {
            if (!control.IsEmpty)
            {
                writer.Raw(control.Written.Span);
                control.Clear();
            }
        }
    }

    /// <summary>
    /// Sends on a stream: a header block, then the data as flow control allows (waiting for credit in
    /// between, without holding the writer), then a trailing header block; END_STREAM on the last frame
    /// when <paramref name="endStream"/>. Frames go out whole: cancellation stops between writes only.
    /// </summary>
    protected async Task SendAsync(Http2Stream s, byte[]? headers, ReadOnlyMemory<byte> data, byte[]? trailers, bool endStream, CancellationToken ct)
    {
        bool headersSent = headers is null;
        int pos = 0;
        while (true)
        {
            Task? wait = null;
            await writeLock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                if (!ThrowIfUnusable(s, pos < data.Length))
                {
                    return;
                }

                if (s.Id == 0)
                {
                    // RFC 9113 §5.1.1 and §5.1.2: a new stream takes the next id as its HEADERS are written,
                    // and only while the peer's concurrency limit allows.
                    lock (Gate)
                    {
                        wait = WaitForStreamSlotLocked();
                        if (wait is null)
                        {
                            s.Id = NextStreamIdLocked();
                            Streams[s.Id] = s;
                        }
                    }
                }

                writer.Clear();
                TakeControl();
                if (!headersSent && s.Id != 0)
                {
                    writer.HeaderBlock(s.Id, headers, endStream && data.IsEmpty && trailers is null, peerMaxFrameSize);
                    headersSent = true;
                }

                while (pos < data.Length && s.Id != 0)
                {
                    int n;
                    lock (Gate)
                    {
                        n = (int)Math.Min(Math.Min(s.SendWindow, connectionSendWindow), Math.Min(peerMaxFrameSize, data.Length - pos));
                        if (n > 0)
                        {
                            s.SendWindow -= n;
                            connectionSendWindow -= n;
                        }
                        else
                        {
                            wait = windowChanged.Task;
                        }
                    }

                    if (n <= 0)
                    {
                        break;
                    }

                    bool last = pos + n == data.Length;
                    writer.Frame(FrameType.Data, last && trailers is null && endStream ? Http2.FlagEndStream : (byte)0, s.Id, data.Span.Slice(pos, n));
                    pos += n;
                }

                if (pos == data.Length && trailers is not null && s.Id != 0)
                {
                    writer.HeaderBlock(s.Id, trailers, endStream, peerMaxFrameSize);
                }

                if (!writer.IsEmpty)
                {
                    await WriteOutAsync().ConfigureAwait(false);
                }
            }
            finally
            {
                writeLock.Release();
            }

            if (pos == data.Length && headersSent)
            {
                if (endStream)
                {
                    lock (Gate)
                    {
                        s.LocalClosed = true;
                        if (s.RemoteClosed)
                        {
                            RetireLocked(s);
                        }
                    }
                }

                return;
            }

            if (Blocking)
            {
                // No reader runs in the background: credit arrives by reading here.
                ReadBlocking();
            }
            else
            {
                await Task.WhenAny(wait!, s.Ended).WaitAsync(ct).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Throws when the stream or the connection cannot carry more; false when the rest of the data is
    /// not wanted: RFC 9113 §8.1, the server answered in full before it had the whole request (a message over
    /// its limit, an unknown method), and may have reset the stream with NO_ERROR after its answer — a client
    /// stops sending and reads the answer rather than discarding it.</summary>
    private bool ThrowIfUnusable(Http2Stream s, bool dataLeft)
    {
        lock (Gate)
        {
            if (dataLeft && StopsSendingWhenPeerEnds && s.Ended.IsCompletedSuccessfully)
            {
                return false;
            }

            if (failure is not null)
            {
                throw Unavailable(failure);
            }

            if (s.LocalClosed)
            {
                throw s.Failure ?? new RpcException(new Status(StatusCode.Cancelled, "the stream was reset"));
            }

            return true;
        }
    }

    /// <summary>How this side's errors name the peer (a client: its endpoint); null names none.</summary>
    protected string? PeerName { get; init; }

    /// <summary>The gRPC view of a dead connection, naming the peer that went away.</summary>
    protected RpcException Unavailable(Exception reason) =>
        reason as RpcException ?? new RpcException(new Status(StatusCode.Unavailable, PeerName is null ? reason.Message : $"{PeerName}: {reason.Message}", reason));

    /// <summary>Ends the connection with GOAWAY (best effort).</summary>
    protected async Task GoAwayAsync(Http2ErrorCode code, string? debug)
    {
        try
        {
            if (!await writeLock.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false))
            {
                return;
            }

            try
            {
                writer.Clear();
                TakeControl();
                writer.GoAway(LastPeerStream, code, debug);
                await WriteOutAsync().ConfigureAwait(false);
            }
            finally
            {
                writeLock.Release();
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or System.Net.Sockets.SocketException)
        {
            // the peer is gone already
        }
    }

    /// <summary>The highest stream id the peer opened (0 for a client, whose peer opens none).</summary>
    protected virtual int LastPeerStream => 0;

    /// <summary>The connection is unusable: every open stream fails with the reason; the transport closes.</summary>
    protected void Fail(Exception reason)
    {
        List<Http2Stream> open;
        lock (Gate)
        {
            failure ??= reason;
            open = [.. Streams.Values];
            Streams.Clear();
            SignalWindowLocked();
        }

        // The error is only made for streams that get it: a status's text names its code by reflection, cold
        // code that a short-lived client closing an idle connection has no use for.
        if (open.Count > 0)
        {
            RpcException error = Unavailable(reason);
            foreach (Http2Stream s in open)
            {
                s.LocalClosed = true;
                s.Abort(error);
                OnStreamReset(s);
            }
        }

        io.Dispose();
    }

    /// <summary>Closes the transport; open streams fail as Unavailable with the reason.</summary>
    public void Close(string why) => Fail(new ObjectDisposedException("HTTP/2 connection", $"the connection was closed: {why}"));

    public virtual ValueTask DisposeAsync()
    {
        Close("disposed");
        return ValueTask.CompletedTask;
    }
}
