using System.Globalization;

namespace CalicoSharp.Cni;

/// <summary>Appends lines to the configured log file (never stdout: stdout is the result).</summary>
public sealed class Log
{
    private readonly string? path;
    private readonly int threshold;
    private readonly string prefix;
    private readonly Lock gate = new();

    public Log(string? path, string level, string prefix)
    {
        this.path = path;
        this.prefix = prefix;
        threshold = Rank(level);
    }

    public static Log None { get; } = new(null, "error", string.Empty);

    public void Debug(string message) => Write(0, "debug", message);

    public void Info(string message) => Write(1, "info", message);

    public void Warning(string message) => Write(2, "warning", message);

    public void Error(string message) => Write(3, "error", message);

    private static int Rank(string level) => level switch
    {
        "debug" => 0,
        "info" => 1,
        "warn" or "warning" => 2,
        "error" => 3,
        _ => 1,
    };

    private void Write(int rank, string level, string message)
    {
        if (path is null || rank < threshold)
        {
            return;
        }

        try
        {
            var dir = Path.GetDirectoryName(path);
            if (!string.IsNullOrEmpty(dir))
            {
                Directory.CreateDirectory(dir);
            }

            // IPAM and the dataplane work on two threads during ADD: one line at a time.
            lock (gate)
            {
                File.AppendAllText(path, string.Create(CultureInfo.InvariantCulture, $"{DateTime.UtcNow:yyyy-MM-dd HH:mm:ss.fff} [{level}] {prefix}{message}\n"));
            }
        }
        catch (IOException)
        {
            // Logging must never fail a pod.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
