using System.Net;

namespace CalicoSharp.ServiceNat;

/// <summary>A rule the packet went through (a jump taken, a rewrite, a verdict), for the chain path.</summary>
public sealed record NatStep(string Table, string Chain, int Rule, string Text, string? Comment, string? Target);

/// <summary>Where a packet's branch ends up after the node's rules.</summary>
public enum NatFate
{
    /// <summary>Routed on (to the possibly rewritten destination).</summary>
    Forwarded,

    /// <summary>Delivered to a process on the node itself.</summary>
    DeliveredLocally,

    Dropped,
    Rejected,

    /// <summary>A rule on the way could not be evaluated: nothing after it is known.</summary>
    Unchecked,
}

/// <summary>
/// One way the packet can go, with its chance: the destination after DNAT, whether it is masqueraded (and which rule
/// asked for it), the rules it went through, and where it ends.
/// </summary>
public sealed record NatOutcome(double Probability, NatFate Fate, NatState Packet, IReadOnlyList<NatStep> Path, NatStep? MarkedBy, NatStep? MasqueradedBy, NatStep? DecidedBy, string? Unchecked);

/// <summary>
/// Walks a packet through the rules of one node as netfilter does — hook by hook, base chains by priority, jumps,
/// gotos and returns, DNAT ending a chain, MARK, MASQUERADE — splitting it at each <c>-m statistic --mode random</c>
/// and <c>numgen random mod N</c> into weighted branches. A rule whose condition it cannot decide stops that branch
/// as <see cref="NatFate.Unchecked"/>, naming the rule.
/// </summary>
public static class NatEvaluator
{
    private const int MaxDepth = 64;

    /// <summary>Where the packet comes from: arriving on an interface (a pod, another host), or made by the node itself.</summary>
    public static IReadOnlyList<NatOutcome> Evaluate(IReadOnlyList<NatTable> tables, NatPacket packet, bool fromNode, INatContext context)
    {
        ArgumentNullException.ThrowIfNull(tables);
        ArgumentNullException.ThrowIfNull(packet);
        ArgumentNullException.ThrowIfNull(context);
        var start = new Branch(new NatState(packet.Source, packet.Destination, packet.Protocol, packet.DestinationPort, packet.SourcePort, packet.InInterface, 0, false), 1.0, [], null, null, null);
        List<Branch> live = [start];
        var done = new List<NatOutcome>();
        NatHook[] first = fromNode ? [NatHook.Output] : [NatHook.Prerouting];
        live = RunHook(tables, first[0], live, done, context);
        var next = new List<Branch>();
        foreach (Branch b in live)
        {
            bool local = context.IsLocalAddress(b.State.Destination);
            if (fromNode)
            {
                if (local)
                {
                    done.Add(b.End(NatFate.DeliveredLocally, null, null));
                }
                else
                {
                    next.Add(b);
                }
                continue;
            }
            foreach (Branch after in RunHook(tables, local ? NatHook.Input : NatHook.Forward, [b], done, context))
            {
                if (local)
                {
                    done.Add(after.End(NatFate.DeliveredLocally, null, null));
                }
                else
                {
                    next.Add(after);
                }
            }
        }
        foreach (Branch b in RunHook(tables, NatHook.Postrouting, next, done, context))
        {
            done.Add(b.End(NatFate.Forwarded, null, null));
        }
        return done;
    }

    private sealed record Branch(NatState State, double Probability, IReadOnlyList<NatStep> Path, NatStep? MarkedBy, NatStep? MasqueradedBy, NatStep? Decided)
    {
        public Branch Step(NatStep s) => this with { Path = [.. Path, s] };

        public NatOutcome End(NatFate fate, NatStep? by, string? why) => new(Probability, fate, State, Path, MarkedBy, MasqueradedBy, by ?? Decided, why);
    }

    private enum Result
    {
        /// <summary>The chain ran to its end or returned.</summary>
        Continue,

        /// <summary>Accepted (or NAT done): the next base chain runs.</summary>
        Accept,

        /// <summary>The branch ended (dropped, rejected, unchecked): it is in the done list.</summary>
        Ended,
    }

