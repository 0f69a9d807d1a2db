import itertools
import os
import threading

import pytest

import procpool


def add(a, b):
    return a + b


def fill_row(i):
    import procpool

    procpool.arrays()["grid"][i, :] = i + 0.5
    return os.getpid()


@pytest.fixture(scope="module")
def pool():
    with procpool.Pool(2) as pool:
        yield pool


def test_map_and_starmap_keep_the_order(pool):
    assert pool.map(abs, range(-50, 50)) == [abs(x) for x in range(-50, 50)]
    assert pool.map(abs, range(-50, 50), chunksize=1) == [abs(x) for x in range(-50, 50)]
    assert pool.starmap(add, [(i, i) for i in range(30)]) == [2 * i for i in range(30)]
    assert pool.map(abs, []) == []
    assert pool.map(abs, (x for x in [-1, -2])) == [1, 2]


def test_apply_and_the_async_callbacks(pool):
    assert pool.apply(add, (2, 3)) == 5
    got, errors, done = [], [], threading.Event()
    result = pool.map_async(abs, [-1, -2, -3], callback=lambda value: (got.append(value), done.set()))
    assert result.get(timeout=30) == [1, 2, 3]
    assert done.wait(5) and got == [[1, 2, 3]]
    failing = pool.apply_async(int, ("not a number",), error_callback=errors.append)
    with pytest.raises(ValueError):
        failing.get(timeout=30)
    assert failing.ready() and not failing.successful()
    assert isinstance(errors[0], ValueError)
    assert pool.starmap_async(add, [(1, 2)]).get(timeout=30) == [3]


def test_imap_reads_an_endless_iterable_only_a_window_ahead(pool):
    taken = itertools.count()
    consumed = []

    def numbers():
        for n in taken:
            consumed.append(n)
            yield n

    squares = pool.imap(abs, numbers())
    assert [next(squares) for _ in range(100)] == list(range(100))
    assert len(consumed) <= 100 + 2 * 8 + 1
    unordered = pool.imap_unordered(abs, range(-200, 0), chunksize=7)
    assert sorted(unordered) == list(range(1, 201))


def test_close_and_join_finish_what_was_submitted():
    pool = procpool.Pool(2)
    result = pool.map_async(abs, range(-20, 0))
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    pool.join()
    assert result.get(timeout=1) == list(range(20, 0, -1))
    with pytest.raises(ValueError, match="not running"):
        pool.map(abs, [1])


def test_terminate_ends_open_tasks_with_pool_broken():
    import time

    pool = procpool.Pool(1)
    slow = pool.apply_async(time.sleep, (30,))
    time.sleep(0.3)
    started = time.monotonic()
    pool.terminate()
    with pytest.raises(procpool.PoolBroken):
        slow.get(timeout=10)
    assert time.monotonic() - started < 5


def test_an_initializer_that_fails_breaks_the_pool_with_a_clear_error():
    def broken_setup():
        raise RuntimeError("no model file")

    with procpool.Pool(1, initializer=broken_setup) as pool:
        with pytest.raises(procpool.PoolBroken, match="before sending `ready`"):
            pool.apply(abs, (-1,))


def test_a_shared_array_written_by_workers_is_seen_by_the_caller():
    numpy = pytest.importorskip("numpy")
    grid = procpool.shared_array((64, 1000), "float64")
    with procpool.Pool(2, arrays={"grid": grid}) as pool:
        pids = pool.map(fill_row, range(64), chunksize=4)
    assert len(set(pids)) == 2, "both workers wrote"
    assert numpy.array_equal(grid[:, 0], numpy.arange(64) + 0.5)
    assert numpy.all(grid == (numpy.arange(64) + 0.5)[:, None])
    assert not any(name.startswith("procpool") for name in os.listdir("/dev/shm"))
