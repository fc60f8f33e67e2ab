using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.Bgp;

/// <summary>
/// A BGP speaker: its peers, their sessions and the RIB, all driven by one event loop (a dedicated thread
/// unless one is given), with message parsing on each connection's own read task.
/// </summary>
public sealed class BgpSpeaker : IAsyncDisposable
{
    private readonly List<BgpPeer> _peers = [];
    private readonly List<Socket> _listeners = [];
    private readonly ThreadEventLoop? _ownLoop;
    private readonly CancellationTokenSource _cts = new();

    public BgpSpeaker(SpeakerConfig config, TimeProvider? time = null, IEventLoop? loop = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.RouterId == 0)
        {
            throw new ArgumentException("the router id must not be 0.0.0.0 (RFC 6286)", nameof(config));
        }
        Config = config;
        Time = time ?? TimeProvider.System;
        if (loop is null)
        {
            _ownLoop = new ThreadEventLoop("bgp", e => Log(BgpLogLevel.Error, $"internal error: {e}"));
            loop = _ownLoop;
        }
        Loop = loop;
        Rib = new Rib(this);
        Connector = ConnectTcpAsync;
    }

    public SpeakerConfig Config { get; }

    public TimeProvider Time { get; }

    public IEventLoop Loop { get; }

    public Rib Rib { get; }

    /// <summary>Speaker-wide import policy (a peer's own policy replaces it).</summary>
    public RoutePolicy? Import { get; set; }

    /// <summary>Speaker-wide export policy (a peer's own policy replaces it).</summary>
    public RoutePolicy? Export { get; set; }

    /// <summary>Opens the TCP connection to a peer; replaceable (tests use in-memory streams).</summary>
    public Func<PeerConfig, CancellationToken, Task<Stream>> Connector { get; set; }

    /// <summary>Creates the TCP sockets (listening and connecting); replaceable to open them in another network namespace.</summary>
    public Func<AddressFamily, Socket> SocketFactory { get; set; } = family => new Socket(family, SocketType.Stream, ProtocolType.Tcp);

    /// <summary>Applied to every TCP socket before it connects or after it is accepted (TCP MD5, TTL security).</summary>
    public Action<Socket, PeerConfig?>? ConfigureSocket { get; set; }

    /// <summary>Applied to every listening socket for every peer (TCP MD5 keys must be on the listener before the SYN).</summary>
    public Action<Socket, PeerConfig, bool>? ConfigureListener { get; set; }

    internal Random Random { get; } = new();

    public IReadOnlyList<BgpPeer> Peers => _peers;

    internal void Log(BgpLogLevel level, string message) => Config.Log?.Invoke(level, message);

    /// <summary>Runs <paramref name="work"/> on the event loop and returns its result.</summary>
    public Task<T> InvokeAsync<T>(Func<T> work)
    {
        var tcs = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        Loop.Post(() =>
        {
            try
            {
                tcs.SetResult(work());
            }
#pragma warning disable CA1031 // The caller gets the exception through the task.
            catch (Exception e)
#pragma warning restore CA1031
            {
                tcs.SetException(e);
            }
        });
        return tcs.Task;
    }

    public Task InvokeAsync(Action work) => InvokeAsync(() =>
    {
        work();
        return true;
    });

    /// <summary>Adds a neighbour (on the loop) and starts it.</summary>
    public BgpPeer AddPeer(PeerConfig config, bool start = true)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (_peers.Exists(p => p.Config.Address.Equals(config.Address)))
        {
            throw new ArgumentException($"peer {config.Address} is configured twice");
        }
        int index = 0;
        while (_peers.Exists(p => p.Index == index))
        {
            index++;
        }
        var peer = new BgpPeer(this, config, index);
        _peers.Add(peer);
        foreach (Socket l in _listeners)
        {
            ConfigureListener?.Invoke(l, config, true);
        }
        if (start)
        {
            peer.Start();
        }
        return peer;
    }

    /// <summary>Stops and removes a neighbour: Cease "peer de-configured" (RFC 4486), its routes go.</summary>
    public void RemovePeer(BgpPeer peer, string? message = null)
    {
        ArgumentNullException.ThrowIfNull(peer);
        peer.Stop(message ?? "peer removed from the configuration", Subcode.Cease.PeerDeconfigured);
        _peers.Remove(peer);
        foreach (Socket l in _listeners)
        {
            ConfigureListener?.Invoke(l, peer.Config, false);
        }
    }

    /// <summary>
    /// Gives a neighbour a new configuration that differs only in what needs no new session (on the loop): the cap on
    /// its restart time, whether it is a route reflector client, next hop self. What is advertised is judged again
    /// (the client role changes what is reflected to everyone). Anything else needs <see cref="RemovePeer"/> and
    /// <see cref="AddPeer"/>.
    /// </summary>
    public void UpdatePeer(BgpPeer peer, PeerConfig config)
    {
        ArgumentNullException.ThrowIfNull(peer);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (!config.Address.Equals(peer.Config.Address))
        {
            throw new ArgumentException($"peer {peer.Config.DisplayName}: a new address is a new peer");
        }
        bool export = config.RouteReflectorClient != peer.Config.RouteReflectorClient || config.NextHopSelf != peer.Config.NextHopSelf;
        peer.Config = config;
        if (export)
        {
            Rib.Reexport();
        }
    }

    public BgpPeer? FindPeer(IPAddress address)
    {
        IPAddress a = Normalize(address);
        return _peers.Find(p => p.Config.Address.Equals(a));
    }

    private static IPAddress Normalize(IPAddress a) => a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a;

    internal static IPAddress? LocalAddressOf(Stream stream) =>
        stream is NetworkStream ns && ns.Socket.LocalEndPoint is IPEndPoint ep ? Normalize(ep.Address) : null;

    /// <summary>Accepts BGP connections on <paramref name="endpoint"/> (port 179 by default).</summary>
    public IPEndPoint Listen(IPEndPoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        Socket socket = SocketFactory(endpoint.AddressFamily);
        try
        {
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            if (endpoint.AddressFamily == AddressFamily.InterNetworkV6)
            {
                socket.DualMode = endpoint.Address.Equals(IPAddress.IPv6Any);
            }
            ConfigureSocket?.Invoke(socket, null);
            socket.Bind(endpoint);
            socket.Listen(64);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        _listeners.Add(socket);
        foreach (BgpPeer p in _peers)
        {
            ConfigureListener?.Invoke(socket, p.Config, true);
        }
        _ = AcceptLoopAsync(socket);
        return (IPEndPoint)socket.LocalEndPoint!;
    }

    private async Task AcceptLoopAsync(Socket listener)
    {
        while (!_cts.IsCancellationRequested)
        {
            Socket s;
            try
            {
                s = await listener.AcceptAsync(_cts.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                Log(BgpLogLevel.Warning, $"accept failed: {e.Message}");
                continue;
            }
            s.NoDelay = true;
            var remote = (IPEndPoint)s.RemoteEndPoint!;
            Loop.Post(() =>
            {
                BgpPeer? peer = FindPeer(remote.Address);
                if (peer is null)
                {
                    Log(BgpLogLevel.Info, $"connection from {remote.Address}, which is not a configured peer: closed");
                    s.Dispose();
                    return;
                }
                ConfigureSocket?.Invoke(s, peer.Config);
                var stream = new NetworkStream(s, ownsSocket: true);
                peer.Accept(stream, LocalAddressOf(stream));
            });
        }
    }

    private async Task<Stream> ConnectTcpAsync(PeerConfig peer, CancellationToken ct)
    {
        Socket socket = SocketFactory(peer.Address.AddressFamily);
        try
        {
            socket.NoDelay = true;
            ConfigureSocket?.Invoke(socket, peer);
            if (peer.LocalAddress is { } local && local.AddressFamily == peer.Address.AddressFamily)
            {
                socket.Bind(new IPEndPoint(local, 0));
            }
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct, _cts.Token);
            timeout.CancelAfter(TimeSpan.FromSeconds(30));
            await socket.ConnectAsync(new IPEndPoint(peer.Address, peer.Port), timeout.Token).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Changes the speaker's AS, router id and cluster id while it runs (on the loop), resetting only the sessions that
    /// carry what changed: a new router id is in every OPEN (every session resets); a new AS is in the OPEN of every
    /// peer without an AS of its own; a new cluster id changes no OPEN, only the CLUSTER_LIST of reflected routes,
    /// which are sent again. Returns the peers reset.
    /// </summary>
    public IReadOnlyList<BgpPeer> ChangeIdentity(uint localAs, uint routerId, uint? clusterId, string reason)
    {
        if (routerId == 0)
        {
            throw new ArgumentException("the router id must not be 0.0.0.0 (RFC 6286)", nameof(routerId));
        }
        bool asChanged = localAs != Config.LocalAs;
        bool idChanged = routerId != Config.RouterId;
        uint oldCluster = Config.EffectiveClusterId;
        Config.LocalAs = localAs;
        Config.RouterId = routerId;
        Config.ClusterId = clusterId;
        List<BgpPeer> reset = [.. _peers.Where(p => idChanged || (asChanged && p.Config.LocalAs is null))];
        foreach (BgpPeer p in reset)
        {
            p.Reset(reason);
        }
        if (Config.EffectiveClusterId != oldCluster)
        {
            Rib.Reexport();
        }
        return reset;
    }

    /// <summary>Listens on <paramref name="endpoint"/> instead of where it listened (on the loop). The new socket is
    /// opened first: when it cannot be, the old ones stay and the error is thrown. Sessions are not touched.</summary>
    public IPEndPoint Relisten(IPEndPoint endpoint)
    {
        List<Socket> old = [.. _listeners];
        IPEndPoint bound = Listen(endpoint);
        foreach (Socket l in old)
        {
            _listeners.Remove(l);
            l.Dispose();
        }
        return bound;
    }

    /// <summary>Starts every configured peer that is idle.</summary>
    public void Start() => Loop.Post(() =>
    {
        foreach (BgpPeer p in _peers)
        {
            p.Start();
        }
    });

    /// <summary>
    /// A planned stop: every session gets Cease/administrative shutdown with <paramref name="message"/>
    /// (RFC 8203), queued output is given a moment to leave, then everything closes. With
    /// <paramref name="restarting"/> (the speaker starts again soon: an upgrade, a service restart), sessions with
    /// graceful restart on both ends close without a NOTIFICATION instead, so those peers keep our routes
    /// (RFC 4724 §4.1).
    /// </summary>
    public async Task StopAsync(string? message, TimeSpan linger, bool restarting = false)
    {
        await InvokeAsync(() =>
        {
            foreach (BgpPeer p in _peers)
            {
                p.Stop(message, restarting: restarting);
            }
        }).ConfigureAwait(false);
        await _cts.CancelAsync().ConfigureAwait(false);
        foreach (Socket l in _listeners)
        {
            l.Dispose();
        }
        if (linger > TimeSpan.Zero)
        {
            await Task.Delay(linger).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_cts.IsCancellationRequested)
        {
            await StopAsync(null, TimeSpan.Zero).ConfigureAwait(false);
        }
        _ownLoop?.Dispose();
        _cts.Dispose();
    }
}
