using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using CalicoSharp.Ipam;

namespace CalicoSharp.Cni;

public sealed record CniInterface(string Name, string? Mac, string? Sandbox, int? Mtu = null);

/// <summary>An address with its prefix ("10.244.1.7/32"), its gateway, and the index of its interface.</summary>
public sealed record CniIp(IPAddress Address, int PrefixLength, IPAddress? Gateway, int? Interface)
{
    public bool IsIPv6 => Address.AddressFamily == AddressFamily.InterNetworkV6;

    public string Cidr => $"{Address}/{Inv.S(PrefixLength)}";
}

public sealed record CniRoute(IpNet Destination, IPAddress? Gateway);

/// <summary>A CNI result, version-independent; written in the shape of the version asked for.</summary>
public sealed class CniResult
{
    public List<CniInterface> Interfaces { get; init; } = [];

    public List<CniIp> Ips { get; init; } = [];

    public List<CniRoute> Routes { get; init; } = [];

    /// <summary>The dns object as received (raw JSON), passed through.</summary>
    public string? Dns { get; init; }

    /// <summary>Reads a result of any supported version (0.3.x/0.4.0 "ips" carry a "version" field; 1.x do not).</summary>
    public static CniResult Parse(JsonElement e)
    {
        var r = new CniResult();
        try
        {
            if (e.TryGetProperty("interfaces", out var ifs) && ifs.ValueKind == JsonValueKind.Array)
            {
                foreach (var i in ifs.EnumerateArray())
                {
                    r.Interfaces.Add(new CniInterface(NetConf.Str(i, "name") ?? string.Empty, NetConf.Str(i, "mac"), NetConf.Str(i, "sandbox"),
                        i.TryGetProperty("mtu", out var m) && m.TryGetInt32(out var mtu) ? mtu : null));
                }
            }

            if (e.TryGetProperty("ips", out var ips) && ips.ValueKind == JsonValueKind.Array)
            {
                foreach (var ip in ips.EnumerateArray())
                {
                    var cidr = NetConf.Str(ip, "address") ?? throw new CniException(CniCode.DecodingFailure, "a result's ip has no address");
                    var slash = cidr.IndexOf('/', StringComparison.Ordinal);
                    if (slash < 0 || !IPAddress.TryParse(cidr.AsSpan(0, slash), out var addr) || !int.TryParse(cidr.AsSpan(slash + 1), out var len))
                    {
                        throw new CniException(CniCode.DecodingFailure, $"a result's ip address '{cidr}' is not address/prefix");
                    }

                    IPAddress? gw = NetConf.Str(ip, "gateway") is { } g ? IPAddress.Parse(g) : null;
                    int? index = ip.TryGetProperty("interface", out var ie) && ie.TryGetInt32(out var n) ? n : null;
                    r.Ips.Add(new CniIp(addr, len, gw, index));
                }
            }

            if (e.TryGetProperty("routes", out var routes) && routes.ValueKind == JsonValueKind.Array)
            {
                foreach (var rt in routes.EnumerateArray())
                {
                    var dst = IpNet.Parse(NetConf.Str(rt, "dst") ?? throw new CniException(CniCode.DecodingFailure, "a result's route has no dst"), strict: false);
                    r.Routes.Add(new CniRoute(dst, NetConf.Str(rt, "gw") is { } g ? IPAddress.Parse(g) : null));
                }
            }
        }
        catch (FormatException ex)
        {
            throw new CniException(CniCode.DecodingFailure, "a result could not be read", ex.Message);
        }

        return new CniResult
        {
            Interfaces = r.Interfaces,
            Ips = r.Ips,
            Routes = r.Routes,
            Dns = e.TryGetProperty("dns", out var dns) && dns.ValueKind == JsonValueKind.Object ? dns.GetRawText() : null,
        };
    }

    public static CniResult Parse(byte[] json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return Parse(doc.RootElement);
        }
        catch (JsonException e)
        {
            throw new CniException(CniCode.DecodingFailure, "a result is not valid JSON", e.Message);
        }
    }

    /// <summary>The result as the spec's JSON for <paramref name="version"/>.</summary>
    public byte[] ToJson(string version)
    {
        bool legacy = version is "0.3.0" or "0.3.1" or "0.4.0";
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, JsonOut.Options))
        {
            w.WriteStartObject();
            w.WriteString("cniVersion", version);
            if (Interfaces.Count > 0)
            {
                w.WriteStartArray("interfaces");
                foreach (var i in Interfaces)
                {
                    w.WriteStartObject();
                    w.WriteString("name", i.Name);
                    if (i.Mac is not null)
                    {
                        w.WriteString("mac", i.Mac);
                    }

                    if (i.Mtu is { } mtu && version == "1.1.0")
                    {
                        w.WriteNumber("mtu", mtu);
                    }

                    if (i.Sandbox is not null)
                    {
                        w.WriteString("sandbox", i.Sandbox);
                    }

                    w.WriteEndObject();
                }

                w.WriteEndArray();
            }

            w.WriteStartArray("ips");
            foreach (var ip in Ips)
            {
                w.WriteStartObject();
                if (legacy)
                {
                    w.WriteString("version", ip.IsIPv6 ? "6" : "4");
                }

                if (ip.Interface is { } idx)
                {
                    w.WriteNumber("interface", idx);
                }

                w.WriteString("address", ip.Cidr);
                if (ip.Gateway is not null)
                {
                    w.WriteString("gateway", ip.Gateway.ToString());
                }

                w.WriteEndObject();
            }

            w.WriteEndArray();
            if (Routes.Count > 0)
            {
                w.WriteStartArray("routes");
                foreach (var r in Routes)
                {
                    w.WriteStartObject();
                    w.WriteString("dst", r.Destination.ToString());
                    if (r.Gateway is not null)
                    {
                        w.WriteString("gw", r.Gateway.ToString());
                    }

                    w.WriteEndObject();
                }

                w.WriteEndArray();
            }

            w.WritePropertyName("dns");
            if (Dns is not null)
            {
                w.WriteRawValue(Dns);
            }
            else
            {
                w.WriteStartObject();
                w.WriteEndObject();
            }

            w.WriteEndObject();
        }

        return ms.ToArray();
    }
}
