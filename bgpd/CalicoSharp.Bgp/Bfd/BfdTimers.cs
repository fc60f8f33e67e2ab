namespace CalicoSharp.Bgp.Bfd;

/// <summary>
/// What this system asks of one BFD session (RFC 5880 §6.8.1): the fastest it wants to send
/// (bfd.DesiredMinTxInterval while Up), the fastest it can receive (bfd.RequiredMinRxInterval), the rate while the
/// session is not Up, and the detect multiplier. Calico Enterprise's BFDConfiguration names them
/// <c>minimumSendInterval</c>, <c>minimumRecvInterval</c>, <c>idleSendInterval</c> and <c>multiplier</c>.
/// </summary>
public sealed record BfdTimers(TimeSpan MinTx, TimeSpan MinRx, TimeSpan IdleTx, byte Multiplier)
{
    /// <summary>Calico Enterprise's defaults: 100 ms send, 10 ms receive, 1 min idle, multiplier 5.</summary>
    public static BfdTimers Default { get; } = new(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(10), TimeSpan.FromMinutes(1), 5);

    /// <summary>RFC 5880 §6.8.3: while the session is not Up, no faster than one packet a second.</summary>
    public static readonly TimeSpan SlowestIdleMinimum = TimeSpan.FromSeconds(1);

    /// <summary>The largest interval the 32-bit microsecond fields carry.</summary>
    public static readonly TimeSpan MaxInterval = TimeSpan.FromTicks(uint.MaxValue * TimeSpan.TicksPerMicrosecond);

    /// <summary>Throws <see cref="ArgumentException"/> naming the first value that cannot be used.</summary>
    public void Validate()
    {
        if (MinTx < TimeSpan.FromMilliseconds(1) || MinTx > MaxInterval)
        {
            throw new ArgumentException($"minimumSendInterval {Format(MinTx)}: must be between 1ms and {Format(MaxInterval)}");
        }
        if (MinRx < TimeSpan.FromMilliseconds(1) || MinRx > MaxInterval)
        {
            throw new ArgumentException($"minimumRecvInterval {Format(MinRx)}: must be between 1ms and {Format(MaxInterval)}");
        }
        if (IdleTx < SlowestIdleMinimum || IdleTx > MaxInterval)
        {
            throw new ArgumentException($"idleSendInterval {Format(IdleTx)}: must be at least 1s (RFC 5880 §6.8.3: no faster than one packet a second until the session is Up)");
        }
        if (Multiplier == 0)
        {
            throw new ArgumentException("multiplier 0: must be 1-255");
        }
    }

    internal static uint Micros(TimeSpan t) => (uint)Math.Clamp(t.Ticks / TimeSpan.TicksPerMicrosecond, 1, uint.MaxValue);

    public static string Format(TimeSpan t) => t.TotalSeconds >= 1 && t.Ticks % TimeSpan.TicksPerSecond == 0 ? $"{t.TotalSeconds:0}s" : $"{t.TotalMilliseconds:0.###}ms";

    public override string ToString() => $"tx {Format(MinTx)}, rx {Format(MinRx)}, idle {Format(IdleTx)}, multiplier {Multiplier}";
}
