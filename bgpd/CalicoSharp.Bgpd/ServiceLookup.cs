using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CalicoSharp.Netlink;
using CalicoSharp.Proto;
using CalicoSharp.ServiceNat;
using Grpc.Core;

namespace CalicoSharp.Bgpd;

/// <summary>
/// Reads the NAT rules kube-proxy programmed on this node — iptables' nat and filter tables chain by chain as the packet
/// enters them (iptables -t nat -S CHAIN; ip6tables for IPv6), nft -j list table ip|ip6 kube-proxy — and evaluates them
/// for one connection. bgpd never writes them.
/// </summary>
public static class ServiceLookup
{
    private static readonly string[] IptablesTables = ["nat", "filter"];

    /// <summary>Runs a command and returns (exit code, stdout, stderr); null when the command is not installed.</summary>
    public delegate (int Exit, string Out, string Err)? CommandRunner(string file, params string[] args);

    public static (int Exit, string Out, string Err)? Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        try
        {
            using Process p = Process.Start(psi)!;
            // stderr on a thread of its own: an async read would complete on the thread pool, which a trace keeps busy.
            string err = "";
            var errors = new Thread(() => err = p.StandardError.ReadToEnd()) { IsBackground = true, Name = "stderr" };
            errors.Start();
            string output = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            errors.Join();
            return (p.ExitCode, output, err);
        }
        catch (Win32Exception)
        {
            return null;
        }
    }

    /// <summary>The node's rule sets for one address family, with what was read and what could not be. iptables tables are
    /// read chain by chain as the evaluation enters them (see <see cref="IptablesChainReader"/>): <paramref name="readers"/>
    /// say afterwards what they read.</summary>
    public static (List<NatTable> Tables, List<string> Sources, List<string> Notes) Read(AddressFamily family, CommandRunner run, out List<IptablesChainReader> readers)
    {
        ArgumentNullException.ThrowIfNull(run);
        var tables = new List<NatTable>();
        var sources = new List<string>();
        var notes = new List<string>();
        string iptables = family == AddressFamily.InterNetworkV6 ? "ip6tables" : "iptables";
        readers = [];
        string fam = family == AddressFamily.InterNetworkV6 ? "ip6" : "ip";
        // The nftables table is listed while iptables' built-in chains are (nft fills its cache from the whole ruleset,
        // iptables-nft's tables included, even when kube-proxy's table is not there).
        var nftWall = Stopwatch.StartNew();
        Task<(int Exit, string Out, string Err)?> nftables = Task.Factory.StartNew(() => run("nft", "-j", "list", "table", fam, "kube-proxy"),
            CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        // Both tables' built-in chains are listed at once, in parallel.
        List<IptablesChainReader> opened = [.. IptablesTables.Select(t =>
            IptablesChainReader.Open(iptables, t, family, (table, chain) => run(iptables, "-t", table, "-S", chain)))];
        foreach (IptablesChainReader reader in opened)
        {
            if (reader.ReadBuiltins() is { } error)
            {
                string note = reader.Installed ? $"{reader.Table.Name}: {error}" : error;
                if (!notes.Contains(note))
                {
                    notes.Add(note);
                }
            }
            else if (reader.Table.RuleCount > 0)
            {
                tables.Add(reader.Table);
                readers.Add(reader);
            }
        }
        (int Exit, string Out, string Err)? n = nftables.GetAwaiter().GetResult();
        double nftMs = nftWall.Elapsed.TotalMilliseconds;
        if (n is null)
        {
            notes.Add("nft is not installed (Debian package nftables): nftables rules not read");
        }
        else if (n.Value.Exit == 0)
        {
            var nsw = Stopwatch.StartNew();
            NatTable table = NftParser.Parse(n.Value.Out);
            tables.Add(table);
            sources.Add($"{table.Name} ({table.RuleCount} rules; nft -j list table {fam} kube-proxy {Format(nftMs)} ms, read {Format(nsw.Elapsed.TotalMilliseconds)} ms)");
        }
        else if (!n.Value.Err.Contains("No such file", StringComparison.Ordinal))
        {
            notes.Add($"nft -j list table {fam} kube-proxy failed: {n.Value.Err.Trim()}");
        }
        return (tables, sources, notes);
    }

    /// <summary>This node's own addresses, for addrtype LOCAL and fib type local.</summary>
    public sealed class KernelContext : INatContext
    {
        private readonly HashSet<IPAddress> _local;

        public KernelContext()
        {
            using RtNetlink nl = RtNetlink.Open();
            _local = [.. nl.ListAddresses().Select(a => a.Address)];
        }

        public IReadOnlyCollection<IPAddress> Addresses => _local;

        public bool IsLocalAddress(IPAddress address) => _local.Contains(address) || IPAddress.IsLoopback(address);
    }

    public static ServiceLookupReply Answer(ServiceLookupRequest request, string nodeName, CommandRunner run, Func<INatContext> context, IPAddress? nodeAddress)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(context);
        if (!IPAddress.TryParse(request.Address, out IPAddress? address))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"'{request.Address}' is not an IP address"));
        }
        string proto = request.Protocol.ToLowerInvariant();
        if (proto is not ("tcp" or "udp" or "sctp") || request.Port is 0 or > 65535)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, $"'{request.Port}/{request.Protocol}': a Service port is 1-65535 over tcp, udp or sctp"));
        }
        var sw = Stopwatch.StartNew();
        List<NatTable> tables;
        List<string> sources, notes;
        List<IptablesChainReader> readers;
        try
        {
            (tables, sources, notes) = Read(address.AddressFamily, run, out readers);
        }
        catch (NatParseException e)
        {
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"{nodeName}'s NAT rules could not be read: {e.Message}"));
        }
        INatContext ctx = context();
        double readMs = sw.Elapsed.TotalMilliseconds;
        sw.Restart();
        IPAddress source;
        if (request.Source.Length > 0)
        {
            source = IPAddress.TryParse(request.Source, out IPAddress? s) && s.AddressFamily == address.AddressFamily ? s
                : throw new RpcException(new Status(StatusCode.InvalidArgument, $"source '{request.Source}' is not an address of the same family as {address}"));
        }
        else
        {
            source = request.FromNode && nodeAddress is not null && nodeAddress.AddressFamily == address.AddressFamily ? nodeAddress
                : throw new RpcException(new Status(StatusCode.InvalidArgument, "a source address is needed (or from_node on a node with an address of that family)"));
        }
        var packet = new NatPacket(source, address, proto, (int)request.Port);
        IReadOnlyList<NatOutcome> outcomes;
        try
        {
            outcomes = NatEvaluator.Evaluate(tables, packet, request.FromNode, ctx);
        }
        catch (NatParseException e)
        {
            // A chain's rules are read when the packet first enters it.
            throw new RpcException(new Status(StatusCode.FailedPrecondition, $"{nodeName}'s NAT rules could not be read: {e.Message}"));
        }
        // What the chain-by-chain reads cost, now that the evaluation has entered every chain it needed.
        sources.InsertRange(0, readers.Select(r => string.Create(CultureInfo.InvariantCulture,
            $"{r.Table.Name} ({r.ChainsRead} chains read with {r.Command} CHAIN, {r.Table.RuleCount} rules; {Format(r.WaitMs)} ms waiting for them)")));
        ServiceAnswer answer = ServiceView.Interpret(outcomes, packet, nodeName);
        var reply = new ServiceLookupReply
        {
            NodeName = nodeName,
            ServicePort = answer.ServicePort ?? "",
            Kind = answer.Kind ?? "",
            Summary = answer.Summary,
            Problem = answer.Problem ?? "",
            ReadMs = readMs,
        };
        reply.RuleSources.AddRange(sources);
        reply.Notes.AddRange(notes);
        foreach (ServicePath p in answer.Paths)
        {
            var path = new ServicePathReply
            {
                Probability = p.Probability,
                Fate = p.Fate switch
                {
                    NatFate.Forwarded => "forwarded",
                    NatFate.DeliveredLocally => "local",
                    NatFate.Dropped => "dropped",
                    NatFate.Rejected => "rejected",
                    _ => "unchecked",
                },
                Destination = p.Destination.ToString(),
                DestinationPort = (uint)p.Port,
                Dnat = p.Dnat,
                Masquerade = p.Masquerade,
                MasqueradeReason = p.MasqueradeReason ?? "",
                Summary = p.Summary,
            };
            path.Steps.AddRange(p.Steps.Select(s => new NatRuleStep { Table = s.Table, Chain = s.Chain, Rule = s.Rule, Text = s.Text, Comment = s.Comment ?? "" }));
            reply.Paths.Add(path);
        }
        reply.EvaluateMs = sw.Elapsed.TotalMilliseconds;
        return reply;
    }

    /// <summary>The node's own address of the family (for a connection the node itself makes).</summary>
    public static IPAddress? NodeAddress(uint routerId, AddressFamily family, INatContext ctx)
    {
        if (family == AddressFamily.InterNetwork)
        {
            return new IPAddress(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(routerId));
        }
        return ctx is KernelContext k ? k.Addresses.FirstOrDefault(a => a.AddressFamily == family && !a.IsIPv6LinkLocal && !IPAddress.IsLoopback(a)) : null;
    }

    internal static string Format(double ms) => ms.ToString("0.0", CultureInfo.InvariantCulture);
}
