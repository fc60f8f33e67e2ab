using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace CalicoSharp.Rpc.Tests;

/// <summary>The reference server: ASP.NET Core's gRPC on Kestrel (HTTP/2 without TLS), in this process, with
/// the same <see cref="EchoService"/> as <see cref="EchoServer"/>, on a loopback port and a Unix socket in a
/// temporary folder that <see cref="DisposeAsync"/> removes.</summary>
internal sealed class KestrelEchoServer : IAsyncDisposable
{
    private readonly WebApplication app;
    private readonly string dir;

    private KestrelEchoServer(WebApplication app, string dir, EchoService service, IPEndPoint tcp)
    {
        this.app = app;
        this.dir = dir;
        Service = service;
        Tcp = tcp;
    }

    public EchoService Service { get; }

    public IPEndPoint Tcp { get; }

    public string SocketPath => Path.Combine(dir, "echo.sock");

    public static async Task<KestrelEchoServer> StartAsync(int maxReceiveMessageSize = 4 << 20)
    {
        string dir = Directory.CreateTempSubdirectory("calicosharp-kestrel-").FullName;
        var service = new EchoService();
        WebApplication? app = null;
        try
        {
            WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ContentRootPath = dir, Args = [] });
            builder.Logging.ClearProviders();
            builder.Services.AddGrpc(o =>
            {
                o.MaxReceiveMessageSize = maxReceiveMessageSize;
                // The handler's exception text in UNKNOWN's message, as CalicoSharp.Rpc's server sends it.
                o.EnableDetailedErrors = true;
            });
            builder.Services.AddSingleton(service);
            builder.WebHost.UseShutdownTimeout(TimeSpan.FromSeconds(2));
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.Listen(IPAddress.Loopback, 0, l => l.Protocols = HttpProtocols.Http2);
                k.ListenUnixSocket(Path.Combine(dir, "echo.sock"), l => l.Protocols = HttpProtocols.Http2);
            });
            app = builder.Build();
            app.MapGrpcService<EchoService>();
            await app.StartAsync();
            ICollection<string> addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
            var uri = new Uri(addresses.Single(a => a.StartsWith("http://127.0.0.1:", StringComparison.Ordinal)));
            return new KestrelEchoServer(app, dir, service, new IPEndPoint(IPAddress.Loopback, uri.Port));
        }
        catch
        {
            if (app is not null)
            {
                await app.DisposeAsync();
            }

            Directory.Delete(dir, true);
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await app.StopAsync();
        }
        finally
        {
            await app.DisposeAsync();
            Directory.Delete(dir, true);
        }
    }
}
