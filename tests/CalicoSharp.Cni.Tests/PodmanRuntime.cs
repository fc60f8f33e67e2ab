using System.Diagnostics;
using System.Formats.Tar;
using System.Globalization;
using System.Text.Json;
using CalicoSharp.Testing;

namespace CalicoSharp.Cni.Tests;

/// <summary>One container as podman reports it after starting it.</summary>
internal sealed record PodmanContainer(string Name, string Id, string Address, string SandboxKey, int ConmonPid);

/// <summary>Debian's podman 4.3 as the container runtime of a lab node: the CNI network backend, runc and
/// cgroupfs, with its config, CNI plugins, network configs, storage and run state in one temporary folder,
/// and every command run in the node's network namespace, so that the plugins it runs work there as on a
/// node. Dispose removes the containers, images, mounts, leftover processes and the folder, pass or fail,
/// and the host places podman writes whatever its config says when this runtime made them.</summary>
internal sealed class PodmanRuntime : IDisposable
{
    /// <summary>libcni's cache of each attachment (its config and result, which DEL is given back): podman 4.3
    /// (containers/common 0.50) keeps libcni's default place, and no setting moves it.</summary>
    public const string CniCacheDir = "/var/lib/cni/results";

    /// <summary>runc's state: podman gives runc no --root, so runc keeps its default for root.</summary>
    public const string RuncStateDir = "/run/runc";

    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(60);

    // The places podman writes outside the folders its config names: libcni's cache, runc's state and
    // containers/image's blob-info cache (/var/lib/containers/cache for root).
    private static readonly string[] HostPlaces = ["/var/lib/cni", RuncStateDir, "/var/lib/containers"];

    private readonly TestNetns node;
    private readonly string[] madeHostPlaces;
    private readonly List<PodmanContainer> started = [];
    private readonly Dictionary<string, string?> env;

    public PodmanRuntime(TestNetns node)
    {
        this.node = node;
        madeHostPlaces = [.. HostPlaces.Where(p => !Directory.Exists(p))];
        Dir = Directory.CreateTempSubdirectory("calicosharp-podman-").FullName;
        foreach (var d in new[] { PluginDir, NetworkDir, StorageRoot, RunRoot, TmpDir, ImageTmpDir })
        {
            Directory.CreateDirectory(d);
        }

        File.WriteAllText(ConfFile, ContainersConf());
        env = new() { ["CONTAINERS_CONF"] = ConfFile };
    }

    /// <summary>The folder that holds everything of this runtime.</summary>
    public string Dir { get; }

    public string PluginDir => Path.Combine(Dir, "cni-bin");

    public string NetworkDir => Path.Combine(Dir, "net.d");

    private string ConfFile => Path.Combine(Dir, "containers.conf");

    private string StorageRoot => Path.Combine(Dir, "root");

    private string RunRoot => Path.Combine(Dir, "runroot");

    private string TmpDir => Path.Combine(Dir, "tmp");

    private string ImageTmpDir => Path.Combine(Dir, "image-tmp");

    /// <summary>The cgroup (cgroupfs) under which the containers' cgroups go, one of this runtime's own.</summary>
    public string CgroupParent => "/" + Path.GetFileName(Dir);

    private string ContainersConf() => $$"""
        # podman as a node runtime for CalicoSharp's lab: nothing here is read from /etc or written to /var.
        [containers]
        log_driver = "k8s-file"
        # conmon stays in the caller's cgroup, and each container's cgroup goes under a parent of this runtime's
        # own (run --cgroup-parent): podman's libpod_parent and libpod_parent/conmon would outlive the runtime.
        cgroups = "no-conmon"
        # As root, podman raises a container's open-file and process limits to 1048576; root on this machine
        # may lack CAP_SYS_RESOURCE, and runc then fails with "error setting rlimit". Stay below any hard limit.
        default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

        [network]
        network_backend = "cni"
        cni_plugin_dirs = ["{{PluginDir}}"]
        network_config_dir = "{{NetworkDir}}"

        [engine]
        runtime = "runc"
        cgroup_manager = "cgroupfs"
        events_logger = "file"
        events_logfile_path = "{{Path.Combine(TmpDir, "events.log")}}"
        tmp_dir = "{{TmpDir}}"
        image_copy_tmp_dir = "{{ImageTmpDir}}"
        # File locks live in tmp_dir; the default shm locks would be /dev/shm/libpod_lock, shared by every podman.
        lock_type = "file"
        static_dir = "{{Path.Combine(StorageRoot, "libpod")}}"
        volume_path = "{{Path.Combine(StorageRoot, "volumes")}}"
        """;

