using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using CalicoSharp.Bgp;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd;

/// <summary>An ippool as natOutgoing needs it: its CIDR, <c>natOutgoing</c> and <c>disabled</c>.</summary>
public sealed record NatPool(IpNet Cidr, bool NatOutgoing, bool Disabled = false);

/// <summary>
/// Calico's ippools <c>natOutgoing</c>, as felix programs it (POSTROUTING: source in a masquerade pool, destination in
/// no pool → MASQUERADE), in an nftables table of bgpd's own, <c>inet calicosharp</c>: two interval sets per family
/// (every pool; the natOutgoing pools) and one rule per family in a nat chain on the postrouting hook. A disabled pool
/// counts like any other: <c>disabled</c> stops new allocations, its pods keep their addresses and their masquerade.
/// </summary>
public static class NatOutgoingRules
{
    public const string Family = "inet";
    public const string Table = "calicosharp";

    /// <summary>"inet calicosharp", as nft names it.</summary>
    public const string QualifiedName = Family + " " + Table;

    /// <summary>The table's definition for these pools, or null when no pool has natOutgoing (then the table goes).
    /// Pools are written in order, deduplicated; overlapping pools are merged by the sets (<c>auto-merge</c>).</summary>
    public static string? Ruleset(IEnumerable<NatPool> pools)
    {
        ArgumentNullException.ThrowIfNull(pools);
        List<NatPool> list = [.. pools];
        if (!list.Any(p => p.NatOutgoing))
        {
            return null;
        }
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"table {QualifiedName} {{\n");
        var rules = new List<string>();
        foreach ((bool v6, string type, string match) in new[] { (false, "ipv4_addr", "ip"), (true, "ipv6_addr", "ip6") })
        {
            List<string> all = [.. list.Where(p => p.Cidr.IsIPv6 == v6).Select(p => p.Cidr.ToString()).Distinct(StringComparer.Ordinal)];
            List<string> masq = [.. list.Where(p => p.Cidr.IsIPv6 == v6 && p.NatOutgoing).Select(p => p.Cidr.ToString()).Distinct(StringComparer.Ordinal)];
            if (masq.Count == 0)
            {
                continue;
            }
            string suffix = v6 ? "v6" : "v4";
            Set(sb, $"pools_{suffix}", type, all);
            Set(sb, $"masq_pools_{suffix}", type, masq);
            rules.Add($"{match} saddr @masq_pools_{suffix} {match} daddr != @pools_{suffix} counter masquerade comment \"ippools natOutgoing ({suffix})\"");
        }
        sb.Append("\tchain nat_outgoing {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
        foreach (string r in rules)
        {
            sb.Append("\t\t").Append(r).Append('\n');
        }
        sb.Append("\t}\n}\n");
        return sb.ToString();
    }

    private static void Set(StringBuilder sb, string name, string type, List<string> elements) =>
        sb.Append(CultureInfo.InvariantCulture, $"\tset {name} {{\n\t\ttype {type}\n\t\tflags interval\n\t\tauto-merge\n\t\telements = {{ {string.Join(", ", elements)} }}\n\t}}\n");

    /// <summary>One nft transaction (nft -f) that replaces the whole table atomically: create it if missing, delete it,
    /// define it anew (or, for null, leave it deleted). Other tables are never named.</summary>
    public static string Transaction(string? ruleset) =>
        $"add table {QualifiedName}\ndelete table {QualifiedName}\n{ruleset}";
}

/// <summary>What bgpd's natOutgoing table is now: what was last programmed, and the error of the last attempt.</summary>
public sealed record NatOutgoingState(
    bool Programmed,
    IReadOnlyList<string> MasqueradePools,
    IReadOnlyList<string> AllPools,
    string? Error,
    long Updates,
    long Errors,
    double LastProgramMs);

/// <summary>
/// Keeps the nftables table <c>inet calicosharp</c> equal to the pools: one atomic replace per change (nft -f), none
/// when nothing changed; a failure is logged once per distinct error, kept for node status, and retried at the next
/// poll. Not thread-safe: the daemon's loop alone calls <see cref="Apply"/>; <see cref="State"/> may be read anywhere.
/// </summary>
public sealed class NatOutgoingTable
{
    /// <summary>Runs one nft script; returns null on success, else why it failed.</summary>
    public delegate string? ScriptRunner(string script);

    private readonly ScriptRunner _run;
    private readonly Action<BgpLogLevel, string> _log;
    private string? _applied;
    private bool _known;
    private string? _lastError;