    private static List<Branch> RunHook(IReadOnlyList<NatTable> tables, NatHook hook, List<Branch> branches, List<NatOutcome> done, INatContext ctx)
    {
        var chains = tables.SelectMany(t => t.BaseChains.Where(b => b.Hook == hook).Select(b => (Table: t, Base: b)))
            .OrderBy(x => x.Base.Priority).ToList();
        foreach ((NatTable table, NatBaseChain bc) in chains)
        {
            var next = new List<Branch>();
            foreach (Branch b in branches)
            {
                // NAT happens once per connection and hook: after a DNAT, later nat chains of the hook are skipped.
                if (bc.Nat && b.State.Dnat && hook is NatHook.Prerouting or NatHook.Output)
                {
                    next.Add(b);
                    continue;
                }
                if (bc.Nat && b.MasqueradedBy is not null && hook == NatHook.Postrouting)
                {
                    next.Add(b);
                    continue;
                }
                var results = new List<(Branch, Result)>();
                RunChain(table, bc.Chain, b, 0, results, done, ctx);
                foreach ((Branch r, Result res) in results)
                {
                    if (res == Result.Continue && bc.PolicyDrop)
                    {
                        done.Add(r.End(NatFate.Dropped, new NatStep(table.Name, bc.Chain, 0, $"policy DROP of {bc.Chain}", null, null), null));
                    }
                    else if (res != Result.Ended)
                    {
                        next.Add(r);
                    }
                }
            }
            branches = next;
        }
        return branches;
    }

    private static void RunChain(NatTable table, string name, Branch b, int depth, List<(Branch, Result)> results, List<NatOutcome> done, INatContext ctx)
    {
        if (table.Chain(name, out string missing) is not { } chain)
        {
            done.Add(b.End(NatFate.Unchecked, null, missing));
            results.Add((b, Result.Ended));
            return;
        }
        if (depth > MaxDepth)
        {
            done.Add(b.End(NatFate.Unchecked, null, $"more than {MaxDepth} nested jumps at chain {name} (a loop?)"));
            results.Add((b, Result.Ended));
            return;
        }
        RunFrom(table, chain, 0, b, depth, results, done, ctx);
    }

    private static void RunFrom(NatTable table, NatChain chain, int start, Branch b, int depth, List<(Branch, Result)> results, List<NatOutcome> done, INatContext ctx)
    {
        for (int i = start; i < chain.Rules.Count; i++)
        {
            NatRule rule = chain.Rules[i];
            bool no = false;
            NatMatch? unknown = null;
            double p = 1;
            foreach (NatMatch m in rule.Matches)
            {
                if (m is ProbabilityMatch pm)
                {
                    p *= pm.Probability;
                    continue;
                }
                Tri t = m.Eval(b.State, ctx);
                if (t == Tri.False)
                {
                    no = true;
                    break;
                }
                if (t == Tri.Unknown)
                {
                    unknown ??= m;
                }
            }
            if (no || p == 0)
            {
                continue;
            }
            var step = new NatStep(table.Name, chain.Name, rule.Number, rule.Text, rule.Comment, (rule.Action as JumpAction)?.Target);
            if (unknown is not null)
            {
                string what = unknown is UnknownMatch u ? u.Text : unknown.ToString();
                done.Add(b.End(NatFate.Unchecked, step, $"{table.Name} chain {chain.Name} rule {rule.Number} ({rule.Text}): its condition '{what}' cannot be evaluated here"));
                results.Add((b, Result.Ended));
                return;
            }
            if (p < 1)
            {
                // -m statistic: this rule takes the packet with chance p; the rest goes on to the next rule.
                Apply(table, chain, i, rule.Action, step, b with { Probability = b.Probability * p }, depth, results, done, ctx);
                b = b with { Probability = b.Probability * (1 - p) };
                continue;
            }
            if (!Apply(table, chain, i, rule.Action, step, b, depth, results, done, ctx, out Branch? goOn))
            {
                return;
            }
            b = goOn!;
        }
        results.Add((b, Result.Continue));
    }

    private static void Apply(NatTable table, NatChain chain, int i, NatAction action, NatStep step, Branch b, int depth, List<(Branch, Result)> results, List<NatOutcome> done, INatContext ctx)
    {
        if (Apply(table, chain, i, action, step, b, depth, results, done, ctx, out Branch? goOn))
        {
            RunFrom(table, chain, i + 1, goOn!, depth, results, done, ctx);
        }
    }

