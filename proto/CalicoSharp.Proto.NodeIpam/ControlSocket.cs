namespace CalicoSharp.Proto;

/// <summary>Where bgpd serves its contracts (bgpd.proto, nodeipam.proto), for bgpd, the CLI and the CNI plugin alike.</summary>
public static class ControlSocket
{
    public const string Default = "/run/calicosharp/bgpd.sock";
}
