using System.Net;
using System.Text;
using System.Text.Json;
using CalicoSharp.Ipam;

namespace CalicoSharp.Bgpd;

/// <summary>A nodes resource as bgpd needs it.</summary>
public sealed record NodeInfo(string Name, IPAddress? Ipv4, IPAddress? Ipv6, uint? AsNumber, string? ClusterId, IReadOnlyDictionary<string, string> Labels)
{
    /// <summary><c>spec.bgp.ipv4Address</c> as written (null: absent or not a string): this node's own is checked
    /// by the daemon, which says what it does with a bad one.</summary>
    public string? Ipv4Text { get; init; }

    /// <summary><c>spec.bgp.ipv6Address</c> as written.</summary>
    public string? Ipv6Text { get; init; }
}

/// <summary>A bgppeers resource (Calico's spec fields).</summary>
public sealed record PeerResource(string Name, string? PeerIP, uint AsNumber, string? Node, string? NodeSelector, string? PeerSelector,
    string? KeepaliveTime, string? MaxRestartTime, string? Password, int? TtlSecurity)
{
    /// <summary>Calico's <c>password: {secretKeyRef: {name, key}}</c>: the password is in a secret, read from a file.</summary>
    public SecretRef? PasswordSecret { get; init; }

    /// <summary>Calico's <c>sourceAddress</c>: "UseNodeIP" (the default) or "None".</summary>
    public string? SourceAddress { get; init; }
}

/// <summary>A Kubernetes-style secret reference (a secret's name and one of its keys).</summary>
public sealed record SecretRef(string Name, string Key)
{
    /// <summary>A secret name or key as Kubernetes allows them (letters, digits, '-', '_', '.'; not "." or ".."),
    /// so it can name a file without leaving the secrets folder.</summary>
    public static bool IsValidPart(string s) => s.Length is > 0 and <= 253 && s is not "." and not ".."
        && s.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.');
}

/// <summary>Calico's bgpconfigurations <c>prefixAdvertisements</c> entry: the communities (names from
/// <c>communities</c>, or literal "aa:nn" / "aa:nn:mm" values) attached to the advertised routes inside <c>cidr</c>.</summary>
public sealed record PrefixAdvertisement(string Cidr, IReadOnlyList<string> Communities);

/// <summary>A record bgpd could not use, by its etcd key, and why: reported and skipped, never fatal.</summary>
public sealed record ResourceProblem(string Key, string Reason);

