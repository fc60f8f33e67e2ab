using CalicoSharp.Rpc;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Ipam;

/// <summary>Where etcd is and how long to wait for it.</summary>
public sealed record EtcdOptions
{
    public const string EnvironmentVariable = "ETCD_ENDPOINTS";

    /// <summary>Endpoints as "http://host:port", "host:port" or "unix:///path"; tried in order.</summary>
    public IReadOnlyList<string> Endpoints { get; init; } = ["http://127.0.0.1:2379"];

    /// <summary>Bound on every call: dead, quorum-less or frozen etcd fails within this time.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Do etcd's I/O on the calling thread, one call at a time (<see cref="GrpcClientOptions.Blocking"/>):
    /// for short-lived processes such as the CNI plugin and the CLI. Watching needs it off.</summary>
    public bool Blocking { get; init; }

    /// <summary>Parses a comma-separated endpoint list, as ETCD_ENDPOINTS and --etcd-endpoints give it.</summary>
    public static IReadOnlyList<string> ParseEndpoints(string? text)
    {
        var list = (text ?? string.Empty).Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (list.Length == 0)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, "no etcd endpoints given (set --etcd-endpoints or ETCD_ENDPOINTS)");
        }

        foreach (var e in list)
        {
            _ = ToEndpoint(e);
        }

        return list;
    }

    internal static GrpcEndpoint ToEndpoint(string endpoint)
    {
        if (!GrpcEndpoint.TryParse(endpoint, out GrpcEndpoint? parsed))
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, $"etcd endpoint '{endpoint}' is not http://host:port, https://host:port or unix:///path");
        }

        return parsed!;
    }
}

/// <summary><see cref="IKvStore"/> over etcd's v3 gRPC API (dotnet-etcd's message types on CalicoSharp.Rpc's
/// HTTP/2 client), with fail-over across the endpoints of a cluster and a hard deadline on every call.</summary>
public sealed class EtcdKvStore : IKvStore
{
    private const string RangeMethod = "/etcdserverpb.KV/Range";
    private const string TxnMethod = "/etcdserverpb.KV/Txn";
    private const string WatchMethod = "/etcdserverpb.Watch/Watch";

    /// <summary>etcd's leader-required call (clientv3's WithRequireLeader): a member without a leader refuses at
    /// once with "etcdserver: no leader" instead of holding the call until its deadline, so a lost quorum is
    /// told apart from a slow member, and a member cut off from the rest sends the client on to another.</summary>
    private static readonly Metadata LeaderRequired = new() { { "hasleader", "true" } };

    /// <summary>Pause between rounds over the members while none answers (an election takes about a second).</summary>
    internal static readonly TimeSpan RoundPause = TimeSpan.FromMilliseconds(100);

    private const string NoAnswer = "no answer";

    private readonly EtcdOptions options;
    private readonly GrpcClient[] clients;
    private int current;

    public EtcdKvStore(EtcdOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        this.options = options;
        var grpc = new GrpcClientOptions
        {
            ConnectTimeout = options.Timeout,
            // A whole-IPAM read (check, usage) of a large cluster is tens of megabytes: 10,000 blocks are 13 MB.
            MaxReceiveMessageSize = 1 << 30,
            // A long-lived client (bgpd's watch) notices an etcd that vanished without a reset.
            KeepAliveInterval = options.Blocking ? null : TimeSpan.FromSeconds(30),
            Blocking = options.Blocking,
            KeepAliveTimeout = options.Timeout,
        };
        clients = [.. options.Endpoints.Select(e => new GrpcClient(EtcdOptions.ToEndpoint(e), grpc))];
    }

    public EtcdOptions Options => options;

