"""nixl_agent: configuration, plugins and backends, memory, metadata over
the API and over the side channel, and the typed exceptions."""

import os
import socket
import threading
import time

import numpy as np
import pytest

from conftest import BACKEND, unique, wait_for
from nixl import _bindings as nb
from nixl._api import nixl_agent, nixl_agent_config, nixl_thread_sync_t


def test_config_defaults():
    c = nixl_agent_config()
    assert c.enable_pthread is True and c.enable_listen is False and c.port == 8888
    assert c.backends == ["UCX"] and c.capture_telemetry is False and c.num_threads == 0 and c.sync_mode is None
    c = nixl_agent_config(sync_mode=nixl_thread_sync_t.NIXL_THREAD_SYNC_RW)
    assert c.sync_mode is nixl_thread_sync_t.NIXL_THREAD_SYNC_RW
    with pytest.raises(TypeError):
        nixl_agent_config(sync_mode=3)


def test_agent_attributes_and_plugins(make_agent):
    a = make_agent("attrs")
    assert a.name.startswith("attrs-") and a.notifs == {}
    assert list(a.backends) == [BACKEND]
    assert set(a.get_plugin_list()) == {"UCX", "VERBS", "POSIX"}
    assert "FILE" in a.get_plugin_mem_types("POSIX") and "queue_depth" in a.get_plugin_params("POSIX")
    assert "DRAM" in a.get_plugin_mem_types("UCX") and "DRAM" in a.get_plugin_mem_types("VERBS")
    assert "tls" in a.get_plugin_params("UCX") and "devices" in a.get_plugin_params("VERBS")
    assert "notif_unverified" in a.get_backend_params(BACKEND)
    assert "DRAM" in a.get_backend_mem_types(BACKEND)


def test_unknown_plugin_and_backend_names_warn(make_agent, nixl_log):
    a = make_agent("unknown", backends=[BACKEND, "NOSUCH"])
    assert list(a.backends) == [BACKEND]
    assert "Skipping backend registration NOSUCH due to the missing plugin" in nixl_log.text()
    assert a.get_plugin_mem_types("NOSUCH") == [] and a.get_plugin_params("NOSUCH") == {}
    assert a.get_backend_mem_types("NOSUCH") == [] and a.get_backend_params("NOSUCH") == {}
    with pytest.raises(nb.nixlNotFoundError):
        a.create_backend("NOSUCH")


@pytest.mark.skipif(BACKEND != "UCX", reason="needs a host without RDMA devices")
def test_backend_that_cannot_start_is_skipped(make_agent, nixl_log):
    if os.path.exists("/sys/class/infiniband") and os.listdir("/sys/class/infiniband"):
        pytest.skip("this host has an RDMA device")
    a = make_agent("noverbs", backends=["VERBS", "UCX"])
    assert list(a.backends) == ["UCX"]
    assert "Skipping backend VERBS" in nixl_log.text()


def test_instantiate_all_and_no_config(nixl_log):
    a = nixl_agent(unique("all"), instantiate_all=True)
    assert BACKEND in a.backends
    b = nixl_agent(unique("plain"))
    assert "UCX" in b.backends
    nixl_agent(unique("both"), nixl_agent_config(backends=[BACKEND]), instantiate_all=True)
    assert "Ignoring instantiate_all" in nixl_log.text()


def test_bad_backend_params(make_agent):
    a = make_agent("params", backends=[])
    with pytest.raises(nb.nixlInvalidParamError):
        a.create_backend(BACKEND, {"no_such_key": "1"})
    with pytest.raises(nb.nixlInvalidParamError):
        a.create_backend(BACKEND, {"notif_unverified": "a,b"})
    a.create_backend(BACKEND, {"notif_unverified": "drop"})
    assert BACKEND in a.backends


def test_listen_port_zero_picks_a_free_port(make_agent, nixl_log):
    a = make_agent("listen", enable_listen_thread=True, listen_port=0)
    assert 0 < a.listen_port < 65536
    assert "serves its metadata on port %d" % a.listen_port in nixl_log.text()
    b = make_agent("nolisten")
    assert b.listen_port == 0


def test_register_and_deregister(make_agent):
    a = make_agent("reg")
    buf = np.zeros(1 << 20, dtype=np.uint8)
    d = a.register_memory([(buf.ctypes.data, buf.nbytes, 0, "kv")], "DRAM")
    assert isinstance(d, nb.nixlRegDList) and d[0][3] == b"kv"
    a.deregister_memory(d)
    d2 = a.register_memory(np.array([[buf.ctypes.data, 4096, 0]], dtype=np.uint64), "DRAM",
                           backends=[BACKEND])
    a.deregister_memory(d2, backends=[BACKEND])
    with pytest.raises(TypeError):
        a.register_memory("junk")
    with pytest.raises(nb.nixlInvalidParamError):
        a.register_memory([(0, 0, 0, "")], "DRAM")  # a NULL, empty region
    with pytest.raises(KeyError):
        a.register_memory([(buf.ctypes.data, 16, 0, "")], "DRAM", backends=["NOSUCH"])


