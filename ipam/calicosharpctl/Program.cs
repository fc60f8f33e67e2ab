using System.CommandLine;
using CalicoSharp.Ctl;
using CalicoSharp.Ipam;

return await Cli.RunAsync(args, Console.Out, Console.Error).ConfigureAwait(false);
