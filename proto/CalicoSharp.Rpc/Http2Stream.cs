using System.Buffers.Binary;
using System.Threading.Channels;
using Grpc.Core;

namespace CalicoSharp.Rpc;

/// <summary>
/// One HTTP/2 stream carrying a gRPC call: its flow-control windows, the header blocks it received, and
/// the gRPC messages reassembled from its DATA frames (RFC 9113 §5.1; gRPC's length-prefixed messages).
/// Window fields are guarded by the connection's gate.
/// </summary>
internal sealed class Http2Stream
{
    private readonly Channel<byte[]> messages = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly TaskCompletionSource<List<HeaderField>> headers = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly int maxMessageSize;
    private readonly byte[] prefix = new byte[5];
    private int prefixFill;
    private byte[]? message;
    private int messageFill;

    public Http2Stream(int id, long sendWindow, int receiveWindow, int maxMessageSize)
    {
        Id = id;
        SendWindow = sendWindow;
        ReceiveWindow = receiveWindow;
        this.maxMessageSize = maxMessageSize;
    }

    /// <summary>0 until the connection opens the stream, when its HEADERS go out (ids must leave in order).</summary>
    public int Id { get; set; }

    /// <summary>How much DATA this side may still send (the peer's window for the stream).</summary>
    public long SendWindow { get; set; }

    /// <summary>How much DATA the peer may still send before this side credits more.</summary>
    public int ReceiveWindow { get; set; }

    /// <summary>Bytes consumed that this side has not yet credited with WINDOW_UPDATE.</summary>
    public int CreditPending { get; set; }

    public bool RemoteClosed { get; set; }

    public bool LocalClosed { get; set; }

    /// <summary>The first header block (request or response headers), once received.</summary>
    public Task<List<HeaderField>> Headers => headers.Task;

    public bool HeadersReceived => headers.Task.IsCompleted;

    /// <summary>The trailing header block, if one came.</summary>
    public List<HeaderField>? Trailers { get; private set; }

    /// <summary>Completes when the peer ended the stream (END_STREAM), or faults when it was reset or the
    /// connection failed.</summary>
    public Task Ended => ended.Task;

    /// <summary>Gives the message reader the last word: a non-OK status (message size, compression) found
    /// while deframing; the stream is reset.</summary>
    public RpcException? Failure { get; private set; }

    public ChannelReader<byte[]> Messages => messages.Reader;

    public void OnHeaders(List<HeaderField> fields)
    {
        if (!headers.TrySetResult(fields))
        {
            Trailers = fields;
        }
    }

    /// <summary>Bytes of complete messages not yet read. Guarded by the connection's gate.</summary>
    public long Unread { get; set; }

    /// <summary>Credit held back while <see cref="Unread"/> is above the high-water mark, so that a reader
    /// that stops reading stops the sender. Guarded by the connection's gate.</summary>
    public int HeldCredit { get; set; }

    /// <summary>Feeds DATA payload (padding removed); returns the bytes of the messages it completed.</summary>
    public int OnData(ReadOnlySpan<byte> data)
    {
        int completed = 0;
        while (data.Length > 0 && Failure is null)
        {
            if (message is null)
            {
                int n = Math.Min(5 - prefixFill, data.Length);
                data[..n].CopyTo(prefix.AsSpan(prefixFill));
                prefixFill += n;
                data = data[n..];
                if (prefixFill < 5)
                {
                    break;
                }

                uint length = BinaryPrimitives.ReadUInt32BigEndian(prefix.AsSpan(1));
                if (prefix[0] != 0)
                {
                    Fail(new RpcException(new Status(StatusCode.Internal, "received a compressed gRPC message, but no compression was negotiated")));
                    break;
                }

                if (length > (uint)maxMessageSize)
                {
                    Fail(new RpcException(new Status(StatusCode.ResourceExhausted, $"received message of {length} bytes exceeds the limit of {maxMessageSize}")));
                    break;
                }

                message = new byte[length];
                messageFill = 0;
                prefixFill = 0;
            }

            int take = Math.Min(message.Length - messageFill, data.Length);
            data[..take].CopyTo(message.AsSpan(messageFill));
            messageFill += take;
            data = data[take..];
            if (messageFill == message.Length)
            {
                messages.Writer.TryWrite(message);
                completed += message.Length;
                message = null;
            }
        }

        return completed;
    }

    /// <summary>The peer ended the stream; a message cut short is an error.</summary>
    public void OnRemoteEnd()
    {
        RemoteClosed = true;
        if (message is not null || prefixFill > 0)
        {
            Fail(new RpcException(new Status(StatusCode.Internal, "the stream ended inside a gRPC message")));
        }

        headers.TrySetResult([]);
        messages.Writer.TryComplete();
        ended.TrySetResult();
    }

    /// <summary>The stream is over without END_STREAM: reset by the peer or the connection is gone.</summary>
    public void Abort(Exception reason)
    {
        RemoteClosed = true;
        headers.TrySetException(reason);
        messages.Writer.TryComplete(reason);
        ended.TrySetException(reason);
        _ = headers.Task.Exception;
        _ = ended.Task.Exception;
    }

    /// <summary>Ends the reader's messages with the <see cref="Failure"/>, while the stream stays open (a server
    /// answers with the failure's status before it resets the stream).</summary>
    public void FailReads()
    {
        if (Failure is { } f)
        {
            messages.Writer.TryComplete(f);
        }
    }

    private void Fail(RpcException e)
    {
        Failure ??= e;
        message = null;
        prefixFill = 0;
    }
}
