using System.Reflection;
using CalicoSharp.Netlink;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>Every constant and struct size the netlink layer uses, against the installed kernel headers:
/// a C program prints them, and each must equal ours.</summary>
public class KernelHeaderTests
{
    [Fact]
    public async Task Constants_and_struct_sizes_match_the_kernel_headers()
    {
        var fields = typeof(Nl).GetFields(BindingFlags.Public | BindingFlags.Static).Concat(typeof(Rt).GetFields(BindingFlags.Public | BindingFlags.Static))
            .Where(f => f.IsLiteral && !f.Name.EndsWith("Size", StringComparison.Ordinal) && f.Name != "NETLINK_EXT_ACK" && f.Name != "NETLINK_GET_STRICT_CHK")
            .ToList();
        var sizes = new Dictionary<string, string>
        {
            ["NlMsgHdrSize"] = "struct nlmsghdr",
            ["NlMsgErrSize"] = "struct nlmsgerr",
            ["IfInfoMsgSize"] = "struct ifinfomsg",
            ["IfAddrMsgSize"] = "struct ifaddrmsg",
            ["RtMsgSize"] = "struct rtmsg",
            ["NdMsgSize"] = "struct ndmsg",
            ["RtNextHopSize"] = "struct rtnexthop",
        };
        var dir = Directory.CreateTempSubdirectory("calicosharp-hdr-").FullName;
        try
        {
            var c = new System.Text.StringBuilder();
            c.AppendLine("#include <stdio.h>\n#include <sys/socket.h>\n#include <linux/netlink.h>\n#include <linux/rtnetlink.h>\n#include <linux/if_link.h>\n#include <linux/if_addr.h>\n#include <linux/neighbour.h>\n#include <linux/veth.h>\n#include <linux/if.h>\n#include <linux/ip.h>");
            c.AppendLine("int main(void) {");
            foreach (var f in fields)
            {
                c.AppendLine($"  printf(\"{f.Name} %ld\\n\", (long)({f.Name}));");
            }

            foreach (var (name, type) in sizes)
            {
                c.AppendLine($"  printf(\"{name} %ld\\n\", (long)sizeof({type}));");
            }

            c.AppendLine("  printf(\"NETLINK_EXT_ACK %d\\nNETLINK_GET_STRICT_CHK %d\\n\", NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK);\n  return 0;\n}");
            var src = Path.Combine(dir, "h.c");
            var exe = Path.Combine(dir, "h");
            await File.WriteAllTextAsync(src, c.ToString());
            var cc = await ProcessRunner.RunAsync("cc", ["-o", exe, src], TimeSpan.FromMinutes(1));
            Assert.True(cc.ExitCode == 0, cc.Stderr);
            var run = await ProcessRunner.RunAsync(exe, [], TimeSpan.FromSeconds(10));
            var kernel = run.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ')).ToDictionary(p => p[0], p => long.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));
            var ours = typeof(Nl).GetFields().Concat(typeof(Rt).GetFields()).Where(f => f.IsLiteral)
                .ToDictionary(f => f.Name, f => Convert.ToInt64(f.GetRawConstantValue(), System.Globalization.CultureInfo.InvariantCulture));
            var wrong = kernel.Where(k => ours[k.Key] != k.Value).Select(k => $"{k.Key}: ours {ours[k.Key]}, kernel {k.Value}").ToList();
            Assert.Empty(wrong);
            Assert.Equal(ours.Count, kernel.Count);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
