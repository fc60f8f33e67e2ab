using System.Diagnostics;
using System.Text;
using System.Text.Json;

namespace CalicoSharp.Testing;

/// <summary>A real etcd cluster (Debian's etcd-server) on loopback: three members by default, each its own
/// process, free ports and temporary data directory. Members can be killed and restarted on the same data; the
/// leader is found through etcd's own status call. Dispose kills every member and removes every directory.</summary>
public sealed class EtcdCluster : IDisposable
{
    private readonly List<EtcdServer> members;

    private EtcdCluster(List<EtcdServer> members) => this.members = members;

    public IReadOnlyList<EtcdServer> Members => members;

    /// <summary>Every member's client endpoint, as a client of the cluster is given them.</summary>
    public IReadOnlyList<string> Endpoints => [.. members.Select(m => m.Endpoint)];

    public static EtcdCluster Start(int size = 3)
    {
        var list = new List<EtcdServer>();
        try
        {
            for (int i = 0; i < size; i++)
            {
                list.Add(EtcdServer.NewMember());
            }

            string initial = string.Join(',', list.Select(m => m.PeerSpec));
            foreach (var m in list)
            {
                m.JoinCluster(initial);
                m.Spawn();
            }

            foreach (var m in list)
            {
                m.WaitReady(TimeSpan.FromSeconds(30));
            }

            return new EtcdCluster(list);
        }
        catch
        {
            foreach (var m in list)
            {
                m.Dispose();
            }

            throw;
        }
    }

    /// <summary>Kills member <paramref name="index"/> (SIGKILL); its data stays for <see cref="Restart"/>.</summary>
    public void Kill(int index) => members[index].Stop();

    /// <summary>Starts a killed member again on its data; waits until it serves when <paramref name="wait"/>
    /// (it can only when a quorum is up).</summary>
    public void Restart(int index, bool wait = true)
    {
        members[index].Spawn();
        if (wait)
        {
            members[index].WaitReady(TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>The index of the member that is leader, as the live members agree on it; polls until one is
    /// (an election under way) or <paramref name="timeout"/> passes.</summary>
    public int Leader(TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        do
        {
            var ids = members.Select(Status).ToList();
            var leaders = ids.Where(s => s is not null).Select(s => s!.Value.Leader).Distinct().ToList();
            if (leaders.Count == 1 && leaders[0] != "0" && ids.FindIndex(s => s?.Member == leaders[0]) is int i and >= 0)
            {
                return i;
            }

            Thread.Sleep(50);
        }
        while (sw.Elapsed < timeout);
        throw new TimeoutException($"the etcd cluster agreed on no leader within {timeout}");
    }

    /// <summary>Waits until member <paramref name="index"/> knows it has no leader (quorum lost).</summary>
    public void WaitLeaderless(int index, TimeSpan timeout)
    {
        var sw = Stopwatch.StartNew();
        while (Status(members[index]) is { Leader: not "0" })
        {
            if (sw.Elapsed > timeout)
            {
                throw new TimeoutException($"etcd member {index} still has a leader after {timeout}");
            }

            Thread.Sleep(50);
        }
    }

    /// <summary>A member's id and the leader it knows ("0": none), from etcd's JSON gateway; null when it is down.</summary>
    private static (string Member, string Leader)? Status(EtcdServer member)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(1) };
        try
        {
            using var content = new StringContent("{}", Encoding.UTF8, "application/json");
            using var r = http.PostAsync(new Uri(member.Endpoint + "/v3/maintenance/status"), content).GetAwaiter().GetResult();
            using var doc = JsonDocument.Parse(r.Content.ReadAsStringAsync().GetAwaiter().GetResult());
            var root = doc.RootElement;
            string id = root.GetProperty("header").GetProperty("member_id").GetString()!;
            string leader = root.TryGetProperty("leader", out var l) ? l.GetString() ?? "0" : "0";
            return (id, leader);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or KeyNotFoundException or InvalidOperationException)
        {
            return null;
        }
    }

    public void Dispose()
    {
        foreach (var m in members)
        {
            m.Dispose();
        }
    }
}
