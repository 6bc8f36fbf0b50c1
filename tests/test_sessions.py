"""Expired browser sessions leave memory when they expire (hsfm_core/studio/sessions.py), with Streamlit's
own session manager, storage and sessions."""
import asyncio
import gc
import weakref
from pathlib import Path

from streamlit.runtime.memory_session_storage import MemorySessionStorage
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.script_data import ScriptData
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.runtime.session_manager import SessionClient
from streamlit.runtime.websocket_session_manager import WebsocketSessionManager

from hsfm_core.studio.sessions import reap_expired_sessions

APP = str(Path(__file__).resolve().parents[1] / "app.py")


class Browser(SessionClient):
    """The far end of a session's websocket: what the server sends it is kept, as a browser would show it."""

    def __init__(self):
        self.received = []

    def write_forward_msg(self, msg) -> None:
        self.received.append(msg)


def manager_with_two_closed_sessions(ttl_s: float):
    manager = WebsocketSessionManager(MemorySessionStorage(ttl_seconds=ttl_s), MemoryUploadedFileManager("/upload"),
                                      ScriptCache(), message_enqueued_callback=None)
    ids = [manager.connect_session(Browser(), ScriptData(APP), user_info={}) for _ in range(2)]
    sessions = [weakref.ref(manager.get_session_info(i).session) for i in ids]
    for i in ids:
        manager.disconnect_session(i)  # kept for a reconnect, as a closed browser tab's session is
    return manager, ids, sessions


def on_the_servers_loop(test):
    """A session lives on the server's event loop: run the test body on one."""
    def run():
        asyncio.run(test())
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


@on_the_servers_loop
async def test_an_expired_session_is_freed_at_the_next_page_run():
    manager, ids, sessions = manager_with_two_closed_sessions(ttl_s=0.5)
    assert reap_expired_sessions(manager) == 0  # within the reconnect window: kept
    assert all(manager.get_session_info(i) is not None for i in ids)
    await asyncio.sleep(0.6)
    gc.collect()
    # What Streamlit alone does: an expired session is out of reach but still in memory
    assert manager.list_sessions() == [] and all(s() is not None for s in sessions)
    assert reap_expired_sessions(manager) == 2
    gc.collect()
    assert all(s() is None for s in sessions), "a reaped session is still referenced"
    assert reap_expired_sessions(manager) == 0


@on_the_servers_loop
async def test_a_session_still_resumable_is_left_alone():
    manager, ids, sessions = manager_with_two_closed_sessions(ttl_s=60)
    assert reap_expired_sessions(manager) == 0
    resumed = manager.connect_session(Browser(), ScriptData(APP), user_info={}, existing_session_id=ids[0])
    assert resumed == ids[0] and manager.is_active_session(ids[0])
    for i in manager.list_active_sessions():
        manager.close_session(i.session.id)
    manager.close_session(ids[1])


def test_outside_a_server_there_is_nothing_to_reap():
    assert reap_expired_sessions() == 0  # no Streamlit runtime in this process (as under AppTest)


@on_the_servers_loop
async def test_a_released_sessions_memory_goes_back_to_the_system():
    """A closed session that held 64 MB in small objects: once reaped, the process's RSS falls back (glibc
    alone would keep the freed heap for reuse)."""
    import psutil

    from hsfm_core.studio.sessions import return_freed_memory

    manager, ids, sessions = manager_with_two_closed_sessions(ttl_s=0.5)
    me = psutil.Process()
    return_freed_memory()  # a worker that ran other tests holds freed heap: the rows would reuse it unseen
    before = me.memory_info().rss
    rows, kept = [], []  # 64 MB from malloc's heap, with objects that stay alive between them (as a server's
    for i in range(16_384):  # other sessions' are): freeing the rows leaves holes below the heap's top
        rows.append(bytes(4096))
        if i % 512 == 511:
            kept.append(bytes(4096))
    sessions[0]().session_state["rows"] = rows
    del rows
    assert me.memory_info().rss - before > 48 * 2**20
    await asyncio.sleep(0.6)
    assert reap_expired_sessions(manager) == 2
    assert me.memory_info().rss - before < 16 * 2**20, "the released session's memory is still held"
    assert len(kept) == 32
