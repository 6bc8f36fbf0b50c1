"""The background workers' lock (hsfm_core/detached.py): a page's probe never turns a worker away."""

import fcntl
import threading
import time

from hsfm_core.detached import lock_held, take_lock


def test_a_worker_takes_a_lock_that_a_probe_holds_for_a_moment(tmp_path):
    lock = tmp_path / "map.lock"
    lock.touch()
    with open(lock, "a") as probe:  # what lock_held does for microseconds, stretched to 0.2 s
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        threading.Timer(0.2, fcntl.flock, (probe, fcntl.LOCK_UN)).start()
        with open(lock, "a") as worker:
            assert take_lock(worker, patience_s=2.0)
            assert lock_held(lock)  # from another descriptor: held by the worker
    assert not lock_held(lock)


def test_a_worker_gives_way_to_a_worker_at_work(tmp_path):
    lock = tmp_path / "map.lock"
    with open(lock, "a") as first, open(lock, "a") as second:
        assert take_lock(first)
        start = time.monotonic()
        assert not take_lock(second, patience_s=0.3)
        assert 0.3 <= time.monotonic() - start < 2.0


def test_probes_while_a_worker_starts_never_turn_it_away(tmp_path):
    lock = tmp_path / "map.lock"
    lock.touch()
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            lock_held(lock)

    probing = threading.Thread(target=probe)
    probing.start()
    try:
        for _ in range(50):
            with open(lock, "a") as worker:
                assert take_lock(worker)
    finally:
        stop.set()
        probing.join()
