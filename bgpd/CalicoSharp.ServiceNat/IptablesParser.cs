using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace CalicoSharp.ServiceNat;

/// <summary>
/// Reads iptables-save output (and iptables-restore input, as kube-proxy writes it: the same lines with its own
/// argument order) into <see cref="NatTable"/>s, one per table. Options are read by name wherever they stand;
/// a match this reader does not know becomes an <see cref="UnknownMatch"/> naming it, never a guess.
/// </summary>
public static class IptablesParser
{
    /// <summary>The built-in chains of the nat and filter tables: their hooks and iptables' priorities.</summary>
    private static readonly Dictionary<(string Table, string Chain), (NatHook Hook, int Priority)> Builtins = new()
    {
        [("nat", "PREROUTING")] = (NatHook.Prerouting, -100),
        [("nat", "INPUT")] = (NatHook.Input, 100),
        [("nat", "OUTPUT")] = (NatHook.Output, -100),
        [("nat", "POSTROUTING")] = (NatHook.Postrouting, 100),
        [("filter", "INPUT")] = (NatHook.Input, 0),
        [("filter", "FORWARD")] = (NatHook.Forward, 0),
        [("filter", "OUTPUT")] = (NatHook.Output, 0),
    };

    /// <summary>Targets of iptables extensions (not chains): those this reader evaluates and common ones it names as unknown.</summary>
    internal static readonly HashSet<string> TargetExtensions = new(StringComparer.Ordinal)
    {
        "ACCEPT", "DROP", "RETURN", "REJECT", "MASQUERADE", "DNAT", "SNAT", "MARK", "LOG", "CONNMARK", "CT", "NOTRACK", "TPROXY",
    };

    /// <summary>Reads every rule now (a malformed line anywhere is refused with its number).</summary>
    public static IReadOnlyList<NatTable> Parse(string text, AddressFamily family)
    {
        IReadOnlyList<NatTable> tables = Parse(text, family, deferRules: true);
        foreach (NatTable t in tables)
        {
            foreach (NatChain c in t.Chains.Values)
            {
                _ = c.Rules;
            }
        }
        return tables;
    }