    public NatOutgoingTable(Action<BgpLogLevel, string> log, ScriptRunner? run = null)
    {
        _log = log;
        _run = run ?? RunNft;
    }

    public NatOutgoingState State { get; private set; } = new(false, [], [], null, 0, 0, 0);

    /// <summary>Programs the table for these pools when it differs from what was last programmed (the first call always
    /// writes: a table left by an earlier run, SIGTERM keeps it, is replaced or removed).</summary>
    public void Apply(IReadOnlyList<NatPool> pools)
    {
        ArgumentNullException.ThrowIfNull(pools);
        string? ruleset = NatOutgoingRules.Ruleset(pools);
        if (_known && ruleset == _applied)
        {
            return;
        }
        var sw = Stopwatch.StartNew();
        string? error = _run(NatOutgoingRules.Transaction(ruleset));
        double ms = sw.Elapsed.TotalMilliseconds;
        if (error is not null && ruleset is null && !_known && error.StartsWith(NotInstalled, StringComparison.Ordinal))
        {
            // No pool wants NAT and nft is not there: there is nothing to remove either.
            error = null;
        }
        List<string> masq = [.. pools.Where(p => p.NatOutgoing).Select(p => p.Cidr.ToString()).Distinct(StringComparer.Ordinal)];
        if (error is null)
        {
            bool changed = _known ? ruleset != _applied : ruleset is not null;
            _applied = ruleset;
            _known = true;
            if (_lastError is not null)
            {
                _log(BgpLogLevel.Info, $"nftables table {NatOutgoingRules.QualifiedName}: programmed again");
            }
            _lastError = null;
            if (changed || ruleset is not null)
            {
                _log(BgpLogLevel.Info, ruleset is null
                    ? $"natOutgoing: no ippool has it; nftables table {NatOutgoingRules.QualifiedName} removed"
                    : $"natOutgoing: masquerading traffic from {string.Join(", ", masq)} to addresses outside every pool (nftables table {NatOutgoingRules.QualifiedName}, {ms:0.#} ms)");
            }
            State = new NatOutgoingState(ruleset is not null, ruleset is null ? [] : masq,
                ruleset is null ? [] : [.. pools.Select(p => p.Cidr.ToString()).Distinct(StringComparer.Ordinal)], null, State.Updates + 1, State.Errors, ms);
            return;
        }
        string text = $"cannot program nftables table {NatOutgoingRules.QualifiedName} (natOutgoing for {(masq.Count == 0 ? "no pool: removing it" : string.Join(", ", masq))}): {error}";
        if (text != _lastError)
        {
            _log(BgpLogLevel.Error, text + "; retrying at the next poll");
        }
        _lastError = text;
        State = State with { Error = text, Errors = State.Errors + 1, LastProgramMs = ms };
    }

    /// <summary>Removes the table (bgpd stops for good). Returns whether it is gone.</summary>
    public bool Remove()
    {
        if (_known && _applied is null)
        {
            return true;
        }
        string? error = _run(NatOutgoingRules.Transaction(null));
        if (error is not null && !error.StartsWith(NotInstalled, StringComparison.Ordinal))
        {
            _log(BgpLogLevel.Error, $"cannot remove nftables table {NatOutgoingRules.QualifiedName}: {error}");
            return false;
        }
        if (_applied is not null)
        {
            _log(BgpLogLevel.Info, $"natOutgoing: nftables table {NatOutgoingRules.QualifiedName} removed (bgpd stops for good)");
        }
        _applied = null;
        _known = true;
        State = State with { Programmed = false, MasqueradePools = [], AllPools = [] };
        return true;
    }

    private const string NotInstalled = "nft is not installed";

    /// <summary>nft -f - with the script on stdin.</summary>
    public static string? RunNft(string script)
    {
        ArgumentNullException.ThrowIfNull(script);
        var psi = new ProcessStartInfo("nft") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-f");
        psi.ArgumentList.Add("-");
        try
        {
            using Process p = Process.Start(psi)!;
            Task<string> err = p.StandardError.ReadToEndAsync();
            Task<string> output = p.StandardOutput.ReadToEndAsync();
            p.StandardInput.Write(script);
            p.StandardInput.Close();
            p.WaitForExit();
            string e = err.GetAwaiter().GetResult().Trim();
            output.GetAwaiter().GetResult();
            return p.ExitCode == 0 ? null : $"nft -f exited {p.ExitCode}: {(e.Length == 0 ? "no message" : e)}";
        }
        catch (Win32Exception e)
        {
            return $"{NotInstalled} (Debian package nftables): {e.Message}";
        }
    }
}