def test_query_memory_not_supported(make_agent):
    a = make_agent("query")
    with pytest.raises(nb.nixlNotSupportedError):
        a.query_memory([(1, 2, 0, "")], BACKEND, "FILE")
    with pytest.raises(ValueError):
        a.query_memory([(1, 2, 0, "")], "NOSUCH", "FILE")


def _wait_done(agent, h):
    for _ in range(10_000_000):
        state = agent.check_xfer_state(h)
        if state != "PROC":
            return state
    return "TIMEOUT"


def test_posix_offload_and_query(make_agent, tmp_path):
    """KV blocks to a file and back with the "POSIX" backend (NIXL's file
    convention: (offset, length, fd)), every byte checked; query_memory
    tells the file's size."""
    a = make_agent("offload", backends=["POSIX"])
    assert "POSIX" in a.backends
    blocks, bs = 64, 4096
    src = np.arange(blocks * bs, dtype=np.uint8) * 7 % 251
    dst = np.zeros_like(src)
    fd = os.open(str(tmp_path / "kv.bin"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        a.register_memory([(src.ctypes.data, src.nbytes, 0, "")], "DRAM", backends=["POSIX"])
        a.register_memory([(dst.ctypes.data, dst.nbytes, 0, "")], "DRAM", backends=["POSIX"])
        a.register_memory([(0, blocks * bs, fd, "kv.bin")], "FILE", backends=["POSIX"])
        mem = a.get_xfer_descs([(src.ctypes.data + i * bs, bs, 0) for i in range(blocks)], "DRAM")
        order = [(i * 5) % blocks for i in range(blocks)]
        fil = a.get_xfer_descs([(o * bs, bs, fd) for o in order], "FILE")
        h = a.initialize_xfer("WRITE", mem, fil, a.name)
        assert a.transfer(h) in ("PROC", "DONE") and _wait_done(a, h) == "DONE"
        a.release_xfer_handle(h)
        back = a.get_xfer_descs([(dst.ctypes.data + i * bs, bs, 0) for i in range(blocks)], "DRAM")
        h = a.initialize_xfer("READ", back, fil, a.name)
        assert a.transfer(h) in ("PROC", "DONE") and _wait_done(a, h) == "DONE"
        a.release_xfer_handle(h)
        assert np.array_equal(src, dst)
        with open(tmp_path / "kv.bin", "rb") as f:  # the file holds block i at slot order[i]
            data = np.frombuffer(f.read(), dtype=np.uint8)
        assert all(np.array_equal(data[o * bs:(o + 1) * bs], src[i * bs:(i + 1) * bs]) for i, o in enumerate(order))
        info = a.query_memory([(0, blocks * bs, fd, "")], "POSIX", "FILE")
        assert info[0]["size"] == blocks * bs and info[0]["writable"] and info[0]["mtime"] > 0
        assert a.query_memory([(0, 1, fd + 1000, "")], "POSIX", "FILE") == [None]  # not registered
    finally:
        os.close(fd)


def test_metadata_by_api(make_agent):
    a, b = make_agent("mda"), make_agent("mdb")
    buf = np.zeros(4096, dtype=np.uint8)
    a.register_memory([(buf.ctypes.data, 4096, 0, "")], "DRAM")
    name = b.add_remote_agent(a.get_agent_metadata())
    assert isinstance(name, bytes) and name.decode() == a.name
    assert b.check_remote_metadata(a.name) and b.check_remote_metadata(name)
    assert b.check_remote_metadata(a.name, b.get_xfer_descs([(buf.ctypes.data, 4096, 0)], "DRAM"))
    assert not b.check_remote_metadata(a.name, b.get_xfer_descs([(buf.ctypes.data + 4096, 16, 0)], "DRAM"))
    b.make_connection(name)
    b.remove_remote_agent(name)
    assert not b.check_remote_metadata(a.name)
    with pytest.raises(nb.nixlNotFoundError):
        b.remove_remote_agent("nobody")
    with pytest.raises(nb.nixlInvalidParamError):
        b.add_remote_agent(b"garbage")


def test_partial_metadata(make_agent):
    a, b = make_agent("pa"), make_agent("pb")
    x = np.zeros(8192, dtype=np.uint8)
    r1 = a.register_memory([(x.ctypes.data, 4096, 0, "")], "DRAM")
    a.register_memory([(x.ctypes.data + 4096, 4096, 0, "")], "DRAM")
    b.add_remote_agent(a.get_partial_agent_metadata(r1, True, [BACKEND]))
    assert b.check_remote_metadata(a.name, b.get_xfer_descs([(x.ctypes.data, 4096, 0)], "DRAM"))
    assert not b.check_remote_metadata(a.name, b.get_xfer_descs([(x.ctypes.data + 4096, 4096, 0)], "DRAM"))


def test_side_channel_fetch_send_invalidate(make_agent):
    tgt = make_agent("sct", enable_listen_thread=True, listen_port=0)
    ini = make_agent("sci", enable_listen_thread=True, listen_port=0)
    buf = np.zeros(4096, dtype=np.uint8)
    tgt.register_memory([(buf.ctypes.data, 4096, 0, "")], "DRAM")
    ini.fetch_remote_metadata(tgt.name.encode(), "127.0.0.1", tgt.listen_port)
    wait_for(lambda: ini.check_remote_metadata(tgt.name), what="fetched metadata")
    ini.send_local_metadata("127.0.0.1", tgt.listen_port)
    assert tgt.check_remote_metadata(ini.name)
    ini.invalidate_local_metadata("127.0.0.1", tgt.listen_port)
    wait_for(lambda: not tgt.check_remote_metadata(ini.name), what="invalidation")
    part = ini.register_memory([(buf.ctypes.data, 1024, 0, "")], "DRAM")
    ini.send_partial_agent_metadata(part, True, [BACKEND], "127.0.0.1", tgt.listen_port, "")
    assert tgt.check_remote_metadata(ini.name)


def test_side_channel_errors(make_agent):
    a = make_agent("scerr")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(nb.nixlRemoteDisconnectError):
        a.send_local_metadata("127.0.0.1", port)
    with pytest.raises(nb.nixlInvalidParamError):
        a.send_local_metadata("not-an-ip", 1)
    with pytest.raises(nb.nixlInvalidParamError):
        a.send_local_metadata("127.0.0.1", 70000)


def test_gil_released_while_a_call_waits(make_agent):
    """A side-channel call blocked on a silent listener leaves other Python
    threads running."""
    a = make_agent("gil")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)  # accepts in the kernel, never answers
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    start = time.monotonic()
    try:
        with pytest.raises(nb.nixlRemoteDisconnectError):
            a.send_local_metadata("127.0.0.1", srv.getsockname()[1])
    finally:
        stop.set()
        t.join()
        srv.close()
    took = time.monotonic() - start
    assert took > 1.0
    assert ticks[0] > 100000 * took, "the spinning thread ran %d times in %.1f s" % (ticks[0], took)


def test_every_status_has_its_exception():
    names = {
        nb.NIXL_ERR_NOT_POSTED: "nixlNotPostedError",
        nb.NIXL_ERR_INVALID_PARAM: "nixlInvalidParamError",
        nb.NIXL_ERR_BACKEND: "nixlBackendError",
        nb.NIXL_ERR_NOT_FOUND: "nixlNotFoundError",
        nb.NIXL_ERR_MISMATCH: "nixlMismatchError",
        nb.NIXL_ERR_NOT_ALLOWED: "nixlNotAllowedError",
        nb.NIXL_ERR_REPOST_ACTIVE: "nixlRepostActiveError",
        nb.NIXL_ERR_UNKNOWN: "nixlUnknownError",
        nb.NIXL_ERR_NOT_SUPPORTED: "nixlNotSupportedError",
        nb.NIXL_ERR_REMOTE_DISCONNECT: "nixlRemoteDisconnectError",
        nb.NIXL_ERR_CANCELED: "nixlCancelledError",
        nb.NIXL_ERR_NO_TELEMETRY: "nixlNoTelemetryError",
    }
    for st, name in names.items():
        assert nb._exception_of(st) is getattr(nb, name), name
    assert nb._exception_of(-99) is nb.nixlUnknownError
    assert nb._exception_of(nb.NIXL_SUCCESS) is None


def test_native_agent_directly():
    """Code written against nixl._bindings: camelCase, int handles."""
    cfg = nb.nixlAgentConfig(True, False, 0)
    a = nb.nixlAgent(unique("native"), cfg)
    be = a.createBackend(BACKEND, {})
    assert a.getBackendName(be) == BACKEND
    params, mems = a.getPluginParams(BACKEND)
    assert nb.DRAM_SEG in mems and isinstance(params, dict)
    buf = np.arange(4096, dtype=np.uint16).view(np.uint8)
    dst = np.zeros_like(buf)
    a.registerMem(nb.nixlRegDList(nb.DRAM_SEG, [(buf.ctypes.data, buf.nbytes, 0), (dst.ctypes.data, dst.nbytes, 0)]))
    me = a.getName()
    h = a.createXferReq(nb.NIXL_WRITE, nb.nixlXferDList(nb.DRAM_SEG, [(buf.ctypes.data, buf.nbytes, 0)]),
                        nb.nixlXferDList(nb.DRAM_SEG, [(dst.ctypes.data, dst.nbytes, 0)]), me)
    with pytest.raises(nb.nixlNotPostedError):
        a.getXferStatus(h)
    st = a.postXferReq(h)
    while st == nb.NIXL_IN_PROG:
        st = a.getXferStatus(h)
    assert st == nb.NIXL_SUCCESS and (dst == buf).all()
    a.releaseXferReq(int(h))
    a.releaseXferReq(h)  # again: no-op
    with pytest.raises(nb.nixlInvalidParamError):
        a.postXferReq(h)
    with pytest.raises(TypeError):
        nb.nixlAgent()
    with pytest.raises(nb.nixlInvalidParamError):
        nb.nixlAgent("")