    /// <summary>Puts an executable plugin script into the runtime's plugin folder.</summary>
    public void AddPluginScript(string name, string script)
    {
        var path = Path.Combine(PluginDir, name);
        File.WriteAllText(path, script);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    /// <summary>Makes an installed plugin (e.g. the reference portmap in /usr/lib/cni) available to the runtime.</summary>
    public void AddPlugin(string name, string installedPath) => File.CreateSymbolicLink(Path.Combine(PluginDir, name), installedPath);

    public void AddNetworkConfig(string fileName, string json) => File.WriteAllText(Path.Combine(NetworkDir, fileName), json);

    /// <summary>podman with this runtime's config and storage, in the node's network namespace. nsenter and not
    /// 'ip netns exec': that one also gives each command a mount namespace of its own, where podman's bind
    /// mount of a container's network namespace (under /run/netns) would stay, unseen by the next podman
    /// command and by the host.</summary>
    public Task<ProcessResult> RunAsync(params string[] args) =>
        ProcessRunner.RunAsync("nsenter", ["--net=" + node.Path, "podman", "--root", StorageRoot, "--runroot", RunRoot, "--storage-driver", "vfs", .. args], CommandTimeout, env);

    /// <summary><see cref="RunAsync"/>, which must succeed; returns its output.</summary>
    public async Task<string> MustAsync(params string[] args)
    {
        var r = await RunAsync(args);
        Assert.True(r.ExitCode == 0, $"podman {string.Join(' ', args)} exited {r.ExitCode}: {r.Stderr.Trim()} {r.Stdout.Trim()}");
        return r.Stdout.Trim();
    }

    public Task<ProcessResult> ExecAsync(string container, params string[] command) => RunAsync(["exec", container, .. command]);

    /// <summary>An image made of Debian's busybox-static (no registry is reachable): /bin/busybox and a symlink per
    /// applet, PATH=/bin.</summary>
    public async Task ImportBusyboxAsync(string reference)
    {
        const string busybox = "/bin/busybox";
        var list = await ProcessRunner.RunAsync(busybox, ["--list"], CommandTimeout);
        Assert.True(list.ExitCode == 0, $"{busybox} --list: {list.Stderr}");
        var tarPath = Path.Combine(ImageTmpDir, "busybox-rootfs.tar");
        await using (var file = File.Create(tarPath))
        await using (var tar = new TarWriter(file, TarEntryFormat.Pax))
        {
            const UnixFileMode dirMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
                UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute;
            await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.Directory, "bin/") { Mode = dirMode });
            await tar.WriteEntryAsync(busybox, "bin/busybox");

            // The list names busybox itself, whose link would replace the binary.
            foreach (var applet in list.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Where(a => a != "busybox"))
            {
                await tar.WriteEntryAsync(new PaxTarEntry(TarEntryType.SymbolicLink, "bin/" + applet) { LinkName = "busybox", Mode = dirMode });
            }
        }