    /// <summary>Runs one action; true (with the branch) when the chain goes on with the next rule.</summary>
    private static bool Apply(NatTable table, NatChain chain, int i, NatAction action, NatStep step, Branch b, int depth, List<(Branch, Result)> results, List<NatOutcome> done, INatContext ctx, out Branch? goOn)
    {
        goOn = null;
        switch (action)
        {
            case NoAction:
                goOn = b;
                return true;
            case MarkAction m:
                // The rule that sent the packet here (the jump into KUBE-MARK-MASQ / mark-for-masquerade) says why.
                NatStep why = b.Path.Count > 0 && b.Path[^1].Target == chain.Name ? b.Path[^1] : step;
                uint mark = (b.State.Mark & m.And) ^ m.Xor;
                goOn = b with { State = b.State with { Mark = mark }, MarkedBy = (mark & ~b.State.Mark) != 0 ? why : b.MarkedBy };
                return true;
            case JumpAction j:
                var sub = new List<(Branch, Result)>();
                RunChain(table, j.Target, b.Step(step), depth + 1, sub, done, ctx);
                foreach ((Branch s, Result r) in sub)
                {
                    if (r == Result.Continue && !j.Goto)
                    {
                        RunFrom(table, chain, i + 1, s, depth, results, done, ctx);
                    }
                    else
                    {
                        results.Add((s, r));
                    }
                }
                return false;
            case VerdictAction v:
                switch (v.Kind)
                {
                    case NatVerdictKind.Return:
                        results.Add((b, Result.Continue));
                        break;
                    case NatVerdictKind.Accept:
                        results.Add((b.Step(step), Result.Accept));
                        break;
                    default:
                        done.Add(b.Step(step).End(v.Kind == NatVerdictKind.Drop ? NatFate.Dropped : NatFate.Rejected, step, null));
                        results.Add((b, Result.Ended));
                        break;
                }
                return false;
            case DnatAction d:
                results.Add((b.Step(step) with { State = b.State with { Destination = d.Address, DestinationPort = d.Port ?? b.State.DestinationPort, Dnat = true } }, Result.Accept));
                return false;
            case MasqueradeAction:
                results.Add((b.Step(step) with { MasqueradedBy = step }, Result.Accept));
                return false;
            case MapAction ma:
                NatMap? map = ma.Inline ?? (ma.MapName is { } mn && ma.Table is { } t && t.Maps.TryGetValue(mn, out NatMap? found) ? found : null);
                if (map is null || map.Unreadable is not null)
                {
                    done.Add(b.End(NatFate.Unchecked, step, $"{table.Name} chain {chain.Name} rule {step.Rule} ({step.Text}): map {ma.MapName} {(map is null ? "does not exist" : "has an element this reader cannot match exactly: " + map.Unreadable)}"));
                    results.Add((b, Result.Ended));
                    return false;
                }
                string key = KeyParts.Format(ma.Key, b.State);
                if (!map.Elements.TryGetValue(key, out NatAction? verdict))
                {
                    goOn = b;
                    return true;
                }
                string? elemComment = map.Comments.GetValueOrDefault(key);
                NatStep mapStep = step with { Text = $"{step.Text} → {key} : {Describe(verdict)}", Comment = elemComment ?? step.Comment, Target = (verdict as JumpAction)?.Target };
                return Apply(table, chain, i, verdict, mapStep, b, depth, results, done, ctx, out goOn);
            case NumgenAction n:
                for (int k = 0; k < n.Modulus; k++)
                {
                    Branch share = b with { Probability = b.Probability / n.Modulus };
                    if (!n.Elements.TryGetValue(k, out NatAction? arm))
                    {
                        RunFrom(table, chain, i + 1, share, depth, results, done, ctx);
                        continue;
                    }
                    Apply(table, chain, i, arm, step with { Text = $"{step.Text} → {k} : {Describe(arm)}", Target = (arm as JumpAction)?.Target }, share, depth, results, done, ctx);
                }
                return false;
            case UnknownAction u:
                done.Add(b.End(NatFate.Unchecked, step, $"{table.Name} chain {chain.Name} rule {step.Rule} ({step.Text}): its action '{u.Text}' cannot be evaluated here"));
                results.Add((b, Result.Ended));
                return false;
            default:
                throw new InvalidOperationException($"no evaluation for {action.GetType().Name}");
        }
    }

    public static string Describe(NatAction a) => a switch
    {
        JumpAction j => (j.Goto ? "goto " : "jump ") + j.Target,
        VerdictAction v => v.Kind.ToString().ToLowerInvariant(),
        DnatAction d => $"dnat to {d.Address}{(d.Port is { } p ? ":" + p.ToString(System.Globalization.CultureInfo.InvariantCulture) : "")}",
        MasqueradeAction => "masquerade",
        UnknownAction u => u.Text,
        _ => a.GetType().Name,
    };

    /// <summary>Whether an address is local to the node: a fixed list, for tests and benchmarks.</summary>
    public sealed class FixedContext(params IPAddress[] local) : INatContext
    {
        public bool IsLocalAddress(IPAddress address) => local.Contains(address) || IPAddress.IsLoopback(address);
    }
}
