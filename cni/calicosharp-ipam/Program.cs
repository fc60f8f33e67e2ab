using CalicoSharp.Cni;

// calicosharp-ipam: the CNI IPAM plugin; everything but the process boundary lives in CalicoSharp.Cni.
// The process ends as soon as its answer is written.
Plugin.EndProcess(await Plugin.MainAsync(PluginKind.Ipam).ConfigureAwait(false));
