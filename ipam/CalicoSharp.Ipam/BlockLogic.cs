using System.Globalization;
using System.Net;

namespace CalicoSharp.Ipam;

/// <summary>Pure operations on an allocation block's structure (no I/O). Every mutation bumps the
/// block's sequence number once, and records it for each address it allocates.</summary>
public static class BlockLogic
{
    public static AllocationBlock Create(IpNet cidr, string? node, DateTimeOffset now)
    {
        int size = checked((int)cidr.Size);
        var block = new AllocationBlock
        {
            Cidr = cidr.ToString(),
            Affinity = node is null ? null : Keys.AffinityOf(node),
            AffinityClaimTime = node is null ? null : FormatClaimTime(now),
            Allocations = new List<int?>(new int?[size]),
            Unallocated = [.. Enumerable.Range(0, size)],
            Attributes = [],
            SequenceNumber = UnixNanos(now),
            SequenceNumberForAllocation = [],
        };
        return block;
    }

    public static IpNet CidrOf(AllocationBlock block)
    {
        ArgumentNullException.ThrowIfNull(block);
        return IpNet.Parse(block.Cidr);
    }

    public static int InUse(AllocationBlock block)
    {
        ArgumentNullException.ThrowIfNull(block);
        int n = 0;
        foreach (var a in block.Allocations)
        {
            if (a is not null)
            {
                n++;
            }
        }

        return n;
    }

    public static bool IsEmpty(AllocationBlock block) => InUse(block) == 0;

    /// <summary>Takes up to <paramref name="count"/> free ordinals from the front of the free list.</summary>
    public static List<int> Allocate(AllocationBlock block, int count, string? handleId, IReadOnlyDictionary<string, string>? attributes)
    {
        ArgumentNullException.ThrowIfNull(block);
        var taken = new List<int>(Math.Min(count, block.Unallocated.Count));
        if (count <= 0 || block.Unallocated.Count == 0)
        {
            return taken;
        }

        block.SequenceNumber++;
        int attr = AttributeIndex(block, handleId, attributes);
        int n = Math.Min(count, block.Unallocated.Count);
        for (int i = 0; i < n; i++)
        {
            int ordinal = block.Unallocated[i];
            block.Allocations[ordinal] = attr;
            Seqs(block)[Ord(ordinal)] = block.SequenceNumber;
            taken.Add(ordinal);
        }

        block.Unallocated.RemoveRange(0, n);
        return taken;
    }

    /// <summary>Allocates one given ordinal; false when it is not free.</summary>
    public static bool AllocateOrdinal(AllocationBlock block, int ordinal, string? handleId, IReadOnlyDictionary<string, string>? attributes)
    {
        ArgumentNullException.ThrowIfNull(block);
        int at = block.Unallocated.IndexOf(ordinal);
        if (at < 0 || block.Allocations[ordinal] is not null)
        {
            return false;
        }

        block.SequenceNumber++;
        block.Unallocated.RemoveAt(at);
        block.Allocations[ordinal] = AttributeIndex(block, handleId, attributes);
        Seqs(block)[Ord(ordinal)] = block.SequenceNumber;
        return true;
    }

    /// <summary>Frees the given ordinals (appended to the free list, FIFO) and drops attributes no longer
    /// referenced. Returns the handle each freed ordinal belonged to (null entries for none).</summary>
    public static List<(int Ordinal, string? HandleId)> Release(AllocationBlock block, IEnumerable<int> ordinals)
    {
        ArgumentNullException.ThrowIfNull(block);
        ArgumentNullException.ThrowIfNull(ordinals);
        var freed = new List<(int, string?)>();
        foreach (int ordinal in ordinals)
        {
            if (ordinal < 0 || ordinal >= block.Allocations.Count || block.Allocations[ordinal] is not int attr)
            {
                continue;
            }

            string? handle = attr < block.Attributes.Count ? block.Attributes[attr].HandleId : null;
            block.Allocations[ordinal] = null;
            block.Unallocated.Add(ordinal);
            Seqs(block).Remove(Ord(ordinal));
            freed.Add((ordinal, handle));
        }

        if (freed.Count > 0)
        {
            block.SequenceNumber++;
            CompactAttributes(block);
        }

        return freed;
    }

