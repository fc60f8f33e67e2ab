using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace CalicoSharp.Netlink;

/// <summary>One message of a reply: its type, flags and payload (after the netlink header).</summary>
public sealed record NetlinkMessage(ushort Type, ushort Flags, byte[] Payload);

/// <summary>An rtnetlink socket. Opened in a namespace once (on a dedicated thread), then used from
/// ordinary code: the socket stays bound to the namespace it was created in. Replies are checked for
/// our sequence number and port id; dumps are read to NLMSG_DONE and retried when interrupted.</summary>
public sealed unsafe class NetlinkSocket : IDisposable
{
    // Most answers are a few hundred bytes; a dump's datagrams are at most ~32 KiB (the kernel's cap); a
    // single answer may be larger (a link with many SR-IOV VFs). The buffer grows to the datagram it peeks.
    private const int InitialReceiveBuffer = 8 * 1024;
    private readonly int fd;
    private readonly uint portId;
    private byte[] receive = new byte[InitialReceiveBuffer];
    private uint seq;
    private bool disposed;

    private NetlinkSocket(int fd, uint portId)
    {
        this.fd = fd;
        this.portId = portId;
        seq = (uint)Environment.TickCount;
    }

    /// <summary>Opens a socket in the calling thread's namespace.</summary>
    public static NetlinkSocket Open()
    {
        int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, Nl.NETLINK_ROUTE);
        if (s < 0)
        {
            throw new NetlinkException("opening a netlink socket", Marshal.GetLastPInvokeError());
        }

