using CalicoSharp.Bgp;
using CalicoSharp.Bgpd;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>calicosharp-bgpd's flags and environment, parsed without a process.</summary>
public sealed class CommandLineTests
{
    private static BgpdCommandLine Parse(string[] args, Dictionary<string, string>? env = null) =>
        BgpdCommandLine.Parse(args, name => env is not null && env.TryGetValue(name, out string? v) ? v : null);

    [Fact]
    public void Flags_win_over_the_environment_and_defaults_fill_the_rest()
    {
        var env = new Dictionary<string, string> { ["NODENAME"] = "from-env", ["IP"] = "10.0.0.9/24", ["AS"] = "65009", ["ETCD_ENDPOINTS"] = "http://10.0.0.10:2379" };
        BgpdCommandLine cl = Parse(["--node-name", "node1", "--as", "65001", "--no-kernel", "--api-socket", "none", "--log-level", "Debug", "--peer-max-prefixes", "0"], env);
        Assert.Null(cl.Error);
        DaemonOptions o = cl.Options!;
        Assert.Equal("node1", o.NodeName);
        Assert.Equal("10.0.0.9/24", o.Ipv4Address);
        Assert.Null(o.Ipv6Address);
        Assert.Equal(65001u, o.AsNumber);
        Assert.Equal(["http://10.0.0.10:2379"], o.EtcdEndpoints);
        Assert.False(o.Kernel);
        Assert.Equal(0, o.PeerMaxPrefixes);
        Assert.Null(cl.ApiSocket);
        Assert.Equal(BgpLogLevel.Debug, cl.LogLevel);
        Assert.Equal(DaemonOptions.DefaultSecretsDirectory, o.SecretsDirectory);
        Assert.Equal(IpamClientOptions.DefaultStateDirectory, o.StateDirectory);

        BgpdCommandLine plain = Parse([]);
        Assert.Equal(ControlApi.DefaultSocket, plain.ApiSocket);
        Assert.True(plain.Options!.Kernel);
        Assert.Empty(plain.Options.EtcdEndpoints);
        Assert.Equal(BgpLogLevel.Info, plain.LogLevel);
    }

    [Theory]
    [InlineData(new[] { "--bogus" }, "unknown argument '--bogus'")]
    [InlineData(new[] { "--as", "0" }, "AS '0' is not a number from 1 to 4294967295")]
    [InlineData(new[] { "--as", "4294967296" }, "AS '4294967296' is not a number")]
    [InlineData(new[] { "--log-level", "loud" }, "--log-level is debug, info, warning or error")]
    [InlineData(new[] { "--log-level", "7" }, "--log-level is debug, info, warning or error")]
    [InlineData(new[] { "--peer-max-prefixes", "-1" }, "--peer-max-prefixes is a number of prefixes")]
    [InlineData(new[] { "--config" }, "--config needs a value")]
    [InlineData(new[] { "--node-name", "n", "--state-dir" }, "--state-dir needs a value")]
    public void A_bad_command_line_says_what_is_wrong(string[] args, string error)
    {
        BgpdCommandLine cl = Parse(args);
        Assert.Null(cl.Options);
        Assert.Contains(error, cl.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void Help_and_a_bad_as_from_the_environment()
    {
        Assert.True(Parse(["--node-name", "n", "--help"]).Help);
        Assert.Contains("SIGINT   stop for good", BgpdCommandLine.Usage, StringComparison.Ordinal);
        Assert.Equal("AS 'x' is not a number from 1 to 4294967295", Parse([], new Dictionary<string, string> { ["AS"] = "x" }).Error);
    }
}
