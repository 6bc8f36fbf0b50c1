"""Worker processes that die with their parent: `process_pool` (a spawned ProcessPoolExecutor) and
`map_in_processes` (map a function over argument lists in such a pool, in order).

`spawn` because forking after torch/OpenMP has started hangs the child on these machines. A
spawned child re-runs the parent's `__main__` file unless that module has no file: under
`streamlit run` (or an AppTest) `__main__` is the app script itself, which must not run again in
every worker. So `__main__` is swapped for an empty module while the workers start.

Every worker asks the kernel to SIGKILL it when its parent dies (`die_with_parent`: Linux's
`PR_SET_PDEATHSIG`; elsewhere a thread that watches the parent pid). Without it a SIGKILLed parent
leaves its workers re-parented to PID 1: they finish their task and block forever on a pipe nobody
reads (issue 26). multiprocessing's resource tracker needs nothing: it exits once every process
holding its pipe has.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, Sequence

_main_swap = threading.Lock()  # app sessions are threads: one swap of __main__ at a time
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """A worker's initializer: end this process (SIGKILL) as soon as `parent_pid`, its parent, has died."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the request took effect
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="die-with-parent").start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


@contextlib.contextmanager
def _main_swapped() -> Iterator[None]:
    with _main_swap:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A spawned pool of `workers` processes that die with this one (use it as a context manager; submit with
    `submit_all`, which starts the workers without re-running `__main__`)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


def submit_all(pool: ProcessPoolExecutor, fn: Callable, calls: Sequence[tuple]) -> list[Future]:
    """`pool.submit(fn, *args)` for each args tuple; the pool's workers start here (spawn starts one per submit
    until the pool is full), with `__main__` swapped out."""
    with _main_swapped():
        return [pool.submit(fn, *args) for args in calls]


def map_in_processes(fn: Callable, *arg_lists: Iterable, workers: int = 2) -> Iterator:
    """Like `map(fn, *arg_lists)`, run in `workers` spawned processes (in-process when workers ≤ 1).
    `fn` must be importable (a module-level function)."""
    if workers <= 1:
        yield from map(fn, *arg_lists)
        return
    with process_pool(workers) as pool:
        with _main_swapped():
            results = pool.map(fn, *arg_lists)  # submits every task: all workers start here
        yield from results