    /// <summary>Ordinals held by a handle.</summary>
    public static List<int> OrdinalsOf(AllocationBlock block, string handleId)
    {
        ArgumentNullException.ThrowIfNull(block);
        var list = new List<int>();
        for (int i = 0; i < block.Allocations.Count; i++)
        {
            if (block.Allocations[i] is int a && a < block.Attributes.Count && block.Attributes[a].HandleId == handleId)
            {
                list.Add(i);
            }
        }

        return list;
    }

    public static ulong? SequenceOf(AllocationBlock block, int ordinal)
    {
        ArgumentNullException.ThrowIfNull(block);
        return block.SequenceNumberForAllocation is { } m && m.TryGetValue(Ord(ordinal), out var s) ? s : null;
    }

    public static AllocationAttribute? AttributeOf(AllocationBlock block, int ordinal)
    {
        ArgumentNullException.ThrowIfNull(block);
        return ordinal >= 0 && ordinal < block.Allocations.Count && block.Allocations[ordinal] is int a && a < block.Attributes.Count
            ? block.Attributes[a]
            : null;
    }

    public static IPAddress AddressOf(AllocationBlock block, int ordinal) => CidrOf(block).AddressAt((UInt128)ordinal);

    /// <summary>Problems in the block's own structure, empty when it is sound.</summary>
    public static List<string> Validate(AllocationBlock block)
    {
        ArgumentNullException.ThrowIfNull(block);
        var problems = new List<string>();
        if (!IpNet.TryParse(block.Cidr, strict: true, out var cidr, out var err))
        {
            problems.Add($"cidr: {err}");
            return problems;
        }

        int size = cidr.Size > 65536 ? -1 : (int)cidr.Size;
        if (block.Allocations.Count != size)
        {
            problems.Add($"allocations has {block.Allocations.Count} entries, the block has {size} addresses");
        }

        var free = new HashSet<int>();
        foreach (int u in block.Unallocated)
        {
            if (u < 0 || u >= block.Allocations.Count)
            {
                problems.Add($"unallocated lists ordinal {u}, outside the block");
            }
            else if (!free.Add(u))
            {
                problems.Add($"unallocated lists ordinal {u} twice");
            }
            else if (block.Allocations[u] is not null)
            {
                problems.Add($"ordinal {u} is both allocated and unallocated");
            }
        }

        var referenced = new HashSet<int>();
        for (int i = 0; i < block.Allocations.Count; i++)
        {
            if (block.Allocations[i] is int a)
            {
                if (a < 0 || a >= block.Attributes.Count)
                {
                    problems.Add($"ordinal {i} points at attribute {a}, which does not exist");
                }
                else
                {
                    referenced.Add(a);
                }
            }
            else if (!free.Contains(i))
            {
                problems.Add($"ordinal {i} is neither allocated nor unallocated");
            }
        }

        for (int a = 0; a < block.Attributes.Count; a++)
        {
            if (!referenced.Contains(a))
            {
                problems.Add($"attribute {a} is referenced by no allocation");
            }
        }

        return problems;
    }

