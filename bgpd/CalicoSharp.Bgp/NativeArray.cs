using System.Runtime.CompilerServices;
using Tmds.Linux;
using static Tmds.Linux.LibC;

namespace CalicoSharp.Bgp;

/// <summary>
/// A growable array of plain values in its own anonymous mapping, outside the GC heap. The RIB's per-prefix
/// arrays live here because of how they grow: a managed array that doubles leaves the old one on the large
/// object heap until the next full collection (measured: 8-15 MiB of outgrown arrays at the peak of a
/// 1,000,000-route load), and copies every element. <c>mremap</c> moves the pages instead, so the old memory
/// is gone the moment the array grows, nothing is copied, and pages never written are never resident.
/// </summary>
/// <remarks>Not thread-safe; the RIB only touches it from the speaker's loop. Every access is bounds-checked. The
/// mapping goes with the finalizer, once nothing can reach the array, or earlier through <see cref="Release"/> by an
/// owner that knows no one else holds it (not IDisposable on purpose: disposing a speaker must not free memory its
/// loop may still read).</remarks>
internal sealed unsafe class NativeArray<T> where T : unmanaged
{
    private T* _items;
    private nuint _mapped;

    public NativeArray(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        _mapped = MappingSize(length);
        void* p = mmap(null, (size_t)(ulong)_mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
        {
            throw new InsufficientMemoryException($"mmap of {_mapped} bytes failed: errno {errno}");
        }
        _items = (T*)p;
        Length = length;
    }

    public int Length { get; private set; }

    public ref T this[int i]
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            if ((uint)i >= (uint)Length)
            {
                ThrowIndex(i, Length);
            }
            return ref _items[i];
        }
    }

    public Span<T> AsSpan() => new(Items, Length);

    private T* Items => _items != null ? _items : throw new ObjectDisposedException(nameof(NativeArray<T>));

    /// <summary>Grows or shrinks to <paramref name="length"/> elements; new elements are zero, as in a new array.</summary>
    public void Resize(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ObjectDisposedException.ThrowIf(_items == null, this);
        nuint size = MappingSize(length);
        if (length < Length)
        {
            // The pages a shrink keeps still hold the old values; a later grow must find zeros there.
            int kept = (int)Math.Min((nuint)Length, size / (nuint)sizeof(T));
            new Span<T>(_items + length, kept - length).Clear();
        }
        if (size != _mapped)
        {
            void* p = mremap(_items, (size_t)(ulong)_mapped, (size_t)(ulong)size, MREMAP_MAYMOVE, null);
            if (p == MAP_FAILED)
            {
                throw new InsufficientMemoryException($"mremap of {_mapped} to {size} bytes failed: errno {errno}");
            }
            _items = (T*)p;
            _mapped = size;
        }
        Length = length;
    }

    private static nuint MappingSize(int length)
    {
        const nuint Page = 4096;
        nuint bytes = (nuint)length * (nuint)sizeof(T);
        return bytes == 0 ? Page : (bytes + Page - 1) & ~(Page - 1);
    }

    private static void ThrowIndex(int i, int length) => throw new ArgumentOutOfRangeException(nameof(i), i, $"outside the array of {length}");

    /// <summary>Unmaps the memory now; the array is empty afterwards.</summary>
    public void Release() => Free();

    ~NativeArray() => Free();

    private void Free()
    {
        if (_items != null)
        {
            _ = munmap(_items, (size_t)(ulong)_mapped);
            _items = null;
            Length = 0;
        }
    }
}

/// <summary>A first-in first-out ring of plain values on a <see cref="NativeArray{T}"/>: a peer's export queue
/// holds an entry per prefix during a full-table transfer (4 MiB for 1,000,000 routes), and gives the memory back
/// at once when it grows or is trimmed.</summary>
internal sealed class NativeQueue<T> where T : unmanaged
{
    private const int MinCapacity = 16;
    private NativeArray<T> _ring = new(MinCapacity);
    private int _head;

    public int Count { get; private set; }

    public void Enqueue(T item)
    {
        int capacity = _ring.Length;
        if (Count == capacity)
        {
            _ring.Resize(capacity * 2);
            // The wrapped part (before the head) moves to just after the old end, where the ring now continues.
            int wrapped = _head + Count - capacity;
            if (wrapped > 0)
            {
                _ring.AsSpan()[..wrapped].CopyTo(_ring.AsSpan()[capacity..]);
            }
        }
        _ring[(_head + Count) & (_ring.Length - 1)] = item;
        Count++;
    }

    public T Dequeue()
    {
        if (Count == 0)
        {
            throw new InvalidOperationException("the queue is empty");
        }
        T item = _ring[_head];
        _head = (_head + 1) & (_ring.Length - 1);
        Count--;
        return item;
    }

    public void Clear()
    {
        _head = 0;
        Count = 0;
    }

    /// <summary>Shrinks the ring to the smallest power of two that holds what is queued.</summary>
    public void TrimExcess()
    {
        int capacity = Math.Max(MinCapacity, (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Count));
        if (capacity == _ring.Length)
        {
            return;
        }
        var ring = new NativeArray<T>(capacity);
        Span<T> all = _ring.AsSpan();
        int first = Math.Min(Count, all.Length - _head);
        all.Slice(_head, first).CopyTo(ring.AsSpan());
        all[..(Count - first)].CopyTo(ring.AsSpan()[first..]);
        _ring.Release();
        _ring = ring;
        _head = 0;
    }
}
