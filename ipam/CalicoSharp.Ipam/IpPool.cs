using System.Globalization;

namespace CalicoSharp.Ipam;

/// <summary>An IP pool as IPAM uses it: the resource, parsed and validated.</summary>
public sealed class IpPool
{
    public const int DefaultBlockSizeV4 = 26;
    public const int DefaultBlockSizeV6 = 122;

    private IpPool(IpPoolResource resource, IpNet cidr, int blockSize, Selector selector, long modRevision)
    {
        Resource = resource;
        Cidr = cidr;
        BlockSize = blockSize;
        Selector = selector;
        ModRevision = modRevision;
    }

    public IpPoolResource Resource { get; }

    public string Name => Resource.Metadata.Name;

    public IpNet Cidr { get; }

    public bool IsIPv6 => Cidr.IsIPv6;

    public int BlockSize { get; }

    public bool Disabled => Resource.Spec.Disabled;

    public Selector Selector { get; }

    public long ModRevision { get; }

    /// <summary>Number of blocks the pool holds.</summary>
    public UInt128 BlockCount => UInt128.One << (BlockSize - Cidr.PrefixLength);

    public static IpPool FromResource(IpPoolResource resource, long modRevision)
    {
        ArgumentNullException.ThrowIfNull(resource);
        var name = resource.Metadata.Name;
        ValidateName(name);
        if (!IpNet.TryParse(resource.Spec.Cidr, strict: true, out var cidr, out var err))
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, $"pool {name}: {err}");
        }

        int blockSize = resource.Spec.BlockSize == 0 ? (cidr.IsIPv6 ? DefaultBlockSizeV6 : DefaultBlockSizeV4) : resource.Spec.BlockSize;
        ValidateBlockSize(cidr, blockSize);
        return new IpPool(resource, cidr, blockSize, Selector.Parse(resource.Spec.NodeSelector), modRevision);
    }

    public static void ValidateBlockSize(IpNet cidr, int blockSize)
    {
        var (min, max) = cidr.IsIPv6 ? (116, 128) : (20, 32);
        if (blockSize < min || blockSize > max)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument,
                $"block size {blockSize} is not allowed for {(cidr.IsIPv6 ? "IPv6" : "IPv4")} pool {cidr}: it must be {min}-{max}");
        }

        if (cidr.PrefixLength > blockSize)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument,
                $"pool {cidr} is smaller than one block (/{blockSize}); use a block size of at least {cidr.PrefixLength.ToString(CultureInfo.InvariantCulture)}");
        }
    }

    /// <summary>Names follow Kubernetes object names (DNS-1123 subdomain), as Calico's do.</summary>
    public static void ValidateName(string name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 253 || !name.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '-' or '.')
            || !char.IsAsciiLetterOrDigit(name[0]) || !char.IsAsciiLetterOrDigit(name[^1]))
        {
            throw new IpamException(IpamErrorKind.InvalidArgument,
                $"invalid pool name '{name}': use lower-case letters, digits, '-' and '.', starting and ending with a letter or digit");
        }
    }

    public override string ToString() => $"{Name} ({Cidr})";
}
