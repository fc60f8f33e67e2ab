using CalicoSharp.Rpc.Tests.Echo;

namespace CalicoSharp.Rpc.Tests;

/// <summary>The server under load from h2load: many connections, many streams each. The figures (beside
/// Kestrel's) are <c>make bench</c>'s (the <c>rpc</c> subcommand); here only success is asserted.</summary>
public class LoadTests
{
    [Fact]
    public async Task Many_clients_with_many_streams_each_are_all_answered()
    {
        await using var server = new EchoServer();
        const int Requests = 4_000;
        H2LoadResult r = await H2Load.RunAsync(server.Tcp, "/calicosharp.test.Echo/Say", new EchoRequest { Text = "load", ReplySize = 100 },
            Requests, clients: 40, streamsPerClient: 10, TimeSpan.FromSeconds(120));
        Assert.True(r.Succeeded == Requests && r.Status2xx == Requests && r.Failed == 0 && r.Errored == 0 && r.TimedOut == 0, r.Output);
        // Every request reached the handler and was answered (grpc-status 0 follows a handler that returned).
        Assert.Equal(Requests, Volatile.Read(ref server.Service.Said));
    }
}
