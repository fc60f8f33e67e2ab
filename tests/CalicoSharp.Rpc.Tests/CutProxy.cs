using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.Rpc.Tests;

/// <summary>A byte-for-byte relay between a client and a server (TCP on loopback, or a Unix socket in a
/// temporary folder) that counts the connections it relays and can cut them all at once, as a peer that
/// dies does: the client sees its connection end in the middle of a call.</summary>
internal sealed class CutProxy : IAsyncDisposable
{
    private readonly Socket listener;
    private readonly EndPoint target;
    private readonly string? dir;
    private readonly List<Socket> open = [];
    private readonly Lock gate = new();
    private readonly Task accepting;
    private int connections;

    public CutProxy(EndPoint target)
    {
        this.target = target;
        if (target is UnixDomainSocketEndPoint)
        {
            dir = Directory.CreateTempSubdirectory("calicosharp-proxy-").FullName;
            Path = System.IO.Path.Combine(dir, "proxy.sock");
            listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(Path));
        }
        else
        {
            listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            Tcp = (IPEndPoint)listener.LocalEndPoint!;
        }

        listener.Listen(16);
        accepting = AcceptAsync();
    }

    /// <summary>The proxy's TCP endpoint (when relaying TCP).</summary>
    public IPEndPoint? Tcp { get; }

    /// <summary>The proxy's socket file (when relaying a Unix socket).</summary>
    public string? Path { get; }

    public int Connections => Volatile.Read(ref connections);

    private async Task AcceptAsync()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await listener.AcceptAsync();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }

            Interlocked.Increment(ref connections);
            var server = new Socket(target.AddressFamily, SocketType.Stream, target is UnixDomainSocketEndPoint ? ProtocolType.Unspecified : ProtocolType.Tcp);
            lock (gate)
            {
                open.Add(client);
                open.Add(server);
            }

            try
            {
                await server.ConnectAsync(target);
            }
            catch (SocketException)
            {
                client.Dispose();
                server.Dispose();
                continue;
            }

            _ = PumpAsync(client, server);
            _ = PumpAsync(server, client);
        }
    }

    private static async Task PumpAsync(Socket from, Socket to)
    {
        byte[] buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await from.ReceiveAsync(buffer, SocketFlags.None)) > 0)
            {
                await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None);
            }

            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // cut, or the other side went away
        }
    }

    /// <summary>Closes every relayed connection at once; TCP ones with a reset (SO_LINGER 0), as a host whose
    /// process died answers.</summary>
    public void Cut()
    {
        lock (gate)
        {
            foreach (Socket s in open)
            {
                if (s.ProtocolType == ProtocolType.Tcp)
                {
                    try
                    {
                        s.LingerState = new LingerOption(true, 0);
                    }
                    catch (SocketException)
                    {
                        // not connected any more
                    }
                }

                s.Dispose();
            }

            open.Clear();
        }
    }

    public async ValueTask DisposeAsync()
    {
        listener.Dispose();
        await accepting;
        Cut();
        if (dir is not null)
        {
            Directory.Delete(dir, true);
        }
    }
}
