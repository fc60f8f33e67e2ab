using CalicoSharp.Testing;

namespace CalicoSharp.Bgpd.Tests;

/// <summary>A bgppeer's changed password is applied (issue 16, finding 4): the session is made again with the new TCP
/// MD5 key, refuses a peer still on the old one, and comes back once the peer has the new one.</summary>
[Trait("Category", "Privileged")]
public class PasswordLabTests
{
    [Fact]
    public async Task A_changed_password_takes_the_session_down_with_the_old_key_and_up_with_the_new()
    {
        string torPassword = "old-secret";
        await using BgpLab lab = await BgpLab.StartAsync(TorModel.AsPerComputeServer, 1, l =>
        {
            l.TorPeerExtra = _ => $"password \"{torPassword}\";";
            l.PeerSpecExtra = _ => ",\"password\":\"old-secret\"";
        });
        LabNode n1 = lab.Nodes[0];
        bool Established() => lab.Bird!.Birdc("show protocols node1").Contains("Established", StringComparison.Ordinal);
        await BgpLab.WaitAsync(Established, "the MD5 session with the old password", 60, lab.Diagnostics);

        // bgpd gets the new password, the ToR keeps the old one: the session goes and stays down.
        await lab.PutAsync("/calico/resources/v3/projectcalico.org/bgppeers/tor-node1",
            $$$"""{"kind":"BGPPeer","apiVersion":"projectcalico.org/v3","metadata":{"name":"tor-node1"},"spec":{"node":"node1","peerIP":"{{{n1.TorAddress}}}","asNumber":{{{BgpLab.TorAsPerCompute}}},"password":"new-secret"}}""");
        await BgpLab.WaitAsync(() => !Established(), "the session down once bgpd has the new password", 30, lab.Diagnostics);
        await Task.Delay(5000);
        Assert.False(Established(), lab.Diagnostics());

        // The ToR gets it too: the session comes back with the new key.
        torPassword = "new-secret";
        lab.Bird!.Reconfigure(lab.TorConfig());
        await BgpLab.WaitAsync(Established, "the session with the new password", 60, lab.Diagnostics);
    }
}
