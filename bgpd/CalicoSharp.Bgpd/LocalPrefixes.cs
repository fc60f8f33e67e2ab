using CalicoSharp.Bgp;

namespace CalicoSharp.Bgpd;

/// <summary>
/// What no peer may route for this node: the blocks affine to it and everything inside them (the pods the CNI plugin
/// wires here have host routes of their own, and the rest of a block is this node's blackhole), and the addresses it
/// borrowed from other nodes' blocks. A peer announcing one of these, by mistake or on purpose, would take the
/// traffic of this node's pods. Refusals are counted; each prefix is logged once while it stays refused.
/// Used on the speaker's loop only.
/// </summary>
internal sealed class LocalPrefixes
{
    private readonly Action<BgpLogLevel, string> _log;
    private readonly HashSet<Prefix> _said = [];
    private HashSet<Prefix> _blocks = [];
    private HashSet<Prefix> _borrowed = [];

    public LocalPrefixes(Action<BgpLogLevel, string> log)
    {
        _log = log;
    }

    /// <summary>Announcements refused so far (an import decision each, re-imports included).</summary>
    public long Refused { get; private set; }

    /// <summary>The last <see cref="Update"/> that changed something took a block or a borrowed address away: prefixes
    /// refused before may be accepted now.</summary>
    public bool Released { get; private set; }

    /// <summary>Takes the node's current blocks and borrowed addresses; true when they changed (the caller then runs
    /// the import policy again over what the peers sent).</summary>
    public bool Update(IEnumerable<Prefix> blocks, IEnumerable<Prefix> borrowed)
    {
        var b = blocks.ToHashSet();
        var h = borrowed.ToHashSet();
        if (b.SetEquals(_blocks) && h.SetEquals(_borrowed))
        {
            return false;
        }
        Released = !_blocks.IsSubsetOf(b) || !_borrowed.IsSubsetOf(h);
        _blocks = b;
        _borrowed = h;
        // A prefix no longer covered may be logged again if it is ever refused again.
        _said.RemoveWhere(p => Covering(p) is null);
        return true;
    }

    /// <summary>Why <paramref name="prefix"/> belongs to this node, or null when it does not.</summary>
    public string? Covering(Prefix prefix)
    {
        foreach (Prefix block in _blocks)
        {
            if (block.Contains(prefix))
            {
                return prefix == block ? "it is a block affine to this node" : $"it is inside {block}, a block affine to this node";
            }
        }
        return _borrowed.Contains(prefix) ? "it is an address this node borrowed" : null;
    }

    /// <summary>True (and counted, and logged the first time) when a peer's announcement of <paramref name="prefix"/>
    /// must be refused.</summary>
    public bool Refuse(BgpPeer? peer, Prefix prefix)
    {
        if (Covering(prefix) is not { } why)
        {
            return false;
        }
        Refused++;
        if (_said.Add(prefix))
        {
            _log(BgpLogLevel.Warning, $"peer {peer?.Config.DisplayName ?? "(local)"}: {prefix} refused: {why}; a peer never routes this node's own pods");
        }
        return true;
    }
}