    /// <summary>Rebuilds a structurally broken block so that it is consistent again, keeping every
    /// allocation that points at a real attribute and the order of the free list where it was sound.</summary>
    public static void Rebuild(AllocationBlock block)
    {
        ArgumentNullException.ThrowIfNull(block);
        var cidr = CidrOf(block);
        int size = (int)cidr.Size;
        var allocations = new List<int?>(new int?[size]);
        for (int i = 0; i < Math.Min(size, block.Allocations.Count); i++)
        {
            if (block.Allocations[i] is int a && a >= 0 && a < block.Attributes.Count)
            {
                allocations[i] = a;
            }
        }

        var seen = new HashSet<int>();
        var unallocated = new List<int>(size);
        foreach (int u in block.Unallocated)
        {
            if (u >= 0 && u < size && allocations[u] is null && seen.Add(u))
            {
                unallocated.Add(u);
            }
        }

        for (int i = 0; i < size; i++)
        {
            if (allocations[i] is null && seen.Add(i))
            {
                unallocated.Add(i);
            }
        }

        block.Allocations = allocations;
        block.Unallocated = unallocated;
        var seqs = Seqs(block);
        foreach (var key in seqs.Keys.ToList())
        {
            if (!int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int o) || o >= size || allocations[o] is null)
            {
                seqs.Remove(key);
            }
        }

        block.SequenceNumber++;
        CompactAttributes(block);
    }

    public static string FormatClaimTime(DateTimeOffset t) =>
        t.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    public static DateTimeOffset? ParseClaimTime(string? text) =>
        DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var t) ? t : null;

    /// <summary>Go's <c>time.Time.String()</c> for a UTC time: "2026-11-25 10:00:01.5 +0000 UTC".</summary>
    public static string FormatGoTime(DateTimeOffset t)
    {
        var u = t.UtcDateTime;
        var text = u.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
        long fracTicks = u.Ticks % TimeSpan.TicksPerSecond;
        if (fracTicks != 0)
        {
            text += "." + (fracTicks * 100).ToString("D9", CultureInfo.InvariantCulture).TrimEnd('0');
        }

        return text + " +0000 UTC";
    }

    public static ulong UnixNanos(DateTimeOffset t) => (ulong)(t.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) * 100UL;

    private static string Ord(int ordinal) => ordinal.ToString(CultureInfo.InvariantCulture);

    private static Dictionary<string, ulong> Seqs(AllocationBlock block) =>
        block.SequenceNumberForAllocation ??= new Dictionary<string, ulong>(StringComparer.Ordinal);

    private static int AttributeIndex(AllocationBlock block, string? handleId, IReadOnlyDictionary<string, string>? attributes)
    {
        for (int i = 0; i < block.Attributes.Count; i++)
        {
            var a = block.Attributes[i];
            if (a.HandleId == handleId && SameMap(a.Secondary, attributes))
            {
                return i;
            }
        }

        block.Attributes.Add(new AllocationAttribute
        {
            HandleId = handleId,
            Secondary = attributes is null ? null : new Dictionary<string, string>(attributes, StringComparer.Ordinal),
        });
        return block.Attributes.Count - 1;
    }

    private static bool SameMap(Dictionary<string, string>? a, IReadOnlyDictionary<string, string>? b)
    {
        if (a is null || b is null)
        {
            return a is null && b is null;
        }

        if (a.Count != b.Count)
        {
            return false;
        }

        foreach (var (k, v) in a)
        {
            if (!b.TryGetValue(k, out var w) || w != v)
            {
                return false;
            }
        }

        return true;
    }

    // Drops attributes that no allocation points at and renumbers the rest, as Calico does on release.
    private static void CompactAttributes(AllocationBlock block)
    {
        var used = new bool[block.Attributes.Count];
        foreach (var a in block.Allocations)
        {
            if (a is int i && i >= 0 && i < used.Length)
            {
                used[i] = true;
            }
        }

        if (Array.TrueForAll(used, u => u))
        {
            return;
        }

        var map = new int[used.Length];
        var kept = new List<AllocationAttribute>();
        for (int i = 0; i < used.Length; i++)
        {
            map[i] = kept.Count;
            if (used[i])
            {
                kept.Add(block.Attributes[i]);
            }
        }

        for (int o = 0; o < block.Allocations.Count; o++)
        {
            if (block.Allocations[o] is int i && i >= 0 && i < used.Length)
            {
                block.Allocations[o] = map[i];
            }
        }

        block.Attributes = kept;
    }
}
