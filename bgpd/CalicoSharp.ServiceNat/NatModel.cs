using System.Net;
using System.Net.Sockets;

namespace CalicoSharp.ServiceNat;

/// <summary>A three-valued answer: a rule's condition holds, does not, or cannot be decided from what is known.</summary>
public enum Tri
{
    False,
    True,
    Unknown,
}

/// <summary>Netfilter's hooks, in the order a packet meets them.</summary>
public enum NatHook
{
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

/// <summary>What the evaluator knows about the node whose rules it reads.</summary>
public interface INatContext
{
    /// <summary>Whether the address is one of the node's own (the kernel's "local" type: addrtype LOCAL, fib type local).</summary>
    bool IsLocalAddress(IPAddress address);
}

/// <summary>The first packet of a connection, as far as NAT rules look at it.</summary>
public sealed record NatPacket(IPAddress Source, IPAddress Destination, string Protocol, int DestinationPort)
{
    public int SourcePort { get; init; } = 40000;

    /// <summary>The interface it arrives on, when known (a pod's host-side veth); null when not known.</summary>
    public string? InInterface { get; init; }

    public AddressFamily Family => Destination.AddressFamily;
}

/// <summary>A base chain: where netfilter enters a table's rules.</summary>
public sealed record NatBaseChain(string Chain, NatHook Hook, int Priority, bool Nat, bool PolicyDrop);

/// <summary>
/// One table's rules, parsed: an iptables table (nat, filter) from iptables-save, or an nftables table from
/// <c>nft -j list table</c>. <see cref="Name"/> says where it came from ("iptables nat", "nftables ip kube-proxy").
/// </summary>
public sealed class NatTable(string name, AddressFamily family)
{
    public string Name { get; } = name;

    public AddressFamily Family { get; } = family;

    public Dictionary<string, NatChain> Chains { get; } = new(StringComparer.Ordinal);

    public List<NatBaseChain> BaseChains { get; } = [];

    /// <summary>nftables verdict maps by name: canonical key ("10.96.0.10 . tcp . 80") → verdict.</summary>
    public Dictionary<string, NatMap> Maps { get; } = new(StringComparer.Ordinal);

    /// <summary>nftables sets by name: canonical keys.</summary>
    public Dictionary<string, HashSet<string>> Sets { get; } = new(StringComparer.Ordinal);

    public int RuleCount => Chains.Values.Sum(c => c.Count);

    /// <summary>For a table read chain by chain: reads a chain not read yet into <see cref="Chains"/>, or says why it does
    /// not exist. Null for a table read whole (then a chain not in <see cref="Chains"/> does not exist).</summary>
    public Func<string, string?>? ChainSource { get; init; }

    private Dictionary<string, string>? _missing;

    /// <summary>Whether <paramref name="name"/> may be a chain of this table (a jump target): it was read, or the table is
    /// read chain by chain and will look for it when a packet jumps there.</summary>
    public bool MayHaveChain(string name) => Chains.ContainsKey(name) || (ChainSource is not null && _missing?.ContainsKey(name) != true);

    /// <summary>The chain, read now if the table is read chain by chain; else null with why it is not there.</summary>
    public NatChain? Chain(string name, out string missing)
    {
        missing = "";
        if (Chains.TryGetValue(name, out NatChain? chain))
        {
            return chain;
        }
        if (_missing?.TryGetValue(name, out string? why) == true)
        {
            missing = why;
            return null;
        }
        string? error = ChainSource?.Invoke(name);
        if (Chains.TryGetValue(name, out chain))
        {
            return chain;
        }
        missing = error ?? $"chain {name} does not exist in {Name}";
        (_missing ??= new(StringComparer.Ordinal))[name] = missing;
        return null;
    }
}

/// <summary>A chain. Rules read from text may be kept as lines until the chain is first entered (a node with thousands
/// of Services has tens of thousands of rules, of which a trace enters a handful of chains).</summary>
public sealed class NatChain(string name)
{
    private readonly List<NatRule> _rules = [];
    private List<(int Line, string Text)>? _pending;
    private Action<NatChain, List<(int Line, string Text)>>? _read;

    public string Name { get; } = name;

