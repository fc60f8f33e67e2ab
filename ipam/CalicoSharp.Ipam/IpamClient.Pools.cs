namespace CalicoSharp.Ipam;

/// <summary>What a new pool should be.</summary>
public sealed record PoolRequest
{
    public required string Cidr { get; init; }

    /// <summary>Default: derived from the CIDR ("pool-10-244-0-0-16").</summary>
    public string? Name { get; init; }

    /// <summary>0: 26 for IPv4, 122 for IPv6.</summary>
    public int BlockSize { get; init; }

    public string? NodeSelector { get; init; }

    public bool Disabled { get; init; }
}

public sealed partial class IpamClient
{
    public Task<IReadOnlyList<IpPool>> ListPoolsAsync(CancellationToken ct = default) =>
        RunAsync("listing pools", async t =>
        {
            var entries = await store.ListAsync(Keys.PoolPrefix, keysOnly: false, t).ConfigureAwait(false);
            return (IReadOnlyList<IpPool>)PoolsFrom(entries);
        }, ct);

    /// <summary>Creates a pool after validating it: CIDR, block size, selector, name, and no overlap with
    /// another pool. Nothing is written when any check fails.</summary>
    public Task<IpPool> AddPoolAsync(PoolRequest request, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!IpNet.TryParse(request.Cidr, strict: true, out var cidr, out var err))
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, err);
        }

        var name = request.Name ?? $"pool-{cidr.Address.ToString().Replace('.', '-').Replace(':', '-').Trim('-')}-{cidr.PrefixLength}";
        var resource = new IpPoolResource
        {
            Metadata = new ResourceMetadata
            {
                Name = name,
                Uid = Guid.NewGuid().ToString(),
                CreationTimestamp = BlockLogic.FormatClaimTime(Now),
            },
            Spec = new IpPoolSpec
            {
                Cidr = cidr.ToString(),
                BlockSize = request.BlockSize == 0 ? (cidr.IsIPv6 ? IpPool.DefaultBlockSizeV6 : IpPool.DefaultBlockSizeV4) : request.BlockSize,
                NodeSelector = string.IsNullOrWhiteSpace(request.NodeSelector) ? "all()" : request.NodeSelector,
                Disabled = request.Disabled,
                AllowedUses = ["Workload", "Tunnel"],
            },
        };
        var pool = IpPool.FromResource(resource, 0);
        return RunAsync($"adding pool {name}", async t =>
        {
            var existing = PoolsFrom(await store.ListAsync(Keys.PoolPrefix, keysOnly: false, t).ConfigureAwait(false));
            if (existing.FirstOrDefault(p => p.Name == name) is { } same)
            {
                throw new IpamException(IpamErrorKind.InvalidArgument, $"a pool named {name} already exists ({same.Cidr})");
            }

            if (existing.FirstOrDefault(p => p.Cidr.Overlaps(cidr)) is { } overlap)
            {
                throw new IpamException(IpamErrorKind.InvalidArgument, $"{cidr} overlaps pool {overlap}");
            }

            // Compare every pool key we saw, so a concurrently added overlapping pool makes this fail.
            var compares = existing.Select(p => new KvCompare(Keys.Pool(p.Name), p.ModRevision)).Append(new KvCompare(Keys.Pool(name), 0)).ToList();
            var r = await store.TxnAsync(compares, [KvOp.Put(Keys.Pool(name), RecordJson.Encode(resource))], t).ConfigureAwait(false);
            if (!r.Succeeded)
            {
                throw new IpamException(IpamErrorKind.Conflict, $"the pools changed while adding {name}; try again");
            }

            return IpPool.FromResource(resource, r.Revision);
        }, ct);
    }

    /// <summary>Disables (or re-enables) a pool: no new block is claimed from it; addresses already
    /// allocated from it stay.</summary>
    public Task<IpPool> SetPoolDisabledAsync(string name, bool disabled, CancellationToken ct = default) =>
        RunAsync($"{(disabled ? "disabling" : "enabling")} pool {name}", async t =>
        {
            for (int attempt = 0; attempt < options.MaxAttempts; attempt++)
            {
                var e = await store.GetAsync(Keys.Pool(name), t).ConfigureAwait(false)
                    ?? throw new IpamException(IpamErrorKind.NotFound, $"no pool named {name}");
                var resource = RecordJson.DecodePool(e.Value, e.Key);
                resource.Spec.Disabled = disabled;
                var r = await store.TxnAsync([new(e.Key, e.ModRevision)], [KvOp.Put(e.Key, RecordJson.Encode(resource))], t).ConfigureAwait(false);
                if (r.Succeeded)
                {
                    return IpPool.FromResource(resource, r.Revision);
                }
            }

            throw Conflict($"updating pool {name}");
        }, ct);

    /// <summary>Deletes a pool; refused while any of its addresses is allocated. Its empty blocks and
    /// their affinities are removed with it.</summary>
    public Task DeletePoolAsync(string name, CancellationToken ct = default) =>
        RunAsync($"deleting pool {name}", async t =>
        {
            var e = await store.GetAsync(Keys.Pool(name), t).ConfigureAwait(false)
                ?? throw new IpamException(IpamErrorKind.NotFound, $"no pool named {name}");
            var pool = IpPool.FromResource(RecordJson.DecodePool(e.Value, e.Key), e.ModRevision);
            var blocks = (await ReadAllBlocksAsync(pool.IsIPv6, t).ConfigureAwait(false)).Where(b => pool.Cidr.Contains(b.Cidr)).ToList();
            int inUse = blocks.Sum(b => BlockLogic.InUse(b.Block!));
            if (inUse > 0)
            {
                throw new IpamException(IpamErrorKind.InUse,
                    $"pool {pool} still has {inUse} address(es) allocated; release them first (calicosharpctl ipam show --show-blocks)");
            }

            // One transaction: the pool, its (empty) blocks and their affinities, each compared.
            var compares = new List<KvCompare> { new(e.Key, e.ModRevision) };
            var ops = new List<KvOp> { KvOp.Delete(e.Key) };
            foreach (var b in blocks)
            {
                compares.Add(new(Keys.Block(b.Cidr), b.Rev));
                ops.Add(KvOp.Delete(Keys.Block(b.Cidr)));
                if (Keys.NodeOfAffinity(b.Block!.Affinity) is { } node)
                {
                    ops.Add(KvOp.Delete(Keys.Affinity(node, b.Cidr)));
                }
            }

            var r = await store.TxnAsync(compares, ops, t).ConfigureAwait(false);
            if (!r.Succeeded)
            {
                throw new IpamException(IpamErrorKind.Conflict, $"pool {name} changed while deleting it (an address may just have been allocated); try again");
            }

            return true;
        }, ct);

    public Task<IpamConfig> GetConfigAsync(CancellationToken ct = default) =>
        RunAsync("reading IPAM config", async t => ConfigFrom(await store.ListAsync(Keys.Config, keysOnly: false, t).ConfigureAwait(false) is var l && l.Count > 0 && l[0].Key == Keys.Config ? [l[0]] : []), ct);

    /// <summary>Changes the IPAM config; null arguments keep the current value.</summary>
    public Task<IpamConfig> ConfigureAsync(bool? strictAffinity, int? maxBlocksPerHost, bool? autoAllocateBlocks = null, CancellationToken ct = default)
    {
        if (maxBlocksPerHost is < 0)
        {
            throw new IpamException(IpamErrorKind.InvalidArgument, $"max blocks per host must be 0 (default, {IpamConfig.DefaultMaxBlocksPerHost}) or more, not {maxBlocksPerHost}");
        }

        return RunAsync("writing IPAM config", async t =>
        {
            for (int attempt = 0; attempt < options.MaxAttempts; attempt++)
            {
                var e = await store.GetAsync(Keys.Config, t).ConfigureAwait(false);
                var config = e is null ? IpamConfig.Defaults : RecordJson.DecodeConfig(e.Value, e.Key);
                config.StrictAffinity = strictAffinity ?? config.StrictAffinity;
                config.MaxBlocksPerHost = maxBlocksPerHost ?? config.MaxBlocksPerHost;
                config.AutoAllocateBlocks = autoAllocateBlocks ?? config.AutoAllocateBlocks;
                var r = await store.TxnAsync([new(Keys.Config, e?.ModRevision ?? 0)], [KvOp.Put(Keys.Config, RecordJson.Encode(config))], t).ConfigureAwait(false);
                if (r.Succeeded)
                {
                    return config;
                }
            }

            throw Conflict("writing IPAM config");
        }, ct);
    }
}