    public Task<IReadOnlyList<IReadOnlyList<KvEntry>>> ReadAsync(IReadOnlyList<KvRead> reads, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(reads);
        if (reads.Count == 1)
        {
            var range = ToRange(reads[0]);
            return CallAsync(async (client, deadline, token) =>
            {
                var response = await client.UnaryAsync(RangeMethod, range, RangeResponse.Parser, deadline, token, metadata: LeaderRequired).ConfigureAwait(false);
                return (IReadOnlyList<IReadOnlyList<KvEntry>>)[ToEntries(response)];
            }, "read", ct);
        }

        // Several reads in one round trip, at one revision: a transaction with no compares.
        var txn = new TxnRequest();
        foreach (var read in reads)
        {
            txn.Success.Add(new RequestOp { RequestRange = ToRange(read) });
        }

        return CallAsync(async (client, deadline, token) =>
        {
            var response = await client.UnaryAsync(TxnMethod, txn, TxnResponse.Parser, deadline, token, metadata: LeaderRequired).ConfigureAwait(false);
            return (IReadOnlyList<IReadOnlyList<KvEntry>>)[.. response.Responses.Select(r => ToEntries(r.ResponseRange))];
        }, "read", ct);
    }

    public Task<KvTxnResult> TxnAsync(IReadOnlyList<KvCompare> compares, IReadOnlyList<KvOp> ops, IReadOnlyList<KvRead> otherwise, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(compares);
        ArgumentNullException.ThrowIfNull(ops);
        ArgumentNullException.ThrowIfNull(otherwise);
        var txn = new TxnRequest();
        foreach (var c in compares)
        {
            txn.Compare.Add(new Compare
            {
                Key = ByteString.CopyFromUtf8(c.Key),
                Target = Compare.Types.CompareTarget.Mod,
                Result = Compare.Types.CompareResult.Equal,
                ModRevision = c.ModRevision,
            });
        }

        foreach (var op in ops)
        {
            txn.Success.Add(op.Value is null
                ? new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = ByteString.CopyFromUtf8(op.Key) } }
                : new RequestOp { RequestPut = new PutRequest { Key = ByteString.CopyFromUtf8(op.Key), Value = ByteString.CopyFrom(op.Value) } });
        }

        foreach (var read in otherwise)
        {
            txn.Failure.Add(new RequestOp { RequestRange = ToRange(read) });
        }

        return CallAsync(async (client, deadline, token) =>
        {
            var response = await client.UnaryAsync(TxnMethod, txn, TxnResponse.Parser, deadline, token, metadata: LeaderRequired).ConfigureAwait(false);
            return new KvTxnResult(response.Succeeded, response.Header.Revision,
                response.Succeeded || otherwise.Count == 0 ? null : [.. response.Responses.Select(r => ToEntries(r.ResponseRange))]);
        }, "transaction", ct);
    }

    /// <summary>
    /// Watches every key under <paramref name="prefixes"/> (etcd's Watch stream, one watcher per prefix) from
    /// <paramref name="fromRevision"/> (0: from now) and calls <paramref name="changed"/> with the revision of
    /// the last event of each batch, so a caller that watches again after a break resumes where it was (from the last
    /// revision it was told, plus one) and misses nothing. Runs until <paramref name="ct"/> is cancelled; throws
    /// <see cref="IpamException"/> when the stream breaks. The watch is leader-required, like every call: a member
    /// that dies, or loses its leader, breaks it, and the next watch goes to the next member (the one a call
    /// reached last, when that is another), so the caller's watch moves to a live member.
    /// When <paramref name="fromRevision"/> was compacted away, <paramref name="changed"/> is told the revision
    /// before the oldest one etcd keeps (a change the caller must re-read for), and the stream is ended.
    /// </summary>
    public async Task WatchAsync(IReadOnlyList<string> prefixes, long fromRevision, Action<long> changed, Action? started, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(prefixes);
        ArgumentNullException.ThrowIfNull(changed);
        int index = Volatile.Read(ref current);
        try
        {
            await using var call = await clients[index].StartStreamingAsync(WatchMethod, ct, LeaderRequired).ConfigureAwait(false);
            foreach (string prefix in prefixes)
            {
                await call.WriteAsync(new WatchRequest
                {
                    CreateRequest = new WatchCreateRequest { Key = ByteString.CopyFromUtf8(prefix), RangeEnd = PrefixEnd(prefix), StartRevision = fromRevision },
                }, ct).ConfigureAwait(false);
            }

            int created = 0;
            while (await call.ReadAsync(ct).ConfigureAwait(false) is { } bytes)
            {
                WatchResponse r = WatchResponse.Parser.ParseFrom(bytes);
                if (r.Created && ++created == prefixes.Count)
                {
                    started?.Invoke();
                }

                if (r.Canceled && r.CompactRevision > 0)
                {
                    changed(r.CompactRevision - 1);
                    throw new IpamException(IpamErrorKind.DatastoreUnavailable,
                        $"etcd compacted revision {fromRevision} away (oldest kept: {r.CompactRevision}); re-reading");
                }

                if (r.Canceled)
                {
                    throw new IpamException(IpamErrorKind.DatastoreUnavailable, $"etcd cancelled the watch at {options.Endpoints[index]}: {r.CancelReason}");
                }

                if (r.Events.Count > 0)
                {
                    // The batch's last event, not the header's revision: a watch catching up gets the store's
                    // current revision in its header while more events may follow in the next batch.
                    changed(r.Events[^1].Kv.ModRevision);
                }
            }

            throw new IpamException(IpamErrorKind.DatastoreUnavailable, $"etcd {options.Endpoints[index]} closed the watch stream");
        }
        catch (Exception e) when (!ct.IsCancellationRequested && e is IpamException or RpcException or IOException or InvalidOperationException or System.Net.Sockets.SocketException)
        {
            // The next watch goes to the next member, unless a call has moved on to another meanwhile.
            Interlocked.CompareExchange(ref current, (index + 1) % clients.Length, index);
            if (e is IpamException)
            {
                throw;
            }

            throw new IpamException(IpamErrorKind.DatastoreUnavailable, $"etcd watch at {options.Endpoints[index]}: {(e is RpcException re ? re.Status.Detail : e.Message)}", e);
        }
    }

    public void Dispose()
    {
        foreach (var c in clients)
        {
            c.Dispose();
        }
    }

    /// <summary>
    /// One call, failed over across the members: a member that cannot be reached, has no leader, or (in a
    /// cluster) does not answer within half the bound is skipped; half, because a follower whose leader just
    /// died holds a forwarded call until etcd's own request timeout (7 s), while the election is over in a
    /// second or two. While some member is leaderless or silent, rounds over all of them repeat (paused by
    /// <see cref="RoundPause"/>) until one serves the call or the bound runs out, so a leader's death costs a
    /// wait and not an error, and a lost quorum is reported as such at the bound. When no member can be
    /// reached at all, that is reported at once. (A transaction cut off after etcd applied it and sent again
    /// finds its compares failed and is re-read like any lost race.)
    /// </summary>
    private async Task<T> CallAsync<T>(Func<GrpcClient, DateTime, CancellationToken, Task<T>> call, string what, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + options.Timeout;
        var attemptBound = clients.Length > 1 ? options.Timeout / 2 : options.Timeout;
        var errors = new Dictionary<int, string>();
        int start = Volatile.Read(ref current);
        while (true)
        {
            bool retry = false;
            for (int i = 0; i < clients.Length; i++)
            {
                int index = (start + i) % clients.Length;
                var attemptDeadline = DateTime.UtcNow + attemptBound;
                try
                {
                    var result = await call(clients[index], attemptDeadline < deadline ? attemptDeadline : deadline, ct).ConfigureAwait(false);
                    Volatile.Write(ref current, index);
                    return result;
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Unavailable && DateTime.UtcNow < deadline && !ct.IsCancellationRequested)
                {
                    // Not reached (refused, reset, going away) or without a leader: the next member may answer.
                    errors[index] = e.Status.Detail;
                    retry |= IsLeaderless(e.Status.Detail);
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.DeadlineExceeded && attemptDeadline < deadline && !ct.IsCancellationRequested)
                {
                    errors[index] = $"{NoAnswer} within {attemptBound.TotalSeconds:0.###} s";
                    retry = true;
                }
                catch (RpcException e) when (e.StatusCode is StatusCode.DeadlineExceeded or StatusCode.Cancelled || ct.IsCancellationRequested)
                {
                    throw Unanswered(what, index, errors, e);
                }
                catch (RpcException e)
                {
                    throw new IpamException(IpamErrorKind.DatastoreUnavailable, $"etcd {what} failed at {options.Endpoints[index]}: {e.StatusCode}: {e.Status.Detail}", e);
                }
                catch (OperationCanceledException e)
                {
                    throw Unanswered(what, index, errors, e);
                }
            }

            var pause = deadline - DateTime.UtcNow;
            if (pause <= TimeSpan.Zero || !retry)
            {
                throw Failure(what, errors, null);
            }

            try
            {
                await Task.Delay(pause < RoundPause ? pause : RoundPause, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException e)
            {
                throw Failure(what, errors, e);
            }
        }
    }

    /// <summary>A call that timed out or was cancelled: after members without a leader, that is a lost quorum.</summary>
    private IpamException Unanswered(string what, int index, Dictionary<int, string> errors, Exception e) =>
        errors.Count > 0 ? Failure(what, errors, e) : new IpamException(IpamErrorKind.DatastoreUnavailable,
            $"etcd did not answer the {what} within {options.Timeout.TotalSeconds:0.###} s (endpoint {options.Endpoints[index]}); is it running and does it have quorum?", e);

    private IpamException Failure(string what, Dictionary<int, string> errors, Exception? inner)
    {
        var detail = string.Join("; ", errors.OrderBy(e => e.Key).Select(e => $"{options.Endpoints[e.Key]}: {e.Value}"));
        return new IpamException(IpamErrorKind.DatastoreUnavailable, DescribeFailure(what, errors.Values, options.Timeout, detail), inner);
    }

    /// <summary>etcd's answers of a member that cannot serve for want of a leader (rpctypes ErrNoLeader, ErrLeaderChanged).</summary>
    internal static bool IsLeaderless(string error) =>
        error.Contains("no leader", StringComparison.Ordinal) || error.Contains("leader changed", StringComparison.Ordinal);

    /// <summary>What a call that no member served says, from the members' last errors.</summary>
    internal static string DescribeFailure(string what, IEnumerable<string> errors, TimeSpan bound, string detail)
    {
        string seconds = bound.TotalSeconds.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);
        return errors.Any(IsLeaderless) ? $"the etcd datastore has no quorum: no member with a leader served the {what} within {seconds} s ({detail})"
            : errors.Any(e => e.StartsWith(NoAnswer, StringComparison.Ordinal)) ? $"etcd did not answer the {what} within {seconds} s ({detail}); is it running and does it have quorum?"
            : $"etcd is unreachable: no member answered the {what} within {seconds} s ({detail})";
    }

    private static RangeRequest ToRange(KvRead read)
    {
        var key = ByteString.CopyFromUtf8(read.Key);
        var range = new RangeRequest { Key = key, KeysOnly = read.KeysOnly };
        if (read.Prefix)
        {
            range.RangeEnd = PrefixEnd(read.Key);
        }

        return range;
    }

    private static ByteString PrefixEnd(string prefix)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(prefix);
        for (int i = bytes.Length - 1; i >= 0; i--)
        {
            if (bytes[i] < 0xff)
            {
                bytes[i]++;
                return ByteString.CopyFrom(bytes, 0, i + 1);
            }
        }

        return ByteString.CopyFrom(0);
    }

    private static List<KvEntry> ToEntries(RangeResponse response)
    {
        var list = new List<KvEntry>(response.Kvs.Count);
        foreach (var kv in response.Kvs)
        {
            list.Add(new KvEntry(kv.Key.ToStringUtf8(), kv.Value.ToByteArray(), kv.ModRevision));
        }

        return list;
    }
}
