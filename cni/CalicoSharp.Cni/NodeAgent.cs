using System.Net;
using CalicoSharp.Ipam;
using CalicoSharp.Rpc;
using Google.Protobuf;
using Grpc.Core;

namespace CalicoSharp.Cni;

/// <summary>
/// The node's bgpd, asked to assign a pod's addresses through its NodeIpam service (its control socket): a warm
/// process already connected to etcd does in a few milliseconds, while the plugin makes the pod's interfaces,
/// what costs a fresh plugin process ~10 ms on its own. Same allocator,
/// records and transactions either way. Any answer that is not the allocator's own (no socket, refused,
/// another node, no etcd there, a broken connection, too slow) returns null and the plugin does the work
/// itself: both paths are idempotent per handle (an assignment finds what the handle already holds), so
/// falling back after a request that did reach bgpd cannot allocate twice.
/// </summary>
public sealed class NodeAgent : IDisposable
{
    // The methods by name, called on the client itself: through a generated client and its CallInvoker, each
    // first call resolves a generic virtual method at run time (measured: ~1.5 ms of a fresh process).
    private const string AssignMethod = "/calicosharp.bgpd.v1.NodeIpam/Assign";

    private readonly GrpcClient _client;
    private readonly TimeSpan _timeout;
    private readonly Log _log;

    private NodeAgent(string socket, TimeSpan timeout, Log log)
    {
        Socket = socket;
        _timeout = timeout;
        _log = log;
        _client = new GrpcClient(new GrpcEndpoint("unix", "localhost", 0, socket), new GrpcClientOptions { Blocking = true, ConnectTimeout = timeout });
    }

    public string Socket { get; }

    /// <summary>The agent the config names, when its socket is there ("" in the config: never ask one).</summary>
    public static NodeAgent? Find(NetConf conf, Log log)
    {
        ArgumentNullException.ThrowIfNull(conf);
        return string.IsNullOrEmpty(conf.BgpdSocket) || !File.Exists(conf.BgpdSocket) ? null : new NodeAgent(conf.BgpdSocket, conf.EtcdTimeout, log ?? Log.None);
    }

    /// <summary>Assigns through bgpd; null when bgpd could not answer (the caller does it itself). An allocator
    /// error (pool exhausted, etcd unreachable...) is thrown as the <see cref="IpamException"/> it is.
    /// <paramref name="whileWaiting"/> runs once the request is on its way, while bgpd works (not at all if it
    /// could not be sent).</summary>
    public IReadOnlyList<AssignedAddress>? TryAssign(AutoAssignRequest request, Action? whileWaiting = null)
    {
        ArgumentNullException.ThrowIfNull(request);
        var message = new Proto.AssignRequest { HandleId = request.HandleId, Node = request.Node, NumIpv4 = request.Num4, NumIpv6 = request.Num6 };
        foreach (var (key, value) in request.Attributes ?? new Dictionary<string, string>())
        {
            message.Attributes[key] = value;
        }

        message.Ipv4Pools.AddRange(request.Ipv4Pools ?? []);
        message.Ipv6Pools.AddRange(request.Ipv6Pools ?? []);
        Proto.AssignReply reply;
        try
        {
            // A blocking client completes the call on this thread.
            reply = _client.UnaryAsync(AssignMethod, message, Proto.AssignReply.Parser, DateTime.UtcNow + _timeout, CancellationToken.None, whileWaiting).GetAwaiter().GetResult();
        }
        catch (RpcException e)
        {
            _log.Warning($"bgpd at {Socket} did not assign for {request.HandleId} ({e.StatusCode}: {e.Status.Detail}); doing it directly against etcd");
            return null;
        }

        Throw(reply.Failure);
        // (The plugin has no use for the allocation's sequence number: DEL releases by handle.)
        return [.. reply.Addresses.Select(a => new AssignedAddress(IPAddress.Parse(a.Address), IpNet.Parse(a.Block), 0))];
    }

    private static void Throw(Proto.IpamFailure? failure)
    {
        if (failure is not null)
        {
            throw new IpamException(Enum.TryParse(failure.Kind, out IpamErrorKind kind) ? kind : IpamErrorKind.Corrupt, failure.Message);
        }
    }

    public void Dispose() => _client.Dispose();
}