/// <summary>One consistent read of everything bgpd follows in etcd.</summary>
public sealed record ClusterSnapshot(
    long Revision,
    uint? AsNumber,
    bool? NodeToNodeMesh,
    int? ListenPort,
    IReadOnlyList<NodeInfo> Nodes,
    IReadOnlyList<PeerResource> Peers,
    IReadOnlyList<IpNet> Pools,
    IReadOnlyDictionary<IpNet, int> PoolBlockSizes,
    IReadOnlyList<IpNet> ConfirmedBlocks)
{
    public static readonly ClusterSnapshot Empty = new(0, null, null, null, [], [], [], new Dictionary<IpNet, int>(), []);

    /// <summary>Records of the read that were left out (not JSON, a pool without a CIDR): each is reported, the
    /// rest applies.</summary>
    public IReadOnlyList<ResourceProblem> Problems { get; init; } = [];

    /// <summary>Pools with <c>disableBGPExport</c>: nothing inside them is advertised to any peer.</summary>
    public IReadOnlyList<IpNet> NoExportPools { get; init; } = [];

    /// <summary>The default bgpconfiguration's <c>communities</c>: name to value, as written.</summary>
    public IReadOnlyDictionary<string, string> CommunityNames { get; init; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>The default bgpconfiguration's <c>prefixAdvertisements</c>, in order.</summary>
    public IReadOnlyList<PrefixAdvertisement> PrefixAdvertisements { get; init; } = [];

    /// <summary>Calico Enterprise's BFDConfiguration resources, by name, each checked whole.</summary>
    public IReadOnlyList<BfdConfigResource> BfdConfigurations { get; init; } = [];

    /// <summary>Every pool with its <c>natOutgoing</c> and <c>disabled</c> (NatOutgoing.cs).</summary>
    public IReadOnlyList<NatPool> NatPools { get; init; } = [];

    /// <summary>The default bgpconfiguration's <c>serviceClusterIPs</c>, <c>serviceExternalIPs</c> and
    /// <c>serviceLoadBalancerIPs</c> (each a list of <c>{cidr}</c>), as written; the daemon checks them.</summary>
    public IReadOnlyList<ServiceRange> ServiceRanges { get; init; } = [];
}

/// <summary>One <c>{cidr}</c> entry of a bgpconfiguration's service lists: the list's name and the CIDR as written.</summary>
public sealed record ServiceRange(string Kind, string Cidr);

/// <summary>
/// Reads bgpconfigurations, bgppeers, nodes, ippools and this node's block affinities in one etcd round trip
/// (one revision, so the view is consistent), and writes this node's own nodes record.
/// </summary>
public sealed class EtcdClusterSource
{
    internal const string BgpConfigurations = Keys.ResourcePrefix + "bgpconfigurations/";
    internal const string BgpPeers = Keys.ResourcePrefix + "bgppeers/";
    internal const string BfdConfigurations = Keys.ResourcePrefix + "bfdconfigurations/";

    private readonly IKvStore _store;
    private readonly string _node;

    public EtcdClusterSource(IKvStore store, string node)
    {
        _store = store;
        _node = node;
    }

    /// <summary>The prefixes whose changes matter: a watch on them wakes the daemon.</summary>
    public IReadOnlyList<string> WatchedPrefixes => [BgpConfigurations, BgpPeers, Keys.NodePrefix, Keys.PoolPrefix, Keys.HostAffinityPrefix(_node), BfdConfigurations];

    public async Task<ClusterSnapshot> ReadAsync(CancellationToken ct)
    {
        IReadOnlyList<IReadOnlyList<KvEntry>> r = await _store.ReadAsync(
        [
            KvRead.Under(BgpConfigurations, false),
            KvRead.Under(BgpPeers, false),
            KvRead.Under(Keys.NodePrefix, false),
            KvRead.Under(Keys.PoolPrefix, false),
            KvRead.Under(Keys.HostAffinityPrefix(_node), false),
            KvRead.Under(BfdConfigurations, false),
        ], ct).ConfigureAwait(false);
        long revision = r.SelectMany(x => x).Select(e => e.ModRevision).DefaultIfEmpty(0).Max();
        var problems = new List<ResourceProblem>();
        uint? asn = null;
        bool? mesh = null;
        int? port = null;
        var communityNames = new Dictionary<string, string>(StringComparer.Ordinal);
        var advertisements = new List<PrefixAdvertisement>();
        var serviceRanges = new List<ServiceRange>();
        foreach (KvEntry e in r[0])
        {
            // Calico reads the "default" configuration (a node-specific one, "node.<name>", overrides listenPort).
            string name = e.Key[BgpConfigurations.Length..];
            if (name != "default" && name != $"node.{_node}")
            {
                continue;
            }
            Use(e, problems, root =>
            {
                if (Obj(root, "spec") is { } spec)
                {
                    asn = name == "default" ? UInt(spec, "asNumber") ?? asn : asn;
                    mesh = name == "default" && spec.TryGetProperty("nodeToNodeMeshEnabled", out JsonElement m) && m.ValueKind is JsonValueKind.True or JsonValueKind.False ? m.GetBoolean() : mesh;
                    port = spec.TryGetProperty("listenPort", out JsonElement lp) && lp.ValueKind == JsonValueKind.Number && lp.TryGetInt32(out int v) ? v : port;
                    if (name == "default")
                    {
                        ReadCommunities(spec, communityNames, advertisements, reason => problems.Add(new ResourceProblem(e.Key, reason)));
                        ReadServiceRanges(spec, serviceRanges, reason => problems.Add(new ResourceProblem(e.Key, reason)));
                    }
                }
            });
        }
        var peers = new List<PeerResource>();
        foreach (KvEntry e in r[1])
        {
            Use(e, problems, root =>
            {
                if (Obj(root, "spec") is not { } spec)
                {
                    throw new ConfigException("bgppeer without spec");
                }
                string? password = spec.TryGetProperty("password", out JsonElement pw) && pw.ValueKind == JsonValueKind.String ? pw.GetString() : null;
                SecretRef? secret = pw.ValueKind == JsonValueKind.Object && Obj(pw, "secretKeyRef") is { } sr
                    ? new SecretRef(Str(sr, "name") ?? "", Str(sr, "key") ?? "") : null;
                peers.Add(new PeerResource(e.Key[BgpPeers.Length..], Str(spec, "peerIP"), UInt(spec, "asNumber") ?? 0, Str(spec, "node"),
                    Str(spec, "nodeSelector"), Str(spec, "peerSelector"), Str(spec, "keepaliveTime"), Str(spec, "maxRestartTime"), password,
                    spec.TryGetProperty("ttlSecurity", out JsonElement ttl) && ttl.ValueKind == JsonValueKind.Number && ttl.TryGetInt32(out int t) ? t : null) { PasswordSecret = secret, SourceAddress = Str(spec, "sourceAddress") });
            });
        }
        var nodes = new List<NodeInfo>();
        foreach (KvEntry e in r[2])
        {
            Use(e, problems, root =>
            {
                var labels = new Dictionary<string, string>(StringComparer.Ordinal);
                if (Obj(root, "metadata") is { } md && Obj(md, "labels") is { } lb)
                {
                    foreach (JsonProperty l in lb.EnumerateObject())
                    {
                        labels[l.Name] = l.Value.ToString();
                    }
                }
                JsonElement? bgp = Obj(root, "spec") is { } spec ? Obj(spec, "bgp") : null;
                string name = e.Key[Keys.NodePrefix.Length..];
                string? v4 = bgp is { } b4 ? Str(b4, "ipv4Address") : null, v6 = bgp is { } b6 ? Str(b6, "ipv6Address") : null;
                // Another node's address that cannot be read: no session to it over that family, said once by key
                // (this node's own is the daemon's to judge: it may have a flag or keep the last good one).
                IPAddress? NodeAddress(string? text, System.Net.Sockets.AddressFamily family, string field)
                {
                    try
                    {
                        return DaemonConfig.ParseNodeAddress(text, family, field);
                    }
                    catch (ConfigException ex) when (name != _node)
                    {
                        problems.Add(new ResourceProblem(e.Key, $"{ex.Message}; no session to node {name} over {(family == System.Net.Sockets.AddressFamily.InterNetwork ? "IPv4" : "IPv6")} until it is fixed"));
                        return null;
                    }
                    catch (ConfigException)
                    {
                        return null;
                    }
                }
                nodes.Add(new NodeInfo(name,
                    NodeAddress(v4, System.Net.Sockets.AddressFamily.InterNetwork, "spec.bgp.ipv4Address"),
                    NodeAddress(v6, System.Net.Sockets.AddressFamily.InterNetworkV6, "spec.bgp.ipv6Address"),
                    bgp is { } ba ? UInt(ba, "asNumber") : null,
                    bgp is { } bc ? Str(bc, "routeReflectorClusterID") : null,
                    labels) { Ipv4Text = v4, Ipv6Text = v6 });
            });
        }
        var pools = new List<IpNet>();
        var noExport = new List<IpNet>();
        var blockSizes = new Dictionary<IpNet, int>();
        var natPools = new List<NatPool>();
        foreach (KvEntry e in r[3])
        {
            Use(e, problems, root =>
            {
                string? cidr = Obj(root, "spec") is { } spec ? Str(spec, "cidr") : null;
                if (cidr is null || !IpNet.TryParse(cidr, false, out IpNet net, out _))
                {
                    throw new ConfigException(cidr is null ? "ippool without spec.cidr" : $"ippool cidr '{cidr}' is not a CIDR");
                }
                pools.Add(net);
                natPools.Add(new NatPool(net, Bool(root, "natOutgoing"), Bool(root, "disabled")));
                if (Obj(root, "spec") is { } ne && ne.TryGetProperty("disableBGPExport", out JsonElement dx) && dx.ValueKind == JsonValueKind.True)
                {
                    noExport.Add(net);
                }
                blockSizes[net] = Obj(root, "spec") is { } sp && sp.TryGetProperty("blockSize", out JsonElement bs) && bs.ValueKind == JsonValueKind.Number && bs.TryGetInt32(out int size) ? size
                    : net.IsIPv6 ? IpPool.DefaultBlockSizeV6 : IpPool.DefaultBlockSizeV4;
            });
        }
        var blocks = new List<IpNet>();
        foreach (KvEntry e in r[4])
        {
            // DESIGN: bgpd advertises a block once its affinity is confirmed.
            if (Keys.TryParseAffinityKey(e.Key, out _, out IpNet cidr))
            {
                Use(e, problems, root =>
                {
                    if (Str(root, "state") == "confirmed" && !(root.TryGetProperty("deleted", out JsonElement del) && del.ValueKind == JsonValueKind.True))
                    {
                        blocks.Add(cidr);
                    }
                });
            }
        }
        var bfd = new List<BfdConfigResource>();
        foreach (KvEntry e in r[5])
        {
            Use(e, problems, root => bfd.Add(BfdConfigResource.Parse(e.Key[BfdConfigurations.Length..], Obj(root, "spec"))));
        }
        return new ClusterSnapshot(revision, asn, mesh, port, nodes, peers, pools, blockSizes, blocks)
        {
            Problems = problems,
            BfdConfigurations = bfd,
            NoExportPools = noExport,
            CommunityNames = communityNames,
            PrefixAdvertisements = advertisements,
            NatPools = natPools,
            ServiceRanges = serviceRanges,
        };
    }

    /// <summary>A boolean of the record's spec: true only when it is JSON true.</summary>
    private static bool Bool(JsonElement root, string name) =>
        Obj(root, "spec") is { } spec && spec.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.True;

    /// <summary>The names of Calico's bgpconfigurations service lists, in the order they are read.</summary>
    public static readonly string[] ServiceRangeKinds = ["serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"];

    /// <summary>Calico's <c>serviceClusterIPs: [{cidr}]</c> and its two siblings, as written (checked by the daemon).</summary>
    private static void ReadServiceRanges(JsonElement spec, List<ServiceRange> ranges, Action<string> problem)
    {
        foreach (string kind in ServiceRangeKinds)
        {
            if (!spec.TryGetProperty(kind, out JsonElement list) || list.ValueKind == JsonValueKind.Null)
            {
                continue;
            }
            if (list.ValueKind != JsonValueKind.Array)
            {
                problem($"{kind}: must be a list of {{cidr}}, not {list.ValueKind}; left out");
                continue;
            }
            foreach (JsonElement item in list.EnumerateArray())
            {
                if (Str(item, "cidr") is { } cidr)
                {
                    ranges.Add(new ServiceRange(kind, cidr));
                }
                else
                {
                    problem($"{kind}: {item} has no cidr; left out");
                }
            }
        }
    }

    /// <summary>Calico's <c>communities: [{name, value}]</c> and <c>prefixAdvertisements: [{cidr, communities: [..]}]</c>,
    /// as written; the daemon checks the values (a bad entry is reported and left out, the others apply).</summary>
    private static void ReadCommunities(JsonElement spec, Dictionary<string, string> names, List<PrefixAdvertisement> advertisements, Action<string> problem)
    {
        if (spec.TryGetProperty("communities", out JsonElement cs) && cs.ValueKind == JsonValueKind.Array)
        {
            foreach (JsonElement c in cs.EnumerateArray())
            {
                if (Str(c, "name") is { } n && Str(c, "value") is { } v)
                {
                    names[n] = v;
                }
                else
                {
                    problem($"communities: {c} needs a name and a value (strings); left out");
                }
            }
        }
        if (spec.TryGetProperty("prefixAdvertisements", out JsonElement pas) && pas.ValueKind == JsonValueKind.Array)
        {
            foreach (JsonElement pa in pas.EnumerateArray())
            {
                var list = new List<string>();
                if (pa.ValueKind == JsonValueKind.Object && pa.TryGetProperty("communities", out JsonElement l) && l.ValueKind == JsonValueKind.Array)
                {
                    list.AddRange(l.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : x.ToString()));
                }
                if (Str(pa, "cidr") is { } cidr)
                {
                    advertisements.Add(new PrefixAdvertisement(cidr, list));
                }
                else
                {
                    problem($"prefixAdvertisements: {pa} has no cidr; left out");
                }
            }
        }
    }

    /// <summary>
    /// Of the pod addresses on this node outside its own blocks, those IPAM has allocated to this node: the
    /// addresses it borrowed from other nodes' blocks (one batched read of their blocks).
    /// </summary>
    public async Task<HashSet<IPAddress>> BorrowedAsync(IReadOnlyList<IPAddress> candidates, ClusterSnapshot snapshot, CancellationToken ct)
    {
        var byBlock = new Dictionary<IpNet, List<IPAddress>>();
        foreach (IPAddress a in candidates)
        {
            foreach ((IpNet pool, int size) in snapshot.PoolBlockSizes)
            {
                if (pool.Contains(a))
                {
                    IpNet block = IpNet.Enclosing(a, size);
                    if (!byBlock.TryGetValue(block, out List<IPAddress>? list))
                    {
                        byBlock[block] = list = [];
                    }
                    list.Add(a);
                    break;
                }
            }
        }
        var result = new HashSet<IPAddress>();
        if (byBlock.Count == 0)
        {
            return result;
        }
        List<IpNet> blocks = [.. byBlock.Keys];
        IReadOnlyList<IReadOnlyList<KvEntry>> reads = await _store.ReadAsync([.. blocks.Select(b => KvRead.One(Keys.Block(b)))], ct).ConfigureAwait(false);
        for (int i = 0; i < blocks.Count; i++)
        {
            if (reads[i].Count == 0)
            {
                continue;
            }
            AllocationBlock block = RecordJson.DecodeBlock(reads[i][0].Value, reads[i][0].Key);
            if (block.Affinity == $"host:{_node}")
            {
                continue;
            }
            foreach (IPAddress a in byBlock[blocks[i]])
            {
                int ordinal = (int)(IpNet.Create(a, a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128).Value - blocks[i].Value);
                if (ordinal < block.Allocations.Count && block.Allocations[ordinal] is int attr && attr < block.Attributes.Count
                    && block.Attributes[attr].Secondary?.GetValueOrDefault("node") == _node)
                {
                    result.Add(a);
                }
            }
        }
        return result;
    }

    /// <summary>Runs <paramref name="use"/> on the record's JSON object. A record that is not a JSON object, or whose
    /// fields have the wrong shape, becomes a problem of its own: one broken record must not hide the others.</summary>
    private static void Use(KvEntry e, List<ResourceProblem> problems, Action<JsonElement> use)
    {
        try
        {
            using JsonDocument d = JsonDocument.Parse(e.Value);
            if (d.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ConfigException($"not a JSON object but {d.RootElement.ValueKind}");
            }
            use(d.RootElement);
        }
        catch (JsonException ex)
        {
            problems.Add(new ResourceProblem(e.Key, $"not JSON: {ex.Message}"));
        }
        catch (Exception ex) when (ex is ConfigException or InvalidOperationException or FormatException)
        {
            problems.Add(new ResourceProblem(e.Key, ex.Message));
        }
    }

    /// <summary>The member <paramref name="name"/> when it is a JSON object.</summary>
    private static JsonElement? Obj(JsonElement o, string name) =>
        o.ValueKind == JsonValueKind.Object && o.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.Object ? v : null;

    private static string? Str(JsonElement o, string name) => o.ValueKind == JsonValueKind.Object && o.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static uint? UInt(JsonElement o, string name) => o.ValueKind == JsonValueKind.Object && o.TryGetProperty(name, out JsonElement v) && v.ValueKind == JsonValueKind.Number && v.TryGetUInt32(out uint u) ? u : null;

    /// <summary>Creates or updates this node's nodes record with its BGP addresses and AS (other fields are kept).</summary>
    public async Task WriteNodeAsync(string? ipv4Cidr, string? ipv6Cidr, uint? asNumber, CancellationToken ct)
    {
        string key = Keys.Node(_node);
        for (int attempt = 0; attempt < 5; attempt++)
        {
            KvEntry? existing = await _store.GetAsync(key, ct).ConfigureAwait(false);
            byte[] value = MergeNode(existing?.Value, ipv4Cidr, ipv6Cidr, asNumber);
            var cmp = new KvCompare(key, existing?.ModRevision ?? 0);
            KvTxnResult res = await _store.TxnAsync([cmp], [KvOp.Put(key, value)], ct).ConfigureAwait(false);
            if (res.Succeeded)
            {
                return;
            }
        }
        throw new IOException($"etcd {key}: changed under us five times in a row");
    }

    internal byte[] MergeNode(byte[]? existing, string? ipv4Cidr, string? ipv6Cidr, uint? asNumber)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            JsonElement root = default;
            JsonDocument? doc = null;
            try
            {
                doc = existing is null ? null : JsonDocument.Parse(existing);
            }
            catch (JsonException)
            {
                // Our own record, unreadable: written afresh rather than left broken (or failing start-up).
            }
            if (doc is not null)
            {
                root = doc.RootElement;
            }
            w.WriteStartObject();
            w.WriteString("kind", "Node");
            w.WriteString("apiVersion", "projectcalico.org/v3");
            w.WritePropertyName("metadata");
            if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("metadata", out JsonElement md))
            {
                md.WriteTo(w);
            }
            else
            {
                w.WriteStartObject();
                w.WriteString("name", _node);
                w.WriteEndObject();
            }
            w.WritePropertyName("spec");
            w.WriteStartObject();
            if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("spec", out JsonElement spec) && spec.ValueKind == JsonValueKind.Object)
            {
                foreach (JsonProperty p in spec.EnumerateObject().Where(p => p.Name != "bgp"))
                {
                    p.WriteTo(w);
                }
            }
            w.WritePropertyName("bgp");
            w.WriteStartObject();
            // What this start was given replaces the record's; the rest of the record's bgp section stays (an
            // address of the other family, the AS, the cluster id: bgpd may run on them).
            JsonElement? oldBgp = Obj(root, "spec") is { } s2 ? Obj(s2, "bgp") : null;
            if (oldBgp is { } ob)
            {
                foreach (JsonProperty p in ob.EnumerateObject().Where(p => !(p.Name == "ipv4Address" && ipv4Cidr is not null)
                    && !(p.Name == "ipv6Address" && ipv6Cidr is not null) && !(p.Name == "asNumber" && asNumber is not null)))
                {
                    p.WriteTo(w);
                }
            }
            if (ipv4Cidr is not null)
            {
                w.WriteString("ipv4Address", ipv4Cidr);
            }
            if (ipv6Cidr is not null)
            {
                w.WriteString("ipv6Address", ipv6Cidr);
            }
            if (asNumber is { } a)
            {
                w.WriteNumber("asNumber", a);
            }
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();
            doc?.Dispose();
        }
        return ms.ToArray();
    }
}
