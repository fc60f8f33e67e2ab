using System.Text;
using CalicoSharp.Ipam;
using CalicoSharp.Testing;

namespace CalicoSharp.Ipam.Tests;

/// <summary>Each defect 'ipam check' knows, planted in a real etcd: check exits 1 and names it,
/// 'ipam release --from-report' repairs it, a second check exits 0. Through the real CLI process.</summary>
[Trait("Category", "Etcd")]
public sealed class CheckCliTests : IDisposable
{
    private readonly EtcdServer etcd = EtcdServer.Start();
    private readonly IpamClient ipam;
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-check-").FullName;

    public CheckCliTests() =>
        ipam = new IpamClient(new EtcdKvStore(new EtcdOptions { Endpoints = [etcd.Endpoint] }));

    public void Dispose()
    {
        ipam.Dispose();
        etcd.Dispose();
        Directory.Delete(dir, true);
    }

    private Task<ProcessResult> Ctl(params string[] args) =>
        ProcessRunner.RunDllAsync(RepoPaths.ProjectDll("ipam/calicosharpctl", "calicosharpctl"), ["--etcd-endpoints", etcd.Endpoint, .. args], TimeSpan.FromSeconds(60));

    private async Task Put(string key, byte[] value) =>
        Assert.True((await ipam.Store.TxnAsync([], [KvOp.Put(key, value)], default)).Succeeded);

    private async Task Delete(string key) =>
        Assert.True((await ipam.Store.TxnAsync([], [KvOp.Delete(key)], default)).Succeeded);

    [Fact]
    public async Task Trace_reads_ipam_and_says_plainly_what_it_could_not_check()
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.241.0.0/16", Name = "p" });
        var a = await ipam.AutoAssignAsync(new AutoAssignRequest
        {
            HandleId = "net.c1", Node = "node1", Num4 = 1,
            Attributes = new Dictionary<string, string> { ["namespace"] = "ns1", ["pod"] = "web", ["containerID"] = "c1", ["node"] = "node1" },
        });
        string ip = a[0].Address.ToString();
        string sockets = Path.Combine(dir, "{node}.sock");

        Assert.Equal(2, (await Ctl("trace", "not-an-ip")).ExitCode);
        var noStart = await Ctl("trace", ip, "--bgpd-socket", Path.Combine(dir, "none.sock"));
        Assert.Equal(2, noStart.ExitCode);
        Assert.Contains("--from", noStart.Stderr, StringComparison.Ordinal);
        var ghost = await Ctl("trace", ip, "--from", "ghost", "--bgpd-socket", sockets);
        Assert.Equal(2, ghost.ExitCode);
        Assert.Contains("no node with blocks and no pod of that name", ghost.Stderr, StringComparison.Ordinal);

        // No bgpd answers: IPAM's part is still told, the node hops are marked unchecked, naming the socket.
        var r = await Ctl("trace", ip, "--from", "ns1/web", "--bgpd-socket", sockets);
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("pod ns1/web (container c1)", r.Stdout, StringComparison.Ordinal);
        Assert.Contains($"not checked: no bgpd control API for node1 at {Path.Combine(dir, "node1.sock")}", r.Stdout, StringComparison.Ordinal);
        Assert.Contains("no break found in the hops that could be checked", r.Stdout, StringComparison.Ordinal);

