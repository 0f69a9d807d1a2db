import asyncio
import concurrent.futures
import functools
import threading

import pytest

import procpool


def square(x):
    return x * x


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("no pickling of this one")


def raise_unpicklable():
    raise Unpicklable("kept as text")


def fail_deep():
    def inner():
        raise ValueError("bad input 42")

    inner()


@pytest.fixture(scope="module")
def executor():
    with procpool.Executor(max_workers=2) as executor:
        yield executor


def test_lambdas_closures_and_partials_run(executor):
    offset = 10
    assert executor.submit(lambda x: x + offset, 5).result() == 15
    assert executor.submit(functools.partial(pow, 2), 8).result() == 256
    assert list(executor.map(square, range(20))) == [x * x for x in range(20)]
    assert list(executor.map(square, range(20), chunksize=7)) == [x * x for x in range(20)]
    assert list(executor.map(divmod, [7, 9], [2, 4])) == [(3, 1), (2, 1)]


def test_an_exception_keeps_its_type_and_carries_the_remote_traceback(executor):
    with pytest.raises(ValueError, match="bad input 42") as caught:
        executor.submit(fail_deep).result()
    cause = caught.value.__cause__
    assert isinstance(cause, procpool.RemoteTraceback)
    assert "inner" in str(cause) and "fail_deep" in str(cause)


def test_an_exception_that_does_not_pickle_arrives_as_remote_error(executor):
    with pytest.raises(procpool.RemoteError, match="kept as text") as caught:
        executor.submit(raise_unpicklable).result()
    assert "raise_unpicklable" in caught.value.traceback_text


def test_a_call_that_does_not_pickle_raises_at_submit(executor):
    lock = threading.Lock()
    with pytest.raises(TypeError):
        executor.submit(square, lock)


def test_as_completed_wait_and_asyncio_see_the_futures(executor):
    futures = [executor.submit(square, x) for x in range(50)]
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=30)) == sorted(
        x * x for x in range(50)
    )
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 50 and not not_done

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(executor, square, x) for x in range(10)))

    assert asyncio.run(main()) == [x * x for x in range(10)]


def test_tqdm_counts_the_futures_as_they_complete(executor):
    tqdm = pytest.importorskip("tqdm").tqdm
    futures = [executor.submit(square, x) for x in range(30)]
    bar = tqdm(concurrent.futures.as_completed(futures), total=len(futures), disable=False)
    assert sum(f.result() for f in bar) == sum(x * x for x in range(30))
    assert bar.n == 30


def test_a_thousand_futures_from_eight_threads_each_end_once(executor):
    results = {}

    def submit_many(thread):
        futures = {(thread, i): executor.submit(square, thread * 1000 + i) for i in range(125)}
        for key, future in futures.items():
            results[key] = future.result(timeout=60)

    threads = [threading.Thread(target=submit_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1000
    assert all(value == (t * 1000 + i) ** 2 for (t, i), value in results.items())


def test_a_hundred_megabyte_argument_arrives_whole(executor):
    blob = bytes(range(256)) * (100 * 1024 * 1024 // 256)
    assert executor.submit(len, blob).result(timeout=120) == len(blob)


def test_map_with_a_buffersize_reads_an_endless_iterable_lazily(executor):
    taken = []

    def numbers():
        n = 0
        while True:
            taken.append(n)
            yield n
            n += 1

    results = executor.map(square, numbers(), buffersize=4)
    assert [next(results) for _ in range(10)] == [x * x for x in range(10)]
    assert len(taken) <= 10 + 4 + 1
    results.close()


def test_map_timeout_raises_timeout_error(executor):
    import time

    with pytest.raises(TimeoutError):
        list(executor.map(time.sleep, [2], timeout=0.2))


def test_cancelled_futures_end_as_cancelled():
    import time

    with procpool.Executor(max_workers=1) as executor:
        blocker = executor.submit(time.sleep, 0.5)
        waiting = [executor.submit(square, x) for x in range(5)]
        assert all(f.cancel() for f in waiting)
        done, _ = concurrent.futures.wait(waiting, timeout=10)
        assert len(done) == 5 and all(f.cancelled() for f in waiting)
        assert blocker.result(timeout=10) is None


def test_shutdown_with_cancel_futures_cancels_what_waits():
    import time

    executor = procpool.Executor(max_workers=1)
    running = executor.submit(time.sleep, 0.5)
    waiting = [executor.submit(square, x) for x in range(20)]
    time.sleep(0.2)
    executor.shutdown(wait=True, cancel_futures=True)
    assert running.result() is None
    assert sum(f.cancelled() for f in waiting) >= 15
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(square, 1)


def test_an_initializer_runs_in_every_worker_before_its_tasks():
    def setup(value):
        import builtins

        builtins.procpool_test_value = value

    def read(_):
        import builtins

        return builtins.procpool_test_value

    with procpool.Executor(max_workers=2, initializer=setup, initargs=("ready",)) as executor:
        assert set(executor.map(read, range(10))) == {"ready"}


def test_max_tasks_per_child_replaces_workers():
    import os

    with procpool.Executor(max_workers=1, max_tasks_per_child=2) as executor:
        pids = [executor.submit(os.getpid).result() for _ in range(6)]
    assert len(set(pids)) == 3


def test_bad_arguments_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least 1"):
        procpool.Executor(max_workers=0)
    with pytest.raises(TypeError, match="shared_array"):
        procpool.Executor(arrays={"a": [1, 2, 3]})