        await MustAsync("import", "--change", "ENV PATH=/bin", tarPath, reference);
    }

    /// <summary>Starts a container running 'sleep' on <paramref name="network"/> and reads back what podman
    /// knows of it.</summary>
    public async Task<PodmanContainer> StartAsync(string name, string image, string network, params string[] options)
    {
        var id = await MustAsync(["run", "--detach", "--name", name, "--cgroup-parent", CgroupParent, "--network", network, .. options, image, "sleep", "600"]);
        using var doc = JsonDocument.Parse(await MustAsync("inspect", id));
        var c = doc.RootElement[0];
        var settings = c.GetProperty("NetworkSettings");
        var container = new PodmanContainer(
            name,
            c.GetProperty("Id").GetString()!,
            settings.GetProperty("Networks").GetProperty(network).GetProperty("IPAddress").GetString()!,
            settings.GetProperty("SandboxKey").GetString()!,
            c.GetProperty("State").GetProperty("ConmonPid").GetInt32());
        started.Add(container);
        return container;
    }

    /// <summary>Live processes of this runtime: conmon and the cleanup commands it starts name the runtime's
    /// folder on their command lines (zombies have none: they are gone but for their parent's wait).</summary>
    public IReadOnlyList<(int Pid, string CommandLine)> OwnProcesses()
    {
        var own = new List<(int, string)>();
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
            {
                continue;
            }

            try
            {
                var cmdline = File.ReadAllText(Path.Combine(d, "cmdline")).Replace('\0', ' ');
                if (cmdline.Contains(Dir, StringComparison.Ordinal))
                {
                    own.Add((pid, cmdline));
                }
            }
            catch (IOException)
            {
                // The process ended while we looked.
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return own;
    }

    /// <summary>Waits, bounded, for this runtime's processes to end (conmon and its cleanup commands finish
    /// shortly after their container is removed); returns those still there.</summary>
    public async Task<IReadOnlyList<(int Pid, string CommandLine)>> WaitForOwnProcessesAsync(TimeSpan bound)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var own = OwnProcesses();
            if (own.Count == 0 || sw.Elapsed > bound)
            {
                return own;
            }

            await Task.Delay(100);
        }
    }

    /// <summary>The cgroups at or under <see cref="CgroupParent"/> in every hierarchy, deepest first.</summary>
    public IReadOnlyList<string> Cgroups()
    {
        // cgroup v1 mounts one hierarchy per folder of /sys/fs/cgroup; v2 has one, /sys/fs/cgroup itself.
        var roots = Directory.GetDirectories("/sys/fs/cgroup").Append("/sys/fs/cgroup");
        return [.. roots.Select(r => r + CgroupParent).Where(Directory.Exists)
            .SelectMany(p => Directory.EnumerateDirectories(p, "*", SearchOption.AllDirectories).Append(p))
            .OrderByDescending(d => d.Length)];
    }

    /// <summary>Mount points on this machine at or under <paramref name="path"/>, deepest first.</summary>
    public static IReadOnlyList<string> MountsUnder(string path) =>
        [.. File.ReadAllLines("/proc/self/mountinfo")
            .Select(l => l.Split(' ')[4].Replace("\\040", " ", StringComparison.Ordinal))
            .Where(m => m == path || m.StartsWith(path.TrimEnd('/') + "/", StringComparison.Ordinal))
            .OrderByDescending(m => m.Length)];

    public void Dispose()
    {
        // podman first: it stops the containers, tears their networks down (CNI DEL) and unmounts their storage.
        Attempt(() => RunAsync("rm", "--all", "--force", "--time", "0"));
        Attempt(() => RunAsync("rmi", "--all", "--force"));

        // Then what podman could not remove: containers runc still holds, this runtime's processes, mounts.
        foreach (var c in started.Where(c => Directory.Exists(Path.Combine(RuncStateDir, c.Id))))
        {
            Attempt(() => ProcessRunner.RunAsync("runc", ["delete", "--force", c.Id], CommandTimeout));
        }

        foreach (var (pid, _) in WaitForOwnProcessesAsync(TimeSpan.FromSeconds(10)).GetAwaiter().GetResult())
        {
            try
            {
                using var p = Process.GetProcessById(pid);
                p.Kill();
                p.WaitForExit(5000);
            }
            catch (ArgumentException)
            {
                // Ended meanwhile.
            }
            catch (InvalidOperationException)
            {
            }
        }

        foreach (var mount in started.SelectMany(c => MountsUnder(c.SandboxKey)).Concat(MountsUnder(Dir)))
        {
            Attempt(() => ProcessRunner.RunAsync("umount", ["--lazy", mount], CommandTimeout));
        }

        foreach (var c in started.Where(c => c.SandboxKey.StartsWith("/run/netns/", StringComparison.Ordinal)))
        {
            File.Delete(c.SandboxKey);
        }

        foreach (var cgroup in Cgroups())
        {
            // rmdir: a cgroup's control files go with it, and one with processes left stays (and says so).
            try
            {
                Directory.Delete(cgroup);
            }
            catch (IOException)
            {
            }
        }

        Directory.Delete(Dir, recursive: true);
        foreach (var place in madeHostPlaces.Where(Directory.Exists))
        {
            Directory.Delete(place, recursive: true);
        }
    }

    /// <summary>A clean-up step that may fail (the thing is already gone); the next steps still run.</summary>
    private static void Attempt(Func<Task<ProcessResult>> step)
    {
        try
        {
            step().GetAwaiter().GetResult();
        }
        catch (TimeoutException)
        {
        }
        catch (InvalidOperationException)
        {
        }
        catch (System.ComponentModel.Win32Exception)
        {
        }
    }
}