    /// <summary>With <paramref name="deferRules"/>, each chain's rule lines are read when the chain is first entered.</summary>
    public static IReadOnlyList<NatTable> Parse(string text, AddressFamily family, bool deferRules)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tables = new List<NatTable>();
        NatTable? table = null;
        string tableName = "";
        foreach ((int lineNo, string line) in Lines(text))
        {
            try
            {
                if (line[0] == '*')
                {
                    tableName = line[1..];
                    table = tables.FirstOrDefault(t => t.Name == "iptables " + tableName);
                    if (table is null)
                    {
                        table = new NatTable("iptables " + tableName, family);
                        tables.Add(table);
                    }
                    continue;
                }
                if (table is null)
                {
                    throw new NatParseException("a rule or chain before any *table line");
                }
                if (line == "COMMIT")
                {
                    table = null;
                    continue;
                }
                ReadLine(table, tableName, line, lineNo, deferRules, "");
            }
            catch (NatParseException e)
            {
                throw new NatParseException($"line {lineNo}: {e.Message}");
            }
        }
        return tables;
    }

    /// <summary>The lines that say something (not empty, not a comment), trimmed, with their numbers.</summary>
    private static IEnumerable<(int LineNo, string Line)> Lines(string text)
    {
        int lineNo = 0;
        foreach (string raw in text.Split('\n'))
        {
            lineNo++;
            string line = raw.TrimEnd('\r').Trim();
            if (line.Length > 0 && line[0] != '#')
            {
                yield return (lineNo, line);
            }
        }
    }

    /// <summary>Reads what <c>iptables -t <paramref name="tableName"/> -S <i>chain</i></c> printed (<c>-P</c> or <c>-N</c>,
    /// then the chain's <c>-A</c> lines) into <paramref name="table"/>; the rules are read when the chain is first entered.</summary>
    public static void ParseListing(NatTable table, string tableName, string text, string source)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(text);
        foreach ((int lineNo, string line) in Lines(text))
        {
            try
            {
                ReadLine(table, tableName, line, lineNo, deferRules: true, source + ", ");
            }
            catch (NatParseException e)
            {
                throw new NatParseException($"{source}, line {lineNo}: {e.Message}");
            }
        }
    }

    /// <summary>One line of a table: a chain declaration (<c>:CHAIN POLICY</c>, <c>-P</c>, <c>-N</c>) or a command.</summary>
    private static void ReadLine(NatTable table, string tableName, string line, int lineNo, bool deferRules, string where)
    {
        if (line[0] == ':')
        {
            string[] parts = line[1..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 2)
            {
                throw new NatParseException($"chain line '{line}' has no policy");
            }
            Declare(table, tableName, parts[0], parts[1]);
            return;
        }
        if (deferRules && line.StartsWith("-A ", StringComparison.Ordinal))
        {
            int end = line.IndexOf(' ', 3);
            string chainName = end < 0 ? line[3..] : line[3..end];
            if (!table.Chains.TryGetValue(chainName, out NatChain? chain))
            {
                throw new NatParseException($"rule for chain {chainName}, which is not declared");
            }
            chain.Defer(lineNo, line, (c, lines) => ReadDeferred(table, c, lines, where));
            return;
        }
        List<string> tokens = Tokenize(line);
        switch (tokens[0])
        {
            case "-A" or "--append" or "-I" or "--insert":
                AddRule(table, tokens, line);
                break;
            case "-P" or "--policy":
                Declare(table, tableName, Arg(tokens, 1, tokens[0]), Arg(tokens, 2, tokens[0]));
                break;
            case "-N" or "--new-chain":
                string n = Arg(tokens, 1, tokens[0]);
                table.Chains.TryAdd(n, new NatChain(n));
                break;
            case "-X" or "--delete-chain":
                table.Chains.Remove(Arg(tokens, 1, tokens[0]));
                break;
            case "-F" or "--flush":
                if (table.Chains.TryGetValue(Arg(tokens, 1, tokens[0]), out NatChain? f))
                {
                    f.Rules.Clear();
                }
                break;
            default:
                throw new NatParseException($"'{tokens[0]}' is not a command iptables-save or -restore writes");
        }
    }

    /// <summary>A chain with its policy: a built-in chain of the table becomes a base chain at its hook.</summary>
    private static void Declare(NatTable table, string tableName, string name, string policy)
    {
        table.Chains.TryAdd(name, new NatChain(name));
        if (Builtins.TryGetValue((tableName, name), out (NatHook Hook, int Priority) b))
        {
            table.BaseChains.RemoveAll(x => x.Chain == name);
            table.BaseChains.Add(new NatBaseChain(name, b.Hook, b.Priority, tableName == "nat", policy == "DROP"));
        }
        else if (policy != "-")
        {
            throw new NatParseException($"chain {name} is not a built-in chain of table {tableName} but has policy {policy}");
        }
    }

    /// <summary>The built-in chains of an iptables table (nat, filter) this reader evaluates.</summary>
    public static IEnumerable<string> BuiltinChains(string tableName) => Builtins.Keys.Where(k => k.Table == tableName).Select(k => k.Chain);

    private static void ReadDeferred(NatTable table, NatChain chain, List<(int Line, string Text)> lines, string where)
    {
        foreach ((int n, string text) in lines)
        {
            try
            {
                AddRule(table, Tokenize(text), text);
            }
            catch (NatParseException e)
            {
                throw new NatParseException($"{where}line {n}: {e.Message}");
            }
        }
    }

    private static string Arg(List<string> t, int i, string option) =>
        i < t.Count ? t[i] : throw new NatParseException($"{option} needs a value");

    private static void AddRule(NatTable table, List<string> t, string line)
    {
        string chainName = Arg(t, 1, t[0]);
        if (!table.Chains.TryGetValue(chainName, out NatChain? chain))
        {
            throw new NatParseException($"rule for chain {chainName}, which is not declared");
        }
        int i = 2;
        int? insertAt = null;
        if (t[0] is "-I" or "--insert")
        {
            insertAt = i < t.Count && int.TryParse(t[i], NumberStyles.None, CultureInfo.InvariantCulture, out int pos) ? pos : 1;
            if (i < t.Count && int.TryParse(t[i], NumberStyles.None, CultureInfo.InvariantCulture, out _))
            {
                i++;
            }
        }
        var matches = new List<NatMatch>();
        string? comment = null;
        NatAction action = new NoAction();
        string? target = null;
        bool negate = false;
        string? protocol = null;
        string? statisticMode = null;
        double? probability = null;
        var unknownModules = new List<string>();
        string module = "";
        for (; i < t.Count; i++)
        {
            string o = t[i];
            if (o == "!")
            {
                negate = true;
                continue;
            }
            bool neg = negate;
            negate = false;
            string V() => Arg(t, ++i, o);
            switch (o)
            {
                case "-s" or "--source" or "--src":
                    matches.Add(new AddressMatch(true, Networks(V(), table.Family), neg));
                    break;
                case "-d" or "--destination" or "--dst":
                    matches.Add(new AddressMatch(false, Networks(V(), table.Family), neg));
                    break;
                case "-p" or "--protocol":
                    protocol = Protocol(V());
                    matches.Add(new ProtocolMatch(protocol, neg));
                    break;
                case "-i" or "--in-interface":
                    matches.Add(new InterfaceMatch(V(), neg));
                    break;
                case "-o" or "--out-interface":
                    matches.Add(new UnknownMatch($"{(neg ? "! " : "")}-o {V()}"));
                    break;
                case "-m" or "--match":
                    module = V();
                    if (module is not ("comment" or "tcp" or "udp" or "sctp" or "statistic" or "mark" or "addrtype" or "conntrack" or "multiport"))
                    {
                        unknownModules.Add(module);
                        matches.Add(new UnknownMatch($"-m {module}" + ModuleOptions(t, i)));
                    }
                    break;
                case "--comment":
                    comment = V();
                    break;
                case "--dport" or "--destination-port" or "--sport" or "--source-port":
                    matches.Add(new PortMatch(o is "--sport" or "--source-port", Ports(V()), neg));
                    break;
                case "--dports" or "--destination-ports" or "--sports" or "--source-ports" or "--ports":
                    if (o == "--ports")
                    {
                        matches.Add(new UnknownMatch($"-m multiport --ports {V()}"));
                        break;
                    }
                    matches.Add(new PortMatch(o is "--sports" or "--source-ports", [.. V().Split(',').SelectMany(Ports)], neg));
                    break;
                case "--mode":
                    statisticMode = V();
                    break;
                case "--probability":
                    probability = double.TryParse(V(), NumberStyles.Float, CultureInfo.InvariantCulture, out double p) && p is >= 0 and <= 1 ? p
                        : throw new NatParseException($"--probability '{t[i]}' is not a number from 0 to 1");
                    break;
                case "--every" or "--packet":
                    statisticMode ??= "nth";
                    V();
                    break;
                case "--mark" when module == "mark":
                    (uint value, uint mask) = Mark(V());
                    matches.Add(new MarkMatch(value, mask, neg));
                    break;
                case "--src-type" or "--dst-type":
                    matches.Add(new AddressTypeMatch(o == "--src-type", V().Split(','), neg));
                    break;
                case "--limit-iface-in" or "--limit-iface-out":
                    matches.Add(new UnknownMatch($"-m addrtype {o}"));
                    break;
                case "--ctstate":
                    matches.Add(new ConntrackStateMatch(V().Split(','), neg));
                    break;
                case "-j" or "--jump" or "-g" or "--goto":
                    target = V();
                    action = target switch
                    {
                        "ACCEPT" => new VerdictAction(NatVerdictKind.Accept),
                        "DROP" => new VerdictAction(NatVerdictKind.Drop),
                        "RETURN" => new VerdictAction(NatVerdictKind.Return),
                        "REJECT" => new VerdictAction(NatVerdictKind.Reject, "icmp-port-unreachable"),
                        "MASQUERADE" => new MasqueradeAction(),
                        "DNAT" or "MARK" => new NoAction(),
                        _ when !TargetExtensions.Contains(target) && table.MayHaveChain(target) => new JumpAction(target, o is "-g" or "--goto"),
                        _ => new UnknownAction($"-j {target}"),
                    };
                    break;
                case "--reject-with" when target == "REJECT":
                    action = new VerdictAction(NatVerdictKind.Reject, V());
                    break;
                case "--to-destination" when target == "DNAT":
                    action = Dnat(V());
                    break;
                case "--set-xmark" or "--set-mark" when target == "MARK":
                    (uint xv, uint xm) = Mark(V());
                    action = new MarkAction(~xm, xv);
                    break;
                case "--or-mark" when target == "MARK":
                    uint ov = Mark(V()).Value;
                    action = new MarkAction(~ov, ov);
                    break;
                case "--xor-mark" when target == "MARK":
                    action = new MarkAction(uint.MaxValue, Mark(V()).Value);
                    break;
                case "--and-mark" when target == "MARK":
                    action = new MarkAction(Mark(V()).Value, 0);
                    break;
                case "--random-fully" or "--random" or "--persistent":
                    break;
                default:
                    if (unknownModules.Count > 0 && o.StartsWith("--", StringComparison.Ordinal))
                    {
                        // An option of a module this reader does not know: already named by its UnknownMatch.
                        while (i + 1 < t.Count && !t[i + 1].StartsWith('-') && t[i + 1] != "!")
                        {
                            i++;
                        }
                        break;
                    }
                    if (target is not null && action is UnknownAction)
                    {
                        // An option of a target this reader does not evaluate, already named.
                        while (i + 1 < t.Count && !t[i + 1].StartsWith('-'))
                        {
                            i++;
                        }
                        break;
                    }
                    throw new NatParseException($"option '{o}' is not one iptables-save writes for this rule");
            }
        }
        if (target == "DNAT" && action is NoAction)
        {
            throw new NatParseException("-j DNAT without --to-destination");
        }
        if (target == "MARK" && action is NoAction)
        {
            throw new NatParseException("-j MARK without a mark operation");
        }
        if (statisticMode is not null || probability is not null)
        {
            matches.Add(statisticMode == "random" && probability is { } pr ? new ProbabilityMatch(pr)
                : new UnknownMatch($"-m statistic --mode {statisticMode ?? "(none)"}{(probability is null ? "" : " --probability " + probability.Value.ToString(CultureInfo.InvariantCulture))}"));
        }
        if (matches.OfType<PortMatch>().Any() && protocol is null)
        {
            throw new NatParseException("a port match without -p");
        }
        var rule = new NatRule(chainName, chain.Rules.Count + 1, line, comment, matches, action);
        if (insertAt is not { } at)
        {
            chain.Rules.Add(rule);
            return;
        }
        chain.Rules.Insert(Math.Clamp(at - 1, 0, chain.Rules.Count), rule);
        for (int k = 0; k < chain.Rules.Count; k++)
        {
            if (chain.Rules[k].Number != k + 1)
            {
                chain.Rules[k] = chain.Rules[k] with { Number = k + 1 };
            }
        }
    }

    private static string ModuleOptions(List<string> t, int i)
    {
        var sb = new StringBuilder();
        for (int k = i + 1; k < t.Count && t[k] is not ("-m" or "--match" or "-j" or "--jump" or "-g" or "--goto"); k++)
        {
            if (t[k].Length > 1 && t[k][0] == '-' && t[k][1] != '-')
            {
                break;
            }
            sb.Append(' ').Append(t[k]);
        }
        return sb.ToString();
    }

    public static string Protocol(string p) => p.ToLowerInvariant() switch
    {
        "6" => "tcp",
        "17" => "udp",
        "132" => "sctp",
        "1" => "icmp",
        "58" => "ipv6-icmp",
        "0" => "all",
        var x => x,
    };

    private static IReadOnlyList<IPNetwork> Networks(string text, AddressFamily family)
    {
        var list = new List<IPNetwork>();
        foreach (string one in text.Split(','))
        {
            string s = one;
            if (!s.Contains('/', StringComparison.Ordinal))
            {
                s += family == AddressFamily.InterNetworkV6 ? "/128" : "/32";
            }
            if (!IPNetwork.TryParse(s, out IPNetwork n))
            {
                // iptables-save writes a dotted mask when it is not a prefix (-d 10.0.0.0/255.0.255.0): not decidable here.
                throw new NatParseException($"'{one}' is not an address or prefix");
            }
            list.Add(n);
        }
        return list;
    }

    private static IReadOnlyList<(int, int)> Ports(string text)
    {
        string[] range = text.Split(':');
        if (range.Length is 1 or 2 && range.All(r => int.TryParse(r, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v <= 65535))
        {
            int lo = int.Parse(range[0], CultureInfo.InvariantCulture);
            return [(lo, range.Length == 2 ? int.Parse(range[1], CultureInfo.InvariantCulture) : lo)];
        }
        throw new NatParseException($"'{text}' is not a port or port range");
    }

    public static (uint Value, uint Mask) Mark(string text)
    {
        string[] p = text.Split('/');
        if (p.Length is 1 or 2 && p.All(x => TryUint(x, out _)))
        {
            TryUint(p[0], out uint v);
            uint m = uint.MaxValue;
            if (p.Length == 2)
            {
                TryUint(p[1], out m);
            }
            return (v, m);
        }
        throw new NatParseException($"'{text}' is not a mark (value[/mask])");
    }

    private static bool TryUint(string s, out uint v) =>
        s.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? uint.TryParse(s.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out v)
            : uint.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out v);

    private static DnatAction Dnat(string text)
    {
        // 10.244.1.5:8080, [fd00::5]:8080, 10.244.1.5, a range (10.0.0.1-10.0.0.3) is not one endpoint.
        string host = text;
        int? port = null;
        if (text.StartsWith('['))
        {
            int close = text.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
            {
                throw new NatParseException($"--to-destination '{text}' has no closing ]");
            }
            host = text[1..close];
            if (close + 1 < text.Length)
            {
                port = text[close + 1] == ':' && int.TryParse(text.AsSpan(close + 2), NumberStyles.None, CultureInfo.InvariantCulture, out int p6) ? p6
                    : throw new NatParseException($"--to-destination '{text}' has no port after ]");
            }
        }
        else if (text.Count(c => c == ':') == 1)
        {
            int colon = text.IndexOf(':', StringComparison.Ordinal);
            host = text[..colon];
            port = int.TryParse(text.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int p4) && p4 <= 65535 ? p4
                : throw new NatParseException($"--to-destination '{text}': '{text[(colon + 1)..]}' is not one port");
        }
        return IPAddress.TryParse(host, out IPAddress? a) ? new DnatAction(a, port)
            : throw new NatParseException($"--to-destination '{text}' is not one address (ranges pick no single endpoint)");
    }

    /// <summary>Splits a rule line as iptables-restore does: whitespace separates, double quotes group, \" escapes.</summary>
    public static List<string> Tokenize(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var tokens = new List<string>(24);
        int i = 0, n = line.Length;
        while (i < n)
        {
            while (i < n && char.IsWhiteSpace(line[i]))
            {
                i++;
            }
            if (i >= n)
            {
                break;
            }
            int start = i;
            bool plain = true;
            while (i < n && !char.IsWhiteSpace(line[i]))
            {
                if (line[i] is '"' or '\\')
                {
                    plain = false;
                    break;
                }
                i++;
            }
            if (plain)
            {
                tokens.Add(line[start..i]);
                continue;
            }
            // A token with quotes or escapes: the slow way, from its start.
            var sb = new StringBuilder();
            bool quoted = false;
            for (i = start; i < n && (quoted || !char.IsWhiteSpace(line[i])); i++)
            {
                char c = line[i];
                if (c == '\\' && i + 1 < n && line[i + 1] is '"' or '\\')
                {
                    sb.Append(line[++i]);
                }
                else if (c == '"')
                {
                    quoted = !quoted;
                }
                else
                {
                    sb.Append(c);
                }
            }
            if (quoted)
            {
                throw new NatParseException("unterminated quote");
            }
            tokens.Add(sb.ToString());
        }
        return tokens;
    }
}
