using System.Text.Json.Serialization;

namespace CalicoSharp.Ipam;

// The etcd values, shaped and ordered exactly as Calico's Go structs serialise them
// (libcalico-go lib/backend/model: AllocationBlock, BlockAffinity, IPAMHandle, IPAMConfig).
// Property declaration order is the wire order; Go's omitempty becomes WhenWritingNull/Default.

/// <summary>An allocation block: one /26 (or /122) of a pool and who holds each of its addresses.</summary>
public sealed class AllocationBlock
{
    [JsonPropertyName("cidr")]
    public string Cidr { get; set; } = string.Empty;

    /// <summary>"host:&lt;node&gt;", or null for a block that belongs to no node.</summary>
    [JsonPropertyName("affinity")]
    public string? Affinity { get; set; }

    /// <summary>RFC 3339 UTC time the affinity was claimed; absent when unset (older Calico releases).</summary>
    [JsonPropertyName("affinity_claim_time")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? AffinityClaimTime { get; set; }

    /// <summary>One entry per address of the block: null when free, else an index into <see cref="Attributes"/>.</summary>
    [JsonPropertyName("allocations")]
    public List<int?> Allocations { get; set; } = [];

    /// <summary>Free ordinals in the order they will be handed out (FIFO: released ones go to the end).</summary>
    [JsonPropertyName("unallocated")]
    public List<int> Unallocated { get; set; } = [];

    [JsonPropertyName("attributes")]
    public List<AllocationAttribute> Attributes { get; set; } = [];

    /// <summary>Bumped by every write of the block.</summary>
    [JsonPropertyName("sequenceNumber")]
    public ulong SequenceNumber { get; set; }

    /// <summary>Ordinal (as a decimal string) → the block's sequence number when that address was allocated.</summary>
    [JsonPropertyName("sequenceNumberForAllocation")]
    [JsonConverter(typeof(SortedMapConverter<ulong>))]
    public Dictionary<string, ulong>? SequenceNumberForAllocation { get; set; } = [];

    [JsonPropertyName("deleted")]
    public bool Deleted { get; set; }
}

/// <summary>Who an allocation belongs to: the handle, and free-form attributes (node, namespace, pod, ...).</summary>
public sealed class AllocationAttribute
{
    [JsonPropertyName("handle_id")]
    public string? HandleId { get; set; }

    [JsonPropertyName("secondary")]
    [JsonConverter(typeof(SortedMapConverter<string>))]
    public Dictionary<string, string>? Secondary { get; set; }
}

/// <summary>The record that a node holds a block: /calico/ipam/v2/host/&lt;node&gt;/ipvN/block/&lt;cidr&gt;.</summary>
public sealed class BlockAffinity
{
    public const string Pending = "pending";
    public const string Confirmed = "confirmed";
    public const string PendingDeletion = "pendingDeletion";

    [JsonPropertyName("state")]
    public string State { get; set; } = Pending;

    [JsonPropertyName("deleted")]
    public bool Deleted { get; set; }
}

/// <summary>A handle: how many addresses of each block it holds.</summary>
public sealed class IpamHandle
{
    [JsonPropertyName("block")]
    [JsonConverter(typeof(SortedMapConverter<int>))]
    public Dictionary<string, int>? Block { get; set; } = [];

    [JsonPropertyName("deleted")]
    public bool Deleted { get; set; }
}

/// <summary>/calico/ipam/v2/config. Every field is omitempty, as in Calico.</summary>
public sealed class IpamConfig
{
    /// <summary>Calico's effective defaults when no config record exists.</summary>
    public static IpamConfig Defaults => new() { AutoAllocateBlocks = true };

    public const int DefaultMaxBlocksPerHost = 20;

    [JsonPropertyName("strict_affinity")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool StrictAffinity { get; set; }

    [JsonPropertyName("auto_allocate_blocks")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool AutoAllocateBlocks { get; set; }

    /// <summary>0 means the default, <see cref="DefaultMaxBlocksPerHost"/>.</summary>
    [JsonPropertyName("maxBlocksPerHost")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int MaxBlocksPerHost { get; set; }

    [JsonIgnore]
    public int EffectiveMaxBlocksPerHost => MaxBlocksPerHost > 0 ? MaxBlocksPerHost : DefaultMaxBlocksPerHost;
}

/// <summary>Kubernetes-style object metadata, as Calico's v3 resources carry it.</summary>
public sealed class ResourceMetadata
{
    [JsonPropertyName("name")]
    public string Name { get; set; } = string.Empty;

    [JsonPropertyName("uid")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Uid { get; set; }

    [JsonPropertyName("creationTimestamp")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? CreationTimestamp { get; set; }

    [JsonPropertyName("labels")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    [JsonConverter(typeof(SortedMapConverter<string>))]
    public Dictionary<string, string>? Labels { get; set; }
}

/// <summary>projectcalico.org/v3 IPPool.</summary>
public sealed class IpPoolResource
{
    public const string KindName = "IPPool";
    public const string ApiVersionName = "projectcalico.org/v3";

    [JsonPropertyName("kind")]
    public string Kind { get; set; } = KindName;

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = ApiVersionName;

    [JsonPropertyName("metadata")]
    public ResourceMetadata Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public IpPoolSpec Spec { get; set; } = new();
}

public sealed class IpPoolSpec
{
    [JsonPropertyName("cidr")]
    public string Cidr { get; set; } = string.Empty;

    [JsonPropertyName("vxlanMode")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? VxlanMode { get; set; } = "Never";

    [JsonPropertyName("ipipMode")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? IpipMode { get; set; } = "Never";

    [JsonPropertyName("natOutgoing")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool NatOutgoing { get; set; }

    [JsonPropertyName("disabled")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool Disabled { get; set; }

    [JsonPropertyName("disableBGPExport")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool DisableBgpExport { get; set; }

    /// <summary>0 when absent: the family's default (26 or 122) applies.</summary>
    [JsonPropertyName("blockSize")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int BlockSize { get; set; }

    [JsonPropertyName("nodeSelector")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? NodeSelector { get; set; }

    [JsonPropertyName("allowedUses")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public List<string>? AllowedUses { get; set; }
}

/// <summary>projectcalico.org/v3 Node: only what IPAM and bgpd read (labels, BGP addresses).</summary>
public sealed class NodeResource
{
    [JsonPropertyName("kind")]
    public string Kind { get; set; } = "Node";

    [JsonPropertyName("apiVersion")]
    public string ApiVersion { get; set; } = IpPoolResource.ApiVersionName;

    [JsonPropertyName("metadata")]
    public ResourceMetadata Metadata { get; set; } = new();

    [JsonPropertyName("spec")]
    public NodeSpec Spec { get; set; } = new();
}

public sealed class NodeSpec
{
    [JsonPropertyName("bgp")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public NodeBgpSpec? Bgp { get; set; }
}

public sealed class NodeBgpSpec
{
    [JsonPropertyName("asNumber")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public uint? AsNumber { get; set; }

    [JsonPropertyName("ipv4Address")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Ipv4Address { get; set; }

    [JsonPropertyName("ipv6Address")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Ipv6Address { get; set; }

    [JsonPropertyName("routeReflectorClusterID")]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? RouteReflectorClusterId { get; set; }
}
