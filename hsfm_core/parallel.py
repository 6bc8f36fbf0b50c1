"""Map a function over argument lists in spawned worker processes, in order.

`spawn` because forking after torch/OpenMP has started hangs the child on these machines. A
spawned child re-runs the parent's `__main__` file unless that module has no file: under
`streamlit run` (or an AppTest) `__main__` is the app script itself, which must not run again in
every worker. So `__main__` is swapped for an empty module while the workers start.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import types
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator

_main_swap = threading.Lock()  # app sessions are threads: one swap of __main__ at a time


def map_in_processes(fn: Callable, *arg_lists: Iterable, workers: int = 2) -> Iterator:
    """Like `map(fn, *arg_lists)`, run in `workers` spawned processes (in-process when workers ≤ 1).
    `fn` must be importable (a module-level function)."""
    if workers <= 1:
        yield from map(fn, *arg_lists)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        with _main_swap:
            main = sys.modules["__main__"]
            sys.modules["__main__"] = types.ModuleType("__main__")
            try:
                results = pool.map(fn, *arg_lists)  # submits every task: all workers start here
            finally:
                sys.modules["__main__"] = main
        yield from results
