namespace CalicoSharp.Testing;

/// <summary>Finds the repository and built artefacts from a test's output directory.</summary>
public static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "CalicoSharp.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("CalicoSharp.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The built dll of a project (same configuration as the tests), run with 'dotnet'.</summary>
    public static string ProjectDll(string relativeProjectDir, string assemblyName)
    {
        var config = AppContext.BaseDirectory.Contains("/Release/", StringComparison.Ordinal) ? "Release" : "Debug";
        var path = Path.Combine(Root, relativeProjectDir, "bin", config, "net10.0", assemblyName + ".dll");
        return File.Exists(path) ? path : throw new FileNotFoundException($"{path} is not built; run 'make build'", path);
    }
}
