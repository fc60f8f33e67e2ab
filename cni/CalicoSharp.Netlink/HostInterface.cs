using System.Text;

namespace CalicoSharp.Netlink;

/// <summary>Calico's name for a pod's host-side veth, which the CNI plugin creates and bgpd's trace looks up.</summary>
public static class HostInterface
{
    /// <summary>"cali" + the first 11 hex digits of sha1("namespace.pod") when both are known, else "cali" + the
    /// first 11 characters of the container id.</summary>
    public static string Name(string? podNamespace, string? podName, string containerId)
    {
        ArgumentNullException.ThrowIfNull(containerId);
        if (!string.IsNullOrEmpty(podNamespace) && !string.IsNullOrEmpty(podName))
        {
            byte[] hash = Sha1.HashData(Encoding.UTF8.GetBytes($"{podNamespace}.{podName}"));
            return "cali" + Convert.ToHexStringLower(hash)[..11];
        }
        return "cali" + containerId[..Math.Min(11, containerId.Length)];
    }
}