    /// <summary>The rules, read now if they were deferred (a line that cannot be read throws <see cref="NatParseException"/> with its number).</summary>
    public List<NatRule> Rules
    {
        get
        {
            if (_pending is { } p)
            {
                _pending = null;
                _read!(this, p);
            }
            return _rules;
        }
    }

    /// <summary>How many rules the chain has, without reading deferred ones.</summary>
    public int Count => _rules.Count + (_pending?.Count ?? 0);

    internal void Defer(int line, string text, Action<NatChain, List<(int Line, string Text)>> read)
    {
        if (_pending is null && _rules.Count > 0)
        {
            // Rules already read stay first; a deferred line after them is read with the rest.
            _pending = [];
        }
        (_pending ??= []).Add((line, text));
        _read = read;
    }
}

/// <summary>An nftables verdict map: canonical key → action, and each element's comment.</summary>
public sealed class NatMap(string name)
{
    public string Name { get; } = name;

    public Dictionary<string, NatAction> Elements { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, string> Comments { get; } = new(StringComparer.Ordinal);

    /// <summary>Set when an element could not be read exactly (a range, an interval): lookups are then undecidable.</summary>
    public string? Unreadable { get; set; }
}

/// <summary>One rule: its conditions (all must hold) and what it does. <see cref="Text"/> is the rule as read.</summary>
public sealed record NatRule(string Chain, int Number, string Text, string? Comment, IReadOnlyList<NatMatch> Matches, NatAction Action);

/// <summary>A condition of a rule. Every kind the evaluator cannot decide is an <see cref="UnknownMatch"/>.</summary>
public abstract record NatMatch(bool Negated)
{
    public Tri Eval(NatState p, INatContext ctx)
    {
        Tri t = Test(p, ctx);
        return t == Tri.Unknown || !Negated ? t : t == Tri.True ? Tri.False : Tri.True;
    }

    protected abstract Tri Test(NatState p, INatContext ctx);

    protected static Tri Of(bool b) => b ? Tri.True : Tri.False;
}

/// <summary>-s / -d, ip saddr / ip daddr: the address is in one of the prefixes.</summary>
public sealed record AddressMatch(bool Source, IReadOnlyList<IPNetwork> Networks, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx)
    {
        IPAddress a = Source ? p.Source : p.Destination;
        return Of(Networks.Any(n => n.BaseAddress.AddressFamily == a.AddressFamily && n.Contains(a)));
    }
}

/// <summary>-p / meta l4proto.</summary>
public sealed record ProtocolMatch(string Protocol, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx) => Of(Protocol == "all" || string.Equals(Protocol, p.Protocol, StringComparison.Ordinal));
}

/// <summary>--dport / --sport (a port, a range, a list), th dport.</summary>
public sealed record PortMatch(bool Source, IReadOnlyList<(int Low, int High)> Ranges, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx)
    {
        int port = Source ? p.SourcePort : p.DestinationPort;
        return Of(Ranges.Any(r => port >= r.Low && port <= r.High));
    }
}

/// <summary>-m addrtype --src-type/--dst-type, fib saddr/daddr type: only LOCAL is decidable (the node's own addresses).</summary>
public sealed record AddressTypeMatch(bool Source, IReadOnlyList<string> Types, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx)
    {
        if (Types.Any(t => !string.Equals(t, "LOCAL", StringComparison.OrdinalIgnoreCase)))
        {
            return Tri.Unknown;
        }
        return Of(ctx.IsLocalAddress(Source ? p.Source : p.Destination));
    }
}

/// <summary>-m mark --mark value/mask, nft "mark and mask == value".</summary>
public sealed record MarkMatch(uint Value, uint Mask, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx) => Of((p.Mark & Mask) == Value);
}

/// <summary>-m conntrack --ctstate, ct state: the first packet of a connection is NEW (and DNAT once it was rewritten).</summary>
public sealed record ConntrackStateMatch(IReadOnlyList<string> States, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx)
    {
        foreach (string s in States)
        {
            switch (s.ToUpperInvariant())
            {
                case "NEW":
                    return Tri.True;
                case "DNAT" when p.Dnat:
                    return Tri.True;
                case "DNAT" or "SNAT" or "ESTABLISHED" or "RELATED" or "INVALID" or "UNTRACKED":
                    break;
                default:
                    return Tri.Unknown;
            }
        }
        return Tri.False;
    }
}

