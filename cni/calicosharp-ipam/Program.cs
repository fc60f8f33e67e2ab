using CalicoSharp.Cni;

// calicosharp-ipam: the CNI IPAM plugin; everything but the process boundary lives in CalicoSharp.Cni.
return await Plugin.MainAsync(PluginKind.Ipam).ConfigureAwait(false);
