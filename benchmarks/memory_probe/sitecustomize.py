"""A memory probe for benchmarks (bench_classroom `--probe-memory`): on this folder's PYTHONPATH every Python
process installs a SIGUSR1 handler; the benchmark signals the server at the end of each walk, and the handler
writes `probe-<pid>-<k>.json` into $HSFM_MEMORY_PROBE_DIR:

- RSS, and glibc's view of the heap (mallinfo2, over every arena): bytes in use against bytes held free —
  whether growth is live objects or memory malloc keeps after they are freed;
- Python's allocated blocks, threads, and the object count of every type;
- with PYTHONTRACEMALLOC=N set, the allocations that grew since the previous signal (top 40 by size);
- with HSFM_MEMORY_PROBE_HOLDERS=Type,Type set, for two instances of each type the chain of referrers that
  keeps it alive, up to a module or a Streamlit session (`_holders`): who holds what grew.

Never imported by the app; it only exists on PYTHONPATH when the benchmark puts it there."""
import os

if os.environ.get("HSFM_MEMORY_PROBE_DIR"):
    import ctypes
    import gc
    import json
    import signal
    import sys
    import threading
    import tracemalloc
    from collections import Counter
    from pathlib import Path

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    _state = {"count": 0, "snapshot": None}

    def _rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    _ROOTS = {"AppSession", "SessionInfo", "Runtime", "SessionManager"}

    def _step(parent, child) -> str:
        """How `parent` refers to `child`: a dict's key, a list's position, else the parent's type."""
        name = type(parent).__qualname__
        if isinstance(parent, dict):
            for key, value in parent.items():
                if value is child:
                    return f"dict[{str(key)[:60]!r}]"
        if isinstance(parent, (list, tuple)) and len(parent) < 100_000:
            for i, value in enumerate(parent):
                if value is child:
                    return f"{name}[{i} of {len(parent)}]"
        return name

    def _chain(target, exclude: set[int], budget: int = 2000) -> list[str]:
        """Breadth-first up the referrers of `target` to the nearest root (a module's dict, a session):
        the steps from that root down to `target`, or the longest chain found within `budget` lookups."""
        parent = {id(target): None}
        keep = {id(target): target}
        frontier, deepest = [target], target
        exclude = exclude | {id(parent), id(keep), id(frontier)}  # this search's own containers
        modules = {id(m.__dict__): name for name, m in list(sys.modules.items()) if m is not None}
        for _ in range(budget):
            if not frontier:
                break
            obj = frontier.pop(0)
            if id(obj) in modules or (obj is not target and type(obj).__qualname__ in _ROOTS
                                      and type(target).__qualname__ not in _ROOTS):  # a session's holder: past it
                deepest = obj
                break
            for ref in gc.get_referrers(obj):
                if id(ref) in exclude or id(ref) in parent:
                    continue
                parent[id(ref)], keep[id(ref)] = obj, ref
                frontier.append(ref)
                deepest = ref
        steps, obj = [], deepest
        while obj is not None:
            child = parent[id(obj)]
            label = f"module {modules[id(obj)]}" if id(obj) in modules else _step(obj, child) if child is not None \
                else type(obj).__qualname__
            steps.append(label)
            obj = child
        return steps

    def _holders(objects: list) -> dict:
        wanted = [t for t in os.environ.get("HSFM_MEMORY_PROBE_HOLDERS", "").split(",") if t]
        out = {}
        exclude, here = {id(objects)}, sys._getframe()
        while here is not None:  # the probe's own frames (a thread's other frames can be what holds)
            exclude.add(id(here))
            here = here.f_back
        for name in wanted:
            found = [o for o in objects if type(o).__qualname__ == name]
            exclude.add(id(found))
            out[name] = [_chain(o, exclude) for o in found[-2:]]  # the newest two
        return out

    def _probe(signum, frame) -> None:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        gc.collect()
        objects = gc.get_objects()
        types = Counter(type(o).__qualname__ for o in objects)
        out = {"pid": os.getpid(), "argv": sys.argv[:3], "rss_mb": round(_rss_kb() / 1024, 1),
               "malloc_in_use_mb": round(info.uordblks / 2**20, 1), "malloc_free_held_mb": round(info.fordblks / 2**20, 1),
               "malloc_mmapped_mb": round(info.hblkhd / 2**20, 1), "malloc_arena_mb": round(info.arena / 2**20, 1),
               "python_blocks": sys.getallocatedblocks(), "threads": threading.active_count(),
               "gc_objects": sum(types.values()), "types": types.most_common()}
        if "pyarrow" in sys.modules:  # arrow's own allocator (jemalloc), outside malloc's arenas
            out["arrow_allocated_mb"] = round(sys.modules["pyarrow"].total_allocated_bytes() / 2**20, 1)
        if "streamlit.runtime" in sys.modules:  # sessions the server still holds (connected or within their TTL)
            try:
                from streamlit.runtime import Runtime

                manager = Runtime.instance()._session_mgr
                out["sessions_held"] = len(manager.list_sessions())
                out["sessions_active"] = len(manager.list_active_sessions())
            except Exception as e:  # noqa: BLE001 - a probe never breaks the server
                out["sessions_error"] = repr(e)
        if os.environ.get("HSFM_MEMORY_PROBE_HOLDERS"):
            try:
                out["holders"] = _holders(objects)
            except Exception as e:  # noqa: BLE001 - a probe never breaks the server
                out["holders_error"] = repr(e)
        del objects
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            out["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
            if _state["snapshot"] is not None:
                diff = snapshot.compare_to(_state["snapshot"], "traceback")
                out["grew"] = [{"kb": round(d.size_diff / 1024), "count": d.count_diff,
                                "where": [f"{f.filename}:{f.lineno}" for f in d.traceback][-8:]}
                               for d in diff[:40]]
            _state["snapshot"] = snapshot
        _state["count"] += 1
        target = Path(os.environ["HSFM_MEMORY_PROBE_DIR"]) / f"probe-{os.getpid()}-{_state['count']}.json"
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(out, indent=1))
        partial.replace(target)  # atomic: the benchmark never reads half a probe

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _probe)
