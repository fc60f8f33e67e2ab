using CalicoSharp.Cni;

namespace CalicoSharp.Cni.Tests;

public sealed class LogTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("calicosharp-log-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    [Fact]
    public async Task Lines_of_plugins_writing_at_once_all_arrive_whole()
    {
        // One Log per plugin process, as on a node starting many pods at once; each has its own descriptor.
        string path = Path.Combine(dir, "sub", "cni.log");
        var writers = Enumerable.Range(0, 8).Select(w => Task.Run(() =>
        {
            var log = new Log(path, "info", $"w{w} ");
            for (int i = 0; i < 500; i++)
            {
                log.Info($"line {i} " + new string('x', 100));
            }
        }));
        await Task.WhenAll(writers);
        var lines = await File.ReadAllLinesAsync(path);
        Assert.Equal(8 * 500, lines.Length);
        Assert.All(lines, l => Assert.Matches(@"^\S+ \S+ \[info\] w\d line \d+ x{100}$", l));
        Assert.Equal(8 * 500, lines.Select(l => l.Split(' ', 5)[3] + l.Split(' ', 6)[5]).Distinct().Count());
    }

    [Fact]
    public void Below_the_level_nothing_is_written_and_a_log_that_cannot_open_never_fails()
    {
        string path = Path.Combine(dir, "quiet.log");
        new Log(path, "warning", "").Info("not this");
        Assert.False(File.Exists(path));
        new Log("/proc/no/such/dir/cni.log", "debug", "").Error("goes nowhere");
    }
}
