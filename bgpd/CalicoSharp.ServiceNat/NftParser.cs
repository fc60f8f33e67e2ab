using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace CalicoSharp.ServiceNat;

/// <summary>
/// Reads <c>nft -j list table &lt;family&gt; &lt;name&gt;</c> (libnftables' JSON schema) into a <see cref="NatTable"/>:
/// base chains with their hooks and priorities, rules, verdict maps and sets. The expressions kube-proxy's nftables
/// mode writes are understood; any other becomes an <see cref="UnknownMatch"/> or <see cref="UnknownAction"/> naming it.
/// </summary>
public static class NftParser
{
    public static NatTable Parse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json);
        }
        catch (JsonException e)
        {
            throw new NatParseException($"not nft JSON: {e.Message}");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("nftables", out JsonElement items) || items.ValueKind != JsonValueKind.Array)
            {
                throw new NatParseException("not nft JSON: no \"nftables\" array");
            }
            NatTable? table = null;
            // Two passes over the document: chains, maps and sets first, then the rules (which name them); no copies.
            foreach (JsonElement item in items.EnumerateArray())
            {
                if (item.ValueKind != JsonValueKind.Object)
                {
                    throw new NatParseException("an element of the nftables array is not an object");
                }
                foreach (JsonProperty p in item.EnumerateObject())
                {
                    switch (p.Name)
                    {
                        case "table":
                            string family = Str(p.Value, "family");
                            table = new NatTable($"nftables {family} {Str(p.Value, "name")}", family == "ip6" ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork);
                            break;
                        case "chain":
                            NatTable t = table ?? throw new NatParseException("a chain before its table");
                            string name = Str(p.Value, "name");
                            t.Chains.TryAdd(name, new NatChain(name));
                            if (p.Value.TryGetProperty("hook", out JsonElement hook))
                            {
                                NatHook h = hook.GetString() switch
                                {
                                    "prerouting" => NatHook.Prerouting,
                                    "input" => NatHook.Input,
                                    "forward" => NatHook.Forward,
                                    "output" => NatHook.Output,
                                    "postrouting" => NatHook.Postrouting,
                                    var other => throw new NatParseException($"chain {name}: hook '{other}' is not an IP hook"),
                                };
                                int prio = p.Value.TryGetProperty("prio", out JsonElement pr) && pr.TryGetInt32(out int v) ? v : 0;
                                bool drop = p.Value.TryGetProperty("policy", out JsonElement pol) && pol.GetString() == "drop";
                                t.BaseChains.Add(new NatBaseChain(name, h, prio, p.Value.TryGetProperty("type", out JsonElement ty) && ty.GetString() == "nat", drop));
                            }
                            break;
                        case "map" or "set":
                            ReadSet(table ?? throw new NatParseException($"a {p.Name} before its table"), p.Value, p.Name == "map");
                            break;
                        case "rule":
                            break;
                        default:
                            break;
                    }
                }
            }
            if (table is null)
            {
                throw new NatParseException("no table in the nft JSON");
            }
            foreach (JsonElement item in items.EnumerateArray())
            {
                if (!item.TryGetProperty("rule", out JsonElement r))
                {
                    continue;
                }
                string chain = Str(r, "chain");
                if (!table.Chains.TryGetValue(chain, out NatChain? c))
                {
                    throw new NatParseException($"a rule for chain {chain}, which is not listed");
                }
                c.Rules.Add(ReadRule(table, chain, c.Rules.Count + 1, r));
            }
            return table;
        }
    }

    private static string Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new NatParseException($"an object has no string \"{name}\"");

    private static void ReadSet(NatTable table, JsonElement e, bool map)
    {
        string name = Str(e, "name");
        var m = new NatMap(name);
        var set = new HashSet<string>(StringComparer.Ordinal);
        if (e.TryGetProperty("elem", out JsonElement elems))
        {
            foreach (JsonElement el in elems.EnumerateArray())
            {
                JsonElement key = map ? el[0] : el;
                string? comment = null;
                if (key.ValueKind == JsonValueKind.Object && key.TryGetProperty("elem", out JsonElement wrapped))
                {
                    comment = wrapped.TryGetProperty("comment", out JsonElement cm) ? cm.GetString() : null;
                    key = wrapped.GetProperty("val");
                }
                string? k = KeyText(key);
                if (k is null)
                {
                    m.Unreadable ??= key.GetRawText();
                    continue;
                }
                if (map)
                {
                    m.Elements[k] = ReadVerdict(table, el[1]);
                    if (comment is not null)
                    {
                        m.Comments[k] = comment;
                    }
                }
                else
                {
                    set.Add(k);
                }
            }
        }
        if (map)
        {
            table.Maps[name] = m;
        }
        else if (m.Unreadable is null)
        {
            table.Sets[name] = set;
        }
    }

    /// <summary>An element key as the evaluator formats packet fields ("10.96.0.10 . tcp . 80"), or null for ranges and prefixes.</summary>
    private static string? KeyText(JsonElement key)
    {
        if (key.ValueKind == JsonValueKind.Object && key.TryGetProperty("concat", out JsonElement parts))
        {
            var list = new List<string>();
            foreach (JsonElement part in parts.EnumerateArray())
            {
                if (Scalar(part) is not { } s)
                {
                    return null;
                }
                list.Add(s);
            }
            return string.Join(" . ", list);
        }
        return Scalar(key);
    }

    private static string? Scalar(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.Number => v.GetInt64().ToString(CultureInfo.InvariantCulture),
        JsonValueKind.String => IPAddress.TryParse(v.GetString(), out IPAddress? a) ? a.ToString() : IptablesParser.Protocol(v.GetString()!),
        _ => null,
    };

    private static NatAction ReadVerdict(NatTable table, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Object)
        {
            foreach (JsonProperty p in v.EnumerateObject())
            {
                switch (p.Name)
                {
                    case "jump" or "goto":
                        return new JumpAction(Str(p.Value, "target"), p.Name == "goto");
                    case "accept":
                        return new VerdictAction(NatVerdictKind.Accept);
                    case "drop":
                        return new VerdictAction(NatVerdictKind.Drop);
                    case "return":
                        return new VerdictAction(NatVerdictKind.Return);
                    case "reject":
                        return new VerdictAction(NatVerdictKind.Reject, p.Value.ValueKind == JsonValueKind.Object && p.Value.TryGetProperty("expr", out JsonElement x) ? x.ToString() : "port-unreachable");
                    default:
                        break;
                }
            }
        }
        return new UnknownAction(v.GetRawText());
    }

    private static NatRule ReadRule(NatTable table, string chain, int number, JsonElement r)
    {
        string? comment = r.TryGetProperty("comment", out JsonElement c) ? c.GetString() : null;
        var matches = new List<NatMatch>();
        NatAction action = new NoAction();
        var text = new List<string>();
        if (!r.TryGetProperty("expr", out JsonElement exprs) || exprs.ValueKind != JsonValueKind.Array)
        {
            throw new NatParseException($"a rule of chain {chain} has no expr array");
        }
        foreach (JsonElement e in exprs.EnumerateArray())
        {
            foreach (JsonProperty p in e.EnumerateObject())
            {
                switch (p.Name)
                {
                    case "match":
                        NatMatch m = ReadMatch(table, p.Value);
                        matches.Add(m);
                        text.Add(MatchText(p.Value));
                        break;
                    case "counter" or "log":
                        break;
                    case "jump" or "goto" or "accept" or "drop" or "return" or "reject":
                        action = ReadVerdict(table, e);
                        text.Add(NatEvaluator.Describe(action));
                        break;
                    case "dnat":
                        action = p.Value.TryGetProperty("addr", out JsonElement addr) && addr.ValueKind == JsonValueKind.String && IPAddress.TryParse(addr.GetString(), out IPAddress? a)
                            ? new DnatAction(a, p.Value.TryGetProperty("port", out JsonElement port) && port.TryGetInt32(out int pn) ? pn : null)
                            : new UnknownAction("dnat " + p.Value.GetRawText());
                        text.Add(NatEvaluator.Describe(action));
                        break;
                    case "masquerade":
                        action = new MasqueradeAction();
                        text.Add("masquerade");
                        break;
                    case "mangle":
                        action = ReadMangle(p.Value);
                        text.Add(action is MarkAction mk ? $"mark set (mark & 0x{mk.And:x}) ^ 0x{mk.Xor:x}" : ((UnknownAction)action).Text);
                        break;
                    case "vmap":
                        action = ReadVmap(table, p.Value);
                        text.Add(action is UnknownAction u ? u.Text : VmapText(p.Value));
                        break;
                    default:
                        action = new UnknownAction($"{p.Name} {p.Value.GetRawText()}");
                        text.Add(p.Name);
                        break;
                }
            }
        }
        return new NatRule(chain, number, string.Join(' ', text), comment, matches, action);
    }

    private static string VmapText(JsonElement v) =>
        v.GetProperty("data").ValueKind == JsonValueKind.String ? $"{ExprText(v.GetProperty("key"))} vmap {v.GetProperty("data").GetString()}" : $"{ExprText(v.GetProperty("key"))} vmap {{...}}";

    private static string MatchText(JsonElement m) =>
        $"{ExprText(m.GetProperty("left"))} {(m.TryGetProperty("op", out JsonElement op) && op.GetString() is "!=" ? "!= " : "")}{ExprText(m.GetProperty("right"))}";

    private static string ExprText(JsonElement e)
    {
        if (e.ValueKind is JsonValueKind.String or JsonValueKind.Number)
        {
            return e.ToString();
        }
        if (e.ValueKind == JsonValueKind.Object)
        {
            foreach (JsonProperty p in e.EnumerateObject())
            {
                return p.Name switch
                {
                    "payload" => $"{Str(p.Value, "protocol")} {Str(p.Value, "field")}",
                    "meta" => p.Value.GetProperty("key").GetString() is "mark" ? "mark" : "meta " + p.Value.GetProperty("key").GetString(),
                    "ct" => "ct " + p.Value.GetProperty("key").GetString(),
                    "fib" => $"fib {string.Join(' ', p.Value.GetProperty("flags").ValueKind == JsonValueKind.Array ? p.Value.GetProperty("flags").EnumerateArray().Select(x => x.GetString()) : [p.Value.GetProperty("flags").GetString()])} {p.Value.GetProperty("result").GetString()}",
                    "concat" => string.Join(" . ", p.Value.EnumerateArray().Select(ExprText)),
                    "prefix" => $"{p.Value.GetProperty("addr")}/{p.Value.GetProperty("len")}",
                    "&" => $"{ExprText(p.Value[0])} and {ExprText(p.Value[1])}",
                    "numgen" => $"numgen {p.Value.GetProperty("mode")} mod {p.Value.GetProperty("mod")}",
                    "set" => "{ " + string.Join(", ", p.Value.EnumerateArray().Select(ExprText)) + " }",
                    _ => p.Name,
                };
            }
        }
        return e.GetRawText();
    }

    private static NatAction ReadMangle(JsonElement m)
    {
        // mark set mark or|xor|and X, mark set X
        if (m.TryGetProperty("key", out JsonElement key) && key.TryGetProperty("meta", out JsonElement meta) && meta.GetProperty("key").GetString() == "mark" && m.TryGetProperty("value", out JsonElement value))
        {
            if (value.ValueKind == JsonValueKind.Number && value.TryGetUInt32(out uint set))
            {
                return new MarkAction(0, set);
            }
            if (value.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty op in value.EnumerateObject())
                {
                    if (op.Value.ValueKind == JsonValueKind.Array && op.Value.GetArrayLength() == 2 && op.Value[1].TryGetUInt32(out uint x)
                        && op.Value[0].TryGetProperty("meta", out JsonElement mm) && mm.GetProperty("key").GetString() == "mark")
                    {
                        switch (op.Name)
                        {
                            case "|":
                                return new MarkAction(~x, x);
                            case "^":
                                return new MarkAction(uint.MaxValue, x);
                            case "&":
                                return new MarkAction(x, 0);
                            default:
                                break;
                        }
                    }
                }
            }
        }
        return new UnknownAction("mangle " + m.GetRawText());
    }

    private static NatAction ReadVmap(NatTable table, JsonElement v)
    {
        JsonElement key = v.GetProperty("key");
        JsonElement data = v.GetProperty("data");
        if (key.TryGetProperty("numgen", out JsonElement ng))
        {
            if (ng.GetProperty("mode").GetString() != "random" || !ng.GetProperty("mod").TryGetInt32(out int mod) || mod <= 0
                || ng.TryGetProperty("offset", out JsonElement off) && off.GetInt32() != 0 || data.ValueKind != JsonValueKind.Object || !data.TryGetProperty("set", out JsonElement arms))
            {
                return new UnknownAction("numgen " + ng.GetRawText());
            }
            var elements = new Dictionary<int, NatAction>();
            foreach (JsonElement arm in arms.EnumerateArray())
            {
                if (arm[0].ValueKind != JsonValueKind.Number)
                {
                    return new UnknownAction($"numgen vmap element {arm[0].GetRawText()} (a range)");
                }
                elements[arm[0].GetInt32()] = ReadVerdict(table, arm[1]);
            }
            return new NumgenAction(mod, elements);
        }
        List<KeyPart>? parts = KeyOf(key);
        if (parts is null)
        {
            return new UnknownAction($"vmap keyed by {ExprText(key)}");
        }
        if (data.ValueKind == JsonValueKind.String && data.GetString()!.StartsWith('@'))
        {
            return new MapAction(parts, data.GetString()![1..], null) { Table = table };
        }
        if (data.ValueKind == JsonValueKind.Object && data.TryGetProperty("set", out JsonElement inline))
        {
            var m = new NatMap("(inline)");
            foreach (JsonElement el in inline.EnumerateArray())
            {
                if (KeyText(el[0]) is { } k)
                {
                    m.Elements[k] = ReadVerdict(table, el[1]);
                }
                else
                {
                    m.Unreadable ??= el[0].GetRawText();
                }
            }
            return new MapAction(parts, null, m);
        }
        return new UnknownAction($"vmap {data.GetRawText()}");
    }

    private static List<KeyPart>? KeyOf(JsonElement key)
    {
        IEnumerable<JsonElement> items = key.TryGetProperty("concat", out JsonElement c) ? c.EnumerateArray() : [key];
        var parts = new List<KeyPart>();
        foreach (JsonElement i in items)
        {
            KeyPart? k = Field(i);
            if (k is null)
            {
                return null;
            }
            parts.Add(k.Value);
        }
        return parts;
    }

    private static KeyPart? Field(JsonElement e)
    {
        if (e.TryGetProperty("payload", out JsonElement p))
        {
            string field = Str(p, "field");
            string proto = Str(p, "protocol");
            return (proto, field) switch
            {
                ("ip" or "ip6", "daddr") => KeyPart.DestinationAddress,
                ("ip" or "ip6", "saddr") => KeyPart.SourceAddress,
                ("th" or "tcp" or "udp" or "sctp", "dport") => KeyPart.DestinationPort,
                _ => null,
            };
        }
        return e.TryGetProperty("meta", out JsonElement m) && m.GetProperty("key").GetString() == "l4proto" ? KeyPart.Protocol : null;
    }

    private static NatMatch ReadMatch(NatTable table, JsonElement m)
    {
        string op = m.TryGetProperty("op", out JsonElement o) ? o.GetString() ?? "==" : "==";
        bool neg = op == "!=";
        JsonElement left = m.GetProperty("left");
        JsonElement right = m.GetProperty("right");
        string text = MatchText(m);
        if (op is not ("==" or "!=" or "in"))
        {
            return new UnknownMatch(text);
        }
        // A field compared with an address, prefix, protocol or port.
        if (KeyOf(left) is { } parts)
        {
            if (right.ValueKind == JsonValueKind.String && right.GetString()!.StartsWith('@'))
            {
                return new SetMatch(parts, right.GetString()![1..], neg) { Table = table };
            }
            if (parts.Count == 1)
            {
                switch (parts[0])
                {
                    case KeyPart.DestinationAddress or KeyPart.SourceAddress:
                        IReadOnlyList<IPNetwork>? nets = Networks(right);
                        return nets is null ? new UnknownMatch(text) : new AddressMatch(parts[0] == KeyPart.SourceAddress, nets, neg);
                    case KeyPart.Protocol:
                        return Scalar(right) is { } proto ? new ProtocolMatch(proto, neg) : new UnknownMatch(text);
                    case KeyPart.DestinationPort:
                        // tcp dport 80 implies meta l4proto tcp.
                        return right.TryGetInt32(out int port) ? Implied(left, new PortMatch(false, [(port, port)], neg)) : new UnknownMatch(text);
                    default:
                        break;
                }
            }
            return new UnknownMatch(text);
        }
        if (left.TryGetProperty("payload", out JsonElement pl) && Str(pl, "field") == "sport" && right.TryGetInt32(out int sport))
        {
            return new PortMatch(true, [(sport, sport)], neg);
        }
        if (left.TryGetProperty("ct", out JsonElement ct) && ct.GetProperty("key").GetString() == "state")
        {
            IEnumerable<string> states = right.ValueKind == JsonValueKind.String ? [right.GetString()!]
                : right.ValueKind == JsonValueKind.Array ? right.EnumerateArray().Select(x => x.GetString() ?? "")
                : right.TryGetProperty("set", out JsonElement s) ? s.EnumerateArray().Select(x => x.GetString() ?? "") : [];
            return new ConntrackStateMatch([.. states], neg);
        }
        if (left.TryGetProperty("fib", out JsonElement fib) && fib.GetProperty("result").GetString() == "type")
        {
            JsonElement flags = fib.GetProperty("flags");
            string[] fl = flags.ValueKind == JsonValueKind.Array ? [.. flags.EnumerateArray().Select(x => x.GetString() ?? "")] : [flags.GetString() ?? ""];
            if (fl.Length == 1 && fl[0] is "daddr" or "saddr" && right.ValueKind == JsonValueKind.String)
            {
                return new AddressTypeMatch(fl[0] == "saddr", [right.GetString()!.ToUpperInvariant()], neg);
            }
            return new UnknownMatch(text);
        }
        if (left.TryGetProperty("&", out JsonElement and) && and.GetArrayLength() == 2 && and[0].TryGetProperty("meta", out JsonElement mm) && mm.GetProperty("key").GetString() == "mark"
            && and[1].TryGetUInt32(out uint mask) && right.TryGetUInt32(out uint value))
        {
            return new MarkMatch(value, mask, neg);
        }
        if (left.TryGetProperty("meta", out JsonElement meta) && meta.GetProperty("key").GetString() == "mark" && right.TryGetUInt32(out uint mark))
        {
            return new MarkMatch(mark, uint.MaxValue, neg);
        }
        if (left.TryGetProperty("meta", out JsonElement iif) && iif.GetProperty("key").GetString() == "iifname" && right.ValueKind == JsonValueKind.String)
        {
            string n = right.GetString()!;
            return new InterfaceMatch(n.EndsWith('*') ? n[..^1] + "+" : n, neg);
        }
        return new UnknownMatch(text);
    }

    /// <summary>"tcp dport 80": the port and, implied, the protocol.</summary>
    private static NatMatch Implied(JsonElement left, PortMatch port)
    {
        if (left.TryGetProperty("payload", out JsonElement p) && Str(p, "protocol") is "tcp" or "udp" or "sctp" && !port.Negated)
        {
            return new AllMatch([new ProtocolMatch(Str(p, "protocol"), false), port]);
        }
        return port;
    }

    private static IReadOnlyList<IPNetwork>? Networks(JsonElement right)
    {
        if (right.ValueKind == JsonValueKind.String && IPAddress.TryParse(right.GetString(), out IPAddress? a))
        {
            return [new IPNetwork(a, a.AddressFamily == AddressFamily.InterNetworkV6 ? 128 : 32)];
        }
        if (right.ValueKind == JsonValueKind.Object && right.TryGetProperty("prefix", out JsonElement p) && IPAddress.TryParse(p.GetProperty("addr").GetString(), out IPAddress? pa)
            && p.GetProperty("len").TryGetInt32(out int len))
        {
            return [new IPNetwork(pa, len)];
        }
        return null;
    }
}

/// <summary>Several conditions that must all hold (nft's "tcp dport 80": protocol and port).</summary>
public sealed record AllMatch(IReadOnlyList<NatMatch> Parts) : NatMatch(false)
{
    protected override Tri Test(NatState p, INatContext ctx)
    {
        Tri r = Tri.True;
        foreach (NatMatch m in Parts)
        {
            Tri t = m.Eval(p, ctx);
            if (t == Tri.False)
            {
                return Tri.False;
            }
            if (t == Tri.Unknown)
            {
                r = Tri.Unknown;
            }
        }
        return r;
    }
}
