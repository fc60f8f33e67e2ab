using System.Globalization;
using System.Text;

namespace CalicoSharp.Ipam;

/// <summary>A stretch of a pool's blocks whose etcd keys share one text prefix, so that one keys-only
/// range read returns exactly the existing blocks there (and none of the rest of the datastore).
/// IPv4 keys are dotted decimal, so an octet-aligned network ("10.37.") is a key prefix; IPv6 keys are
/// compressed hex, so a hextet-aligned network is one only while its fixed hextets are non-zero.</summary>
internal readonly record struct BlockRegion(string KeyPrefix, UInt128 First, UInt128 End, UInt128 Start)
{
    /// <summary>About 2^10 blocks per region: one read of a few dozen kilobytes.</summary>
    private const int TargetBlockBits = 10;

    /// <summary>The regions of a pool in search order: the one holding the hash position first (searched
    /// from that position, wrapping inside it), then the following ones, wrapping round the pool.</summary>
    public static IEnumerable<BlockRegion> Walk(IpPool pool, ulong hash)
    {
        UInt128 total = pool.BlockCount;
        UInt128 start = hash % total;
        int regionLength = RegionLength(pool);
        int blocksBits = pool.BlockSize - Math.Max(regionLength, pool.Cidr.PrefixLength);
        UInt128 perRegion = UInt128.One << blocksBits;
        UInt128 regions = total / perRegion;
        UInt128 first = start / perRegion;
        for (UInt128 i = 0; i < regions; i++)
        {
            UInt128 r = (first + i) % regions;
            UInt128 from = r * perRegion;
            var net = pool.Cidr.Subnet(pool.BlockSize, from);
            var regionNet = IpNet.Create(net.Address, regionLength);
            yield return new BlockRegion(KeyPrefixOf(regionNet), from, from + perRegion, i == 0 ? start : from);
        }
    }

    /// <summary>The first block of this region, from <see cref="Start"/> and wrapping, that no existing
    /// block overlaps. Skips over existing blocks: at most one step per existing block.</summary>
    public IpNet? FindFree(IpPool pool, IReadOnlyList<IpNet> existingSorted)
    {
        int hostBits = pool.Cidr.AddressBits - pool.BlockSize;
        foreach (var (from, to) in new[] { (Start, End), (First, Start) })
        {
            UInt128 i = from;
            while (i < to)
            {
                var cand = pool.Cidr.Subnet(pool.BlockSize, i);
                UInt128 candEnd = cand.Value + (cand.Size - 1);
                if (IpamClient.FirstEndingAtOrAfter(existingSorted, cand.Value) is { } h && h.Value <= candEnd)
                {
                    UInt128 hEnd = h.Value + (h.Size - 1);
                    UInt128 next = hEnd >= pool.Cidr.Value + (pool.Cidr.Size - 1) ? to : ((hEnd - pool.Cidr.Value) >> hostBits) + 1;
                    i = next > i ? next : i + 1;
                    continue;
                }

                return cand;
            }
        }

        return null;
    }

    /// <summary>Prefix length of the pool's regions: octet (IPv4) or non-zero-hextet (IPv6) aligned.</summary>
    private static int RegionLength(IpPool pool)
    {
        var cidr = pool.Cidr;
        int step = cidr.IsIPv6 ? 16 : 8;
        int fixedPart = cidr.PrefixLength / step * step;
        int length = Math.Max(Math.Max(0, pool.BlockSize - TargetBlockBits) / step * step, fixedPart);
        if (cidr.IsIPv6)
        {
            // Regions must not be narrower than the pool's fixed part, and every fixed hextet non-zero.
            length = fixedPart;
            while (length > 0 && !HextetsNonZero(cidr.Value, length))
            {
                length -= step;
            }
        }

        return length;
    }

    private static bool HextetsNonZero(UInt128 value, int length)
    {
        for (int bit = 0; bit < length; bit += 16)
        {
            if (((value >> (112 - bit)) & 0xffff) == 0)
            {
                return false;
            }
        }

        return true;
    }

    internal static string KeyPrefixOf(IpNet region)
    {
        if (region.PrefixLength == 0)
        {
            return string.Empty;
        }

        var sb = new StringBuilder();
        if (region.IsIPv6)
        {
            for (int bit = 0; bit < region.PrefixLength; bit += 16)
            {
                sb.Append(((ushort)(region.Value >> (112 - bit))).ToString("x", CultureInfo.InvariantCulture)).Append(':');
            }
        }
        else
        {
            for (int bit = 0; bit < region.PrefixLength; bit += 8)
            {
                sb.Append(((byte)(region.Value >> (24 - bit))).ToString(CultureInfo.InvariantCulture)).Append('.');
            }
        }

        return sb.ToString();
    }
}
