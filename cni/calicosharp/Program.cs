using CalicoSharp.Cni;

// calicosharp: the CNI plugin; everything but the process boundary lives in CalicoSharp.Cni.
return await Plugin.MainAsync(PluginKind.Network).ConfigureAwait(false);
