using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;

namespace CalicoSharp.ServiceNat;

/// <summary>
/// Reads one iptables table chain by chain, as the packet enters them (<c>iptables -t nat -S CHAIN</c>). A dump
/// (<c>iptables-save</c>) costs the whole ruleset: iptables-nft fetches and translates every rule of every table, about
/// half a second on a node with 5,000 Services, even for <c>-t filter</c>; one chain costs a process and the kernel's
/// answer for that chain (about 10 ms; KUBE-SERVICES with 5,000 rules about 70 ms). A trace enters a handful of chains.
/// The built-in chains are fetched at once, in parallel; a chain with few jump targets (a service's chain and its
/// endpoints) has them fetched in parallel as soon as it is read, so the endpoints' chains are there when the packet
/// gets to them. Chains are read at different moments: a rule set kube-proxy rewrites meanwhile can mix two versions,
/// as a dump of two tables can.
/// </summary>
public sealed class IptablesChainReader
{
    /// <summary>Lists one chain of a table: (exit code, output, error); null when the command is not installed.</summary>
    public delegate (int Exit, string Out, string Err)? ListChain(string table, string chain);

    /// <summary>A chain with more jump targets than this (KUBE-SERVICES: one per service port) has none fetched ahead.</summary>
    private const int PrefetchLimit = 64;

    /// <summary>How many chains are listed at once.</summary>
    private const int Parallel = 4;

    private readonly ListChain _list;
    private readonly string _tableName;
    private readonly ConcurrentDictionary<string, Task<(int Exit, string Out, string Err)?>> _fetches = new(StringComparer.Ordinal);
    /// <summary>Shared by every reader of the process: two traces at once still run at most this many listings.</summary>
    private static readonly SemaphoreSlim Gate = new(Parallel);
    private double _waitMs;

    private IptablesChainReader(string command, string tableName, AddressFamily family, ListChain list)
    {
        Command = $"{command} -t {tableName} -S";
        _tableName = tableName;
        _list = list;
        Table = new NatTable($"iptables {tableName}", family) { ChainSource = Read };
    }

    /// <summary>The table; its chains are read when first entered.</summary>
    public NatTable Table { get; }

    /// <summary>The command that lists one chain, without the chain ("iptables -t nat -S").</summary>
    public string Command { get; }

    /// <summary>False once the command was found missing.</summary>
    public bool Installed { get; private set; } = true;

    /// <summary>How many chains were listed and read.</summary>
    public int ChainsRead { get; private set; }

    /// <summary>Time spent waiting for listings, in milliseconds.</summary>
    public double WaitMs => _waitMs;

    /// <summary>Starts listing the table's built-in chains (in parallel with the other table's).</summary>
    public static IptablesChainReader Open(string command, string tableName, AddressFamily family, ListChain list)
    {
        ArgumentNullException.ThrowIfNull(list);
        var reader = new IptablesChainReader(command, tableName, family, list);
        foreach (string chain in IptablesParser.BuiltinChains(tableName))
        {
            reader.Fetch(chain);
        }
        return reader;
    }

    /// <summary>Reads the built-in chains. Null when all were read; else why the table could not be (the first error).</summary>
    public string? ReadBuiltins()
    {
        string? error = null;
        int read = 0;
        foreach (string chain in IptablesParser.BuiltinChains(_tableName))
        {
            string? e = Read(chain);
            if (e is null)
            {
                read++;
            }
            error ??= e;
        }
        return read > 0 ? null : error;
    }

    // Each listing waits on its own thread, not the thread pool's: the evaluation blocks a pool thread while it waits,
    // and a pool short of threads (2 cores) would add its injection delay to every listing.
    private Task<(int Exit, string Out, string Err)?> Fetch(string chain) => _fetches.GetOrAdd(chain, c => Task.Factory.StartNew(() =>
    {
        Gate.Wait();
        try
        {
            return _list(_tableName, c);
        }
        finally
        {
            Gate.Release();
        }
    }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default));

    /// <summary>Lists and reads one chain into <see cref="Table"/>; null when read, else why it is not there.</summary>
    private string? Read(string chain)
    {
        long start = Stopwatch.GetTimestamp();
        (int Exit, string Out, string Err)? r = Fetch(chain).GetAwaiter().GetResult();
        _waitMs += Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        if (r is null)
        {
            Installed = false;
            return $"{Command.Split(' ')[0]} is not installed (Debian package iptables): iptables rules not read";
        }
        if (r.Value.Exit != 0)
        {
            // iptables-nft says "incompatible" for a chain that does not exist, iptables-legacy "No chain/target/match".
            return $"-j {chain}: no chain {chain} could be listed in table {_tableName} ({Command} {chain}: {r.Value.Err.Trim()}), and it is not a target this reader evaluates";
        }
        IptablesParser.ParseListing(Table, _tableName, r.Value.Out, $"{Command} {chain}");
        if (!Table.Chains.ContainsKey(chain))
        {
            return $"{Command} {chain} did not list chain {chain}";
        }
        ChainsRead++;
        PrefetchTargets(r.Value.Out);
        return null;
    }

    /// <summary>Starts listing the chains this listing jumps to, when they are few.</summary>
    private void PrefetchTargets(string listing)
    {
        var targets = new HashSet<string>(StringComparer.Ordinal);
        foreach (string line in listing.Split('\n'))
        {
            string[] t = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            for (int i = 0; i + 1 < t.Length; i++)
            {
                if (t[i] is "-j" or "-g" && !IptablesParser.TargetExtensions.Contains(t[i + 1]) && !Table.Chains.ContainsKey(t[i + 1]))
                {
                    targets.Add(t[i + 1]);
                }
            }
            if (targets.Count > PrefetchLimit)
            {
                return;
            }
        }
        foreach (string target in targets)
        {
            Fetch(target);
        }
    }
}
