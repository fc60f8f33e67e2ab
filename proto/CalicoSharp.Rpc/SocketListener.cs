using System.Net.Sockets;

namespace CalicoSharp.Rpc;

/// <summary>The accept loop the gRPC server and bgpd's metrics endpoint share.</summary>
public static class SocketListener
{
    /// <summary>
    /// Accepts connections until <paramref name="stopping"/> is cancelled or the listening socket is closed,
    /// handing each to <paramref name="accepted"/> (TCP ones with Nagle off). A failed accept (a client that
    /// gave up, or no file descriptors left) is skipped after a short pause, so the loop never spins.
    /// </summary>
    public static async Task AcceptAsync(Socket listener, Action<Socket> accepted, CancellationToken stopping)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(accepted);
        while (!stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync(stopping).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException)
            {
                try
                {
                    await Task.Delay(100, stopping).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            if (client.AddressFamily != AddressFamily.Unix)
            {
                client.NoDelay = true;
            }

            accepted(client);
        }
    }
}
