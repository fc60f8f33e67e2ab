using System.Globalization;
using System.Text;

namespace CalicoSharp.Bgpd;

/// <summary>
/// What the process itself costs, under the names Prometheus client libraries give these figures
/// (<c>process_*</c> as the Go and Python clients write them, <c>dotnet_*</c> as prometheus-net does), so existing
/// dashboards read them: CPU and resident memory from the kernel, the garbage collector's heap, collections and
/// allocations from the runtime. Read when scraped; nothing is kept between scrapes.
/// </summary>
internal static class ProcessMetrics
{
    public static void Render(StringBuilder sb, Action<string, string, string> metric)
    {
        ArgumentNullException.ThrowIfNull(sb);
        ArgumentNullException.ThrowIfNull(metric);
        metric("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.");
        sb.Append(CultureInfo.InvariantCulture, $"process_cpu_seconds_total {Environment.CpuUsage.TotalTime.TotalSeconds:0.###}\n");
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes (RSS: code, heap and everything else mapped in).");
        sb.Append(CultureInfo.InvariantCulture, $"process_resident_memory_bytes {ResidentBytes()}\n");
        metric("dotnet_gc_heap_size_bytes", "gauge", "The garbage-collected heap's size after the last collection, in bytes (live objects and fragmentation).");
        sb.Append(CultureInfo.InvariantCulture, $"dotnet_gc_heap_size_bytes {GC.GetGCMemoryInfo().HeapSizeBytes}\n");
        metric("dotnet_gc_collections_total", "counter", "Garbage collections by generation (a collection of generation 2 also counts in 1 and 0).");
        for (int g = 0; g <= GC.MaxGeneration; g++)
        {
            sb.Append(CultureInfo.InvariantCulture, $"dotnet_gc_collections_total{{generation=\"{g}\"}} {GC.CollectionCount(g)}\n");
        }
        metric("dotnet_gc_allocated_bytes_total", "counter", "Bytes allocated on the garbage-collected heap since the process started.");
        sb.Append(CultureInfo.InvariantCulture, $"dotnet_gc_allocated_bytes_total {GC.GetTotalAllocatedBytes(precise: false)}\n");
    }

    /// <summary>RSS from /proc/self/statm (its second field, in pages); 0 where there is no procfs.</summary>
    private static long ResidentBytes()
    {
        try
        {
            string statm = File.ReadAllText("/proc/self/statm");
            string[] f = statm.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return long.Parse(f[1], CultureInfo.InvariantCulture) * Environment.SystemPageSize;
        }
        catch (IOException)
        {
            return 0;
        }
    }
}