/// <summary>-i: the interface the packet arrived on; undecidable unless the caller knows it ("cali+" matches by prefix).</summary>
public sealed record InterfaceMatch(string Name, bool Negated) : NatMatch(Negated)
{
    protected override Tri Test(NatState p, INatContext ctx) =>
        p.InInterface is not { } i ? Tri.Unknown
        : Name.EndsWith('+') ? Of(i.StartsWith(Name[..^1], StringComparison.Ordinal)) : Of(i == Name);
}

/// <summary>-m statistic --mode random --probability p: the evaluator splits the packet's chances here.</summary>
public sealed record ProbabilityMatch(double Probability) : NatMatch(false)
{
    protected override Tri Test(NatState p, INatContext ctx) => Tri.True;
}

/// <summary>nftables: a concatenation of packet fields looked up in a named set.</summary>
public sealed record SetMatch(IReadOnlyList<KeyPart> Key, string Set, bool Negated) : NatMatch(Negated)
{
    public NatTable? Table { get; init; }

    protected override Tri Test(NatState p, INatContext ctx) =>
        Table is null || !Table.Sets.TryGetValue(Set, out HashSet<string>? set) ? Tri.Unknown : Of(set.Contains(KeyParts.Format(Key, p)));
}

/// <summary>A condition this evaluator does not decide (session affinity, ipsets, an unknown module, ...).</summary>
public sealed record UnknownMatch(string Text) : NatMatch(false)
{
    protected override Tri Test(NatState p, INatContext ctx) => Tri.Unknown;
}

/// <summary>The packet fields an nftables concatenation is made of.</summary>
public enum KeyPart
{
    DestinationAddress,
    SourceAddress,
    Protocol,
    DestinationPort,
}

public static class KeyParts
{
    public static string Format(IReadOnlyList<KeyPart> key, NatState p) => string.Join(" . ", key.Select(k => k switch
    {
        KeyPart.DestinationAddress => p.Destination.ToString(),
        KeyPart.SourceAddress => p.Source.ToString(),
        KeyPart.Protocol => p.Protocol,
        _ => p.DestinationPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
    }));
}

/// <summary>What a rule does once it matches.</summary>
public abstract record NatAction;

public sealed record JumpAction(string Target, bool Goto) : NatAction;

public sealed record VerdictAction(NatVerdictKind Kind, string Detail = "") : NatAction;

public sealed record DnatAction(IPAddress Address, int? Port) : NatAction;

/// <summary>MARK: mark = (mark AND And) XOR Xor (iptables' --set-xmark form; --or-mark, --xor-mark and nft's mark set map onto it).</summary>
public sealed record MarkAction(uint And, uint Xor) : NatAction;

public sealed record MasqueradeAction : NatAction;

/// <summary>No target (a rule that only counts or comments).</summary>
public sealed record NoAction : NatAction;

/// <summary>nftables "... vmap @map" (a named map) or "vmap { ... }" (inline elements).</summary>
public sealed record MapAction(IReadOnlyList<KeyPart> Key, string? MapName, NatMap? Inline) : NatAction
{
    public NatTable? Table { get; init; }
}

/// <summary>nftables "numgen random mod N vmap { 0 : goto a, ... }": each element is taken with chance 1/N.</summary>
public sealed record NumgenAction(int Modulus, IReadOnlyDictionary<int, NatAction> Elements) : NatAction;

public sealed record UnknownAction(string Text) : NatAction;

public enum NatVerdictKind
{
    Accept,
    Drop,
    Reject,
    Return,
}

/// <summary>A packet on its way through the rules: its fields now, the mark, whether it was rewritten.</summary>
public sealed record NatState(IPAddress Source, IPAddress Destination, string Protocol, int DestinationPort, int SourcePort, string? InInterface, uint Mark, bool Dnat);

/// <summary>Thrown for rule-set text that cannot be read at all (not for rules that are merely not understood).</summary>
public sealed class NatParseException(string message) : Exception(message);
