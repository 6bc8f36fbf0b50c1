"""Release the browser sessions Streamlit can no longer resume, as soon as they expire.

Streamlit keeps a disconnected session — its session state, widgets and fragments — for
`server.disconnectedSessionTTL` seconds (120), so that a browser that reconnects resumes it; it has
already stopped its script, file watchers and session caches (`disconnect_session`). After that time the
session cannot be resumed, but its entry in the session storage's TTL cache is removed only by the next
write to that cache, i.e. the next disconnect (streamlit/runtime/memory_session_storage.py: expired entries
"will be removed eventually"). On a class's server a whole class of sessions stayed in memory until the
next class left: 25 sessions ≈ 60 MB, the RSS "growth" a second walk of `benchmarks/bench_classroom.py`
measured (docs/ARCHITECTURE.md §App).

`reap_expired_sessions` removes the expired entries now, as that next write would: nothing else. (It does
not call their `shutdown()`, which Streamlit runs on the server's own thread and which closes the session's
event loop: with that called from here, another session's script thread, a 25-session walk stalled.)
Every page run calls it (`ui.page_setup`); it visits only expired entries. Streamlit has no public call for
this, so it reaches into the session manager of the pinned Streamlit version; if those attributes move, it
does nothing (tests/test_sessions.py fails on the upgrade)."""
from __future__ import annotations


def reap_expired_sessions(manager=None) -> int:
    """Forget the disconnected sessions whose reconnect window has passed. `manager`: a
    Streamlit session manager (default: the running server's; none, e.g. under AppTest: nothing to do).
    → how many were released."""
    try:
        if manager is None:
            from streamlit import runtime

            if not runtime.exists():
                return 0
            manager = runtime.get_instance()._session_mgr
        lock, expire = manager._storage_lock, manager._session_storage._cache.expire
    except AttributeError:  # another Streamlit's internals (or AppTest's stand-in runtime): leave its sessions
        return 0
    with lock:  # the manager's own lock around its storage
        released = len(expire())
    if released:
        return_freed_memory()
    return released


def return_freed_memory() -> None:
    """Collect the released sessions' objects (they hold reference cycles) and give the memory they held back
    to the system: glibc keeps freed heap memory for reuse, so without `malloc_trim` a server's RSS stays at its
    peak (a 25-session class's second walk: +64 MB held free after its first class was released). Linux/glibc
    only; elsewhere the collection alone."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