        try
        {
            var addr = new SockAddrNl { Family = (ushort)AF_NETLINK };
            if (bind(s, (sockaddr*)&addr, (socklen_t)sizeof(SockAddrNl)) != 0)
            {
                throw new NetlinkException("binding the netlink socket", Marshal.GetLastPInvokeError());
            }

            var bound = default(SockAddrNl);
            var len = (socklen_t)sizeof(SockAddrNl);
            if (getsockname(s, (sockaddr*)&bound, &len) != 0)
            {
                throw new NetlinkException("reading the netlink port id", Marshal.GetLastPInvokeError());
            }

            int one = 1;
            _ = setsockopt(s, SOL_NETLINK, Nl.NETLINK_EXT_ACK, &one, (socklen_t)sizeof(int));
            _ = setsockopt(s, SOL_NETLINK, Nl.NETLINK_GET_STRICT_CHK, &one, (socklen_t)sizeof(int));
            return new NetlinkSocket(s, bound.PortId);
        }
        catch
        {
            _ = close(s);
            throw;
        }
    }

    /// <summary>Opens a socket inside <paramref name="ns"/>.</summary>
    public static NetlinkSocket Open(NetNs ns)
    {
        ArgumentNullException.ThrowIfNull(ns);
        return ns.Run(Open);
    }

    /// <summary>Sends a request and waits for its acknowledgement; a kernel error becomes a
    /// <see cref="NetlinkException"/> naming <paramref name="operation"/>.</summary>
    public void Request(MessageBuilder request, string operation)
    {
        ArgumentNullException.ThrowIfNull(request);
        uint s = Send(request, Nl.NLM_F_ACK, operation);
        foreach (var _ in Receive(s, operation, untilDone: false))
        {
        }
    }

    /// <summary>Most requests sent in one sendmsg: their error answers (each echoes its request) must all fit the
    /// receive buffer, or the kernel drops them.</summary>
    public const int BatchSize = 64;

    /// <summary>Sends many requests, <see cref="BatchSize"/> per system call, and returns, per request, null or the
    /// kernel's error naming <paramref name="operation"/>(i). The kernel executes the messages of one sendmsg in
    /// order before the call returns, and answers a failed one whether or not it asked for an acknowledgement; so
    /// only the last message of each batch asks for one, and its arrival means every answer is in.</summary>
    public NetlinkException?[] RequestMany(IReadOnlyList<MessageBuilder> requests, Func<int, string> operation)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ArgumentNullException.ThrowIfNull(operation);
        ObjectDisposedException.ThrowIf(disposed, this);
        var results = new NetlinkException?[requests.Count];
        var buffer = new ArrayBufferWriter<byte>(8192);
        for (int start = 0; start < requests.Count; start += BatchSize)
        {
            int count = Math.Min(BatchSize, requests.Count - start);
            buffer.ResetWrittenCount();
            uint first = unchecked(seq + 1);
            for (int i = 0; i < count; i++)
            {
                MessageBuilder r = requests[start + i];
                ReadOnlySpan<byte> bytes = r.Finish(unchecked(++seq), 0);
                Span<byte> dest = buffer.GetSpan(MessageBuilder.Align(bytes.Length));
                bytes.CopyTo(dest);
                BinaryPrimitives.WriteUInt16LittleEndian(dest[6..], (ushort)(i == count - 1 ? r.Flags | Nl.NLM_F_ACK : r.Flags));
                dest[bytes.Length..MessageBuilder.Align(bytes.Length)].Clear();
                buffer.Advance(MessageBuilder.Align(bytes.Length));
            }
            SendRaw(buffer.WrittenSpan, operation(start));
            bool lastAnswered = false;
            while (!lastAnswered)
            {
                int n = ReceiveOnce(operation(start));
                for (int offset = 0; NextMessage(n, ref offset, operation(start), out Header h);)
                {
                    uint index = unchecked(h.Seq - first);
                    if (h.Type != Nl.NLMSG_ERROR || index >= (uint)count)
                    {
                        continue; // not an acknowledgement of this batch
                    }
                    var payload = receive.AsSpan(h.Payload, h.PayloadLength);
                    int error = BinaryPrimitives.ReadInt32LittleEndian(payload);
                    if (error != 0)
                    {
                        results[start + (int)index] = new NetlinkException(operation(start + (int)index), -error, ExtAckMessage(payload, h.Flags));
                    }
                    lastAnswered |= index == (uint)(count - 1);
                }
            }
        }
        return results;
    }

    /// <summary>Sends a request that answers with messages (a get or a dump) and returns them all.</summary>
    public List<NetlinkMessage> Query(MessageBuilder request, string operation)
    {
        ArgumentNullException.ThrowIfNull(request);
        bool dump = (request.Flags & Nl.NLM_F_DUMP) == Nl.NLM_F_DUMP;
        for (int attempt = 0; ; attempt++)
        {
            uint s = Send(request, 0, operation);
            var list = new List<NetlinkMessage>();
            bool interrupted = false;
            foreach (var m in Receive(s, operation, untilDone: dump))
            {
                interrupted |= (m.Flags & Nl.NLM_F_DUMP_INTR) != 0;
                list.Add(m);
            }

            // The dump changed under us: its contents may be inconsistent; read it again.
            if (!interrupted || attempt == 10)
            {
                return list;
            }
        }
    }

    private uint Send(MessageBuilder request, ushort extraFlags, string operation)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        uint s = unchecked(++seq);
        var bytes = request.Finish(s, 0);
        if (extraFlags != 0)
        {
            // Flags live at offset 6 of the header.
            var copy = bytes.ToArray();
            BinaryPrimitives.WriteUInt16LittleEndian(copy.AsSpan(6), (ushort)(request.Flags | extraFlags));
            bytes = copy;
        }

        SendRaw(bytes, operation);
        return s;
    }

    private void SendRaw(ReadOnlySpan<byte> bytes, string operation)
    {
        fixed (byte* p = bytes)
        {
            var dest = new SockAddrNl { Family = (ushort)AF_NETLINK };
            while (true)
            {
                long n = sendto(fd, p, (size_t)bytes.Length, 0, (sockaddr*)&dest, (socklen_t)sizeof(SockAddrNl));
                if (n >= 0)
                {
                    break;
                }

                int err = Marshal.GetLastPInvokeError();
                if (err != EINTR)
                {
                    throw new NetlinkException($"{operation} (send)", err);
                }
            }
        }
    }

    private IEnumerable<NetlinkMessage> Receive(uint expectSeq, string operation, bool untilDone)
    {
        while (true)
        {
            int n = ReceiveOnce(operation);
            for (int offset = 0; NextMessage(n, ref offset, operation, out Header h);)
            {
                if (h.Seq != expectSeq)
                {
                    continue; // a late reply to an earlier request
                }

                ushort type = h.Type, flags = h.Flags;
                var payload = receive.AsSpan(h.Payload, h.PayloadLength);
                if (type == Nl.NLMSG_DONE)
                {
                    yield break;
                }

                if (type == Nl.NLMSG_ERROR)
                {
                    int error = BinaryPrimitives.ReadInt32LittleEndian(payload);
                    if (error == 0)
                    {
                        if (!untilDone)
                        {
                            yield break;
                        }

                        continue;
                    }

                    throw new NetlinkException(operation, -error, ExtAckMessage(payload, flags));
                }

                if (type == Nl.NLMSG_NOOP)
                {
                    continue;
                }

                yield return new NetlinkMessage(type, flags, payload.ToArray());
                if (!untilDone && (flags & Nl.NLM_F_MULTI) == 0)
                {
                    yield break;
                }
            }
        }
    }

    /// <summary>A received message's header fields and where its payload is in the receive buffer.</summary>
    private readonly record struct Header(ushort Type, ushort Flags, uint Seq, int Payload, int PayloadLength);

    /// <summary>The next message of the <paramref name="n"/> received bytes at <paramref name="offset"/> that is
    /// addressed to this socket (others are skipped); false at the end. A length that does not fit is an error.</summary>
    private bool NextMessage(int n, ref int offset, string operation, out Header header)
    {
        while (offset + Nl.NlMsgHdrSize <= n)
        {
            var span = receive.AsSpan(offset, n - offset);
            int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(span);
            if (len < Nl.NlMsgHdrSize || len > span.Length)
            {
                throw new NetlinkException($"{operation}: malformed reply (message length {len} in {span.Length} bytes)");
            }

            int start = offset;
            offset += MessageBuilder.Align(len);
            uint pid = BinaryPrimitives.ReadUInt32LittleEndian(span[12..]);
            if (pid != portId && pid != 0)
            {
                continue; // not for us
            }

            header = new Header(BinaryPrimitives.ReadUInt16LittleEndian(span[4..]), BinaryPrimitives.ReadUInt16LittleEndian(span[6..]),
                BinaryPrimitives.ReadUInt32LittleEndian(span[8..]), start + Nl.NlMsgHdrSize, len - Nl.NlMsgHdrSize);
            return true;
        }

        header = default;
        return false;
    }

    private int ReceiveOnce(string operation)
    {
        // The next datagram's whole length, without taking it (MSG_TRUNC reports it even past the buffer).
        byte peek;
        long size = Recv(&peek, 1, MSG_PEEK | MSG_TRUNC, operation);
        if (size > receive.Length)
        {
            receive = new byte[(int)Math.Max(size, receive.Length * 2L)];
        }

        fixed (byte* p = receive)
        {
            return (int)Recv(p, receive.Length, 0, operation);
        }
    }

    private long Recv(byte* buffer, int length, int flags, string operation)
    {
        while (true)
        {
            long n = recv(fd, buffer, (size_t)length, flags);
            if (n >= 0)
            {
                return n;
            }

            int err = Marshal.GetLastPInvokeError();
            if (err != EINTR)
            {
                throw new NetlinkException($"{operation} (receive)", err);
            }
        }
    }

    // With NETLINK_EXT_ACK the kernel appends TLVs after the echoed request header: the text message.
    private static string? ExtAckMessage(ReadOnlySpan<byte> payload, ushort flags)
    {
        if ((flags & Nl.NLM_F_ACK_TLVS) == 0 || payload.Length < Nl.NlMsgErrSize)
        {
            return null;
        }

        int origLen = (int)BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]);
        int skip = 4 + ((flags & 0x100) != 0 ? Nl.NlMsgHdrSize : MessageBuilder.Align(origLen)); // NLM_F_CAPPED
        if (skip > payload.Length)
        {
            return null;
        }

        var attrs = new AttributeReader(payload[skip..]);
        while (attrs.Next())
        {
            if (attrs.Type == Nl.NLMSGERR_ATTR_MSG)
            {
                return attrs.Text;
            }
        }

        return null;
    }

    public void Dispose()
    {
        if (!disposed)
        {
            disposed = true;
            _ = close(fd);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct SockAddrNl
    {
        public ushort Family;
        public ushort Pad;
        public uint PortId;
        public uint Groups;
    }
}
