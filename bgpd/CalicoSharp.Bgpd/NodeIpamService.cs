using System.Globalization;
using CalicoSharp.Bgp;
using CalicoSharp.Ipam;
using Grpc.Core;

namespace CalicoSharp.Bgpd;

/// <summary>
/// The node's pod addresses, assigned for the CNI plugin's ADD by a process that is already connected to etcd
/// and warm: the plugin runs once per pod, and in a fresh process the allocator's first use (connection,
/// record decoding, encoding) costs several times its two etcd round trips. Same allocator, records and
/// transactions as the plugin's own; requests take turns here and take the host lock that plugins working
/// on their own (bgpd down) take, so both kinds serialise per node.
/// </summary>
internal sealed class NodeIpamService(IpamClient ipam, string node, Action<BgpLogLevel, string> log) : Proto.NodeIpam.NodeIpamBase, IDisposable
{
    private readonly SemaphoreSlim _turn = new(1, 1);

    public override async Task<Proto.AssignReply> Assign(Proto.AssignRequest request, ServerCallContext context)
    {
        CheckNode(request.Node);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        var reply = new Proto.AssignReply();
        await _turn.WaitAsync(context.CancellationToken).ConfigureAwait(false);
        try
        {
            using var hostLock = await ipam.LockNodeAsync(node, context.CancellationToken).ConfigureAwait(false);
            var got = await ipam.AutoAssignAsync(new AutoAssignRequest
            {
                HandleId = request.HandleId,
                Node = node,
                Num4 = request.NumIpv4,
                Num6 = request.NumIpv6,
                Attributes = request.Attributes,
                Ipv4Pools = [.. request.Ipv4Pools],
                Ipv6Pools = [.. request.Ipv6Pools],
                ReuseExisting = true,
            }, context.CancellationToken).ConfigureAwait(false);
            reply.Addresses.AddRange(got.Select(a => new Proto.AssignedAddress { Address = a.Address.ToString(), Block = a.Block.ToString() }));
            log(BgpLogLevel.Debug, string.Create(CultureInfo.InvariantCulture, $"IPAM: assigned {string.Join(", ", got.Select(a => a.Address))} to {request.HandleId} for the CNI plugin in {System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds:0.00} ms"));
        }
        catch (IpamException e)
        {
            reply.Failure = Failure(e);
        }
        finally
        {
            _turn.Release();
        }

        return reply;
    }

    private void CheckNode(string requested)
    {
        if (!string.Equals(requested, node, StringComparison.Ordinal))
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"this bgpd allocates for node '{node}', not '{requested}'"));
        }
    }

    public void Dispose() => _turn.Dispose();

    private static Proto.IpamFailure Failure(IpamException e) => new() { Kind = e.Kind.ToString(), Message = e.Message };
}
