using System.Collections.Concurrent;

namespace CalicoSharp.Bgp;

/// <summary>Runs work items one at a time, in order. All FSM and RIB state is touched only from it.</summary>
public interface IEventLoop
{
    void Post(Action work);
}

/// <summary>A dedicated thread draining a queue: the speaker's single writer for sessions and the RIB.</summary>
public sealed class ThreadEventLoop : IEventLoop, IDisposable
{
    private readonly BlockingCollection<Action> _queue = new(new ConcurrentQueue<Action>());
    private readonly Thread _thread;
    private readonly Action<Exception> _onError;

    public ThreadEventLoop(string name, Action<Exception> onError)
    {
        _onError = onError;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public bool IsCurrentThread => Environment.CurrentManagedThreadId == _thread.ManagedThreadId;

    public void Post(Action work)
    {
        if (!_queue.IsAddingCompleted)
        {
            try
            {
                _queue.Add(work);
            }
            catch (InvalidOperationException)
            {
                // Completed between the check and the add: the loop is stopping, the work no longer matters.
            }
        }
    }

    private void Run()
    {
        foreach (Action work in _queue.GetConsumingEnumerable())
        {
            try
            {
                work();
            }
#pragma warning disable CA1031 // One failing work item must not stop every session: it is reported and the loop goes on.
            catch (Exception e)
#pragma warning restore CA1031
            {
                _onError(e);
            }
        }
    }

    public void Dispose()
    {
        _queue.CompleteAdding();
        if (!IsCurrentThread)
        {
            _thread.Join(TimeSpan.FromSeconds(5));
        }
        _queue.Dispose();
    }
}

/// <summary>For tests: work runs when the test says so, on the test's thread.</summary>
public sealed class ManualEventLoop : IEventLoop
{
    private readonly ConcurrentQueue<Action> _queue = new();

    public void Post(Action work) => _queue.Enqueue(work);

    public int RunPending()
    {
        int n = 0;
        while (_queue.TryDequeue(out Action? a))
        {
            a();
            n++;
        }
        return n;
    }
}