        var free = await Ctl("trace", "10.241.0.200", "--from", "node1", "--bgpd-socket", sockets);
        Assert.Equal(1, free.ExitCode);
        Assert.Contains("not allocated", free.Stdout, StringComparison.Ordinal);
        Assert.Contains("the path breaks at: ipam", free.Stdout, StringComparison.Ordinal);
    }

    public static TheoryData<string> Defects() =>
    [
        CheckProblem.LeakedAllocation,
        CheckProblem.HandleWithoutAddress,
        CheckProblem.AddressWithoutHandle,
        CheckProblem.BrokenBlock,
        CheckProblem.AffinityWithoutBlock,
        CheckProblem.BlockWithoutAffinity,
    ];

    [Theory]
    [MemberData(nameof(Defects))]
    public async Task Check_finds_release_from_report_repairs(string defect)
    {
        await ipam.AddPoolAsync(new PoolRequest { Cidr = "10.240.0.0/16", Name = "p" });
        var live = await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "live", Node = "node1", Num4 = 2 });
        var block = live[0].Block;
        switch (defect)
        {
            case CheckProblem.LeakedAllocation:
                await ipam.AutoAssignAsync(new AutoAssignRequest { HandleId = "leaked", Node = "node1", Num4 = 1 });
                break;
            case CheckProblem.HandleWithoutAddress:
                await Put(Keys.Handle("ghost"), RecordJson.Encode(new IpamHandle { Block = new() { [block.ToString()] = 2 } }));
                break;
            case CheckProblem.AddressWithoutHandle:
                await Delete(Keys.Handle("live"));
                break;
            case CheckProblem.BrokenBlock:
                var e = (await ipam.Store.GetAsync(Keys.Block(block), default))!;
                var b = RecordJson.DecodeBlock(e.Value, e.Key);
                b.Unallocated.Add(0);   // ordinal 0 is allocated
                b.Unallocated.Remove(63);
                await Put(e.Key, RecordJson.Encode(b));
                break;
            case CheckProblem.AffinityWithoutBlock:
                await Put(Keys.Affinity("node9", IpNet.Parse("10.240.200.0/26")), RecordJson.Encode(new BlockAffinity { State = BlockAffinity.Confirmed }));
                break;
            case CheckProblem.BlockWithoutAffinity:
                await Delete(Keys.Affinity("node1", block));
                break;
        }

        var liveFile = Path.Combine(dir, "live");
        await File.WriteAllTextAsync(liveFile, "live\n");
        var report = Path.Combine(dir, "report.json");
        var first = await Ctl("ipam", "check", "--live-handles", liveFile, "-o", report);
        Assert.True(first.ExitCode == 1, first.Stdout + first.Stderr);
        Assert.Contains(defect, first.Stdout, StringComparison.Ordinal);
        var kinds = RecordJson.DecodeReport(await File.ReadAllBytesAsync(report), report).Problems.Select(p => p.Kind).Distinct().ToList();
        Assert.Contains(defect, kinds);

        var repair = await Ctl("ipam", "release", "--from-report", report);
        Assert.True(repair.ExitCode == 0, repair.Stdout + repair.Stderr);

        var second = await Ctl("ipam", "check", "--live-handles", liveFile);
        Assert.True(second.ExitCode == 0, second.Stdout + second.Stderr);
        Assert.Contains("no problems found", second.Stdout, StringComparison.Ordinal);

        // The live pod's addresses survived every repair.
        Assert.Equal(2, (await ipam.AddressesOfHandleAsync("live")).Count);
    }

    [Fact]
    public async Task Cli_reports_bad_input_and_dead_etcd_clearly()
    {
        var bad = await Ctl("pool", "add", "--cidr", "10.0.0.1/8");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("did you mean 10.0.0.0/8", bad.Stderr, StringComparison.Ordinal);

        var dead = await ProcessRunner.RunDllAsync(RepoPaths.ProjectDll("ipam/calicosharpctl", "calicosharpctl"),
            ["--etcd-endpoints", $"127.0.0.1:{EtcdServer.FreePort()}", "pool", "list"], TimeSpan.FromSeconds(30));
        Assert.Equal(3, dead.ExitCode);
        Assert.Contains("etcd is unreachable", dead.Stderr, StringComparison.Ordinal);

        var ok = await Ctl("pool", "add", "--cidr", "10.241.0.0/16", "--name", "p", "-o", "json");
        Assert.Equal(0, ok.ExitCode);
        Assert.Contains("\"blockSize\": 26", ok.Stdout, StringComparison.Ordinal);
        await Ctl("ipam", "assign", "--node", "n1", "--handle", "h1", "--ipv4", "3");
        var show = await Ctl("ipam", "show", "--show-blocks", "-o", "json");
        Assert.Equal(0, show.ExitCode);
        Assert.Contains("\"inUse\": 3", show.Stdout, StringComparison.Ordinal);
        Assert.Contains("\"affinity\": \"host:n1\"", show.Stdout, StringComparison.Ordinal);
        var del = await Ctl("pool", "delete", "p");
        Assert.Equal(1, del.ExitCode);
        Assert.Contains("still has 3 address(es) allocated", del.Stderr, StringComparison.Ordinal);
    }
}
