"""Descriptor lists: nixl._bindings' classes and nixl_agent's converters
(tuples, N x 3 numpy arrays, tensors), pickling, and bad input."""

import pickle

import numpy as np
import pytest

import nixl
from nixl import _bindings as nb

try:
    import torch
except ImportError:  # torch is optional
    torch = None


def test_xfer_dlist_from_tuples_and_back():
    l = nb.nixlXferDList(nb.DRAM_SEG, [(0x1000, 64, 0), (0x2000, 128, 1)])
    assert l.descCount() == 2 and len(l) == 2 and not l.isEmpty()
    assert l.getType() == nb.DRAM_SEG
    assert l[0] == (0x1000, 64, 0) and l[1] == (0x2000, 128, 1) and l[-1] == (0x2000, 128, 1)
    with pytest.raises(IndexError):
        l[2]


def test_xfer_dlist_edit():
    l = nb.nixlXferDList(nb.VRAM_SEG)
    assert l.isEmpty() and l.getType() == nb.VRAM_SEG
    l.addDesc((1, 2, 3))
    l.append((4, 5, 6))
    l.addDesc((7, 8, 9))
    l[1] = (40, 50, 60)
    assert [l[i] for i in range(3)] == [(1, 2, 3), (40, 50, 60), (7, 8, 9)]
    assert l.index((7, 8, 9)) == 2
    with pytest.raises(nb.nixlNotFoundError):
        l.index((9, 9, 9))
    l.remDesc(0)
    assert [l[i] for i in range(2)] == [(40, 50, 60), (7, 8, 9)]
    assert not l.verifySorted()
    l.remDesc(0)
    assert l.verifySorted() and l.isSorted()
    l.clear()
    assert l.isEmpty()


def test_reg_dlist_meta_and_trim():
    r = nb.nixlRegDList(nb.DRAM_SEG, [(1, 2, 3, "meta"), (4, 5, 6, b"raw\x00"), (7, 8, 9)])
    assert r[0] == (1, 2, 3, b"meta") and r[1] == (4, 5, 6, b"raw\x00") and r[2] == (7, 8, 9, b"")
    t = r.trim()
    assert isinstance(t, nb.nixlXferDList) and [t[i] for i in range(3)] == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]


def test_equality_and_types():
    a = nb.nixlXferDList(nb.DRAM_SEG, [(1, 2, 3)])
    assert a == nb.nixlXferDList(nb.DRAM_SEG, [(1, 2, 3)])
    assert a != nb.nixlXferDList(nb.VRAM_SEG, [(1, 2, 3)])
    assert a != nb.nixlXferDList(nb.DRAM_SEG, [(1, 2, 4)])
    assert a != nb.nixlRegDList(nb.DRAM_SEG, [(1, 2, 3)])
    assert nb.nixlXferDList(nb.DRAM_SEG) != nb.nixlRegDList(nb.DRAM_SEG)  # empty, still different kinds
    assert isinstance(nb.nixlRemoteDList(nb.DRAM_SEG, [(1, 2, 3)]), nb.nixlXferDList)


@pytest.mark.parametrize("cls", [nb.nixlXferDList, nb.nixlRegDList, nb.nixlRemoteDList])
def test_pickle_round_trip(cls):
    rows = [(0x1000 * i, 64 + i, i % 3) for i in range(100)]
    l = cls(nb.FILE_SEG, rows)
    back = pickle.loads(pickle.dumps(l))
    assert type(back) is cls and back == l and back.getType() == nb.FILE_SEG and back[99] == l[99]


def test_numpy_layouts():
    rows = np.array([[0x1000, 10, 0], [0x2000, 20, 1], [0x3000, 30, 2]])
    for dt in (np.uint64, np.int64, np.int32, np.uint32):
        l = nb.nixlXferDList(nb.DRAM_SEG, rows.astype(dt))
        assert [l[i] for i in range(3)] == [tuple(int(x) for x in r) for r in rows], dt
    fortran = np.asfortranarray(rows.astype(np.uint64))
    assert nb.nixlXferDList(nb.DRAM_SEG, fortran)[2] == (0x3000, 30, 2)
    strided = np.zeros((3, 6), dtype=np.uint64)[:, ::2]
    strided[:] = rows
    assert nb.nixlXferDList(nb.DRAM_SEG, strided)[1] == (0x2000, 20, 1)
    reg = nb.nixlRegDList(nb.DRAM_SEG, rows.astype(np.uint64))
    assert reg[0] == (0x1000, 10, 0, b"")


@pytest.mark.parametrize("bad", [
    np.zeros((3, 2), dtype=np.uint64),
    np.zeros(9, dtype=np.uint64),
    np.zeros((3, 3), dtype=np.float64),
    np.array([[1, -2, 0]], dtype=np.int64),
])
def test_numpy_bad_input(bad):
    with pytest.raises(nb.nixlInvalidParamError):
        nb.nixlXferDList(nb.DRAM_SEG, bad)


@pytest.mark.parametrize("bad", [[(1, 2)], [(1, 2, 3, 4)], [(1, "x", 3)], [(-1, 2, 3)], [(1 << 64, 2, 3)], [5],
                                 "abc", 42])
def test_tuple_bad_input(bad):
    with pytest.raises(nb.nixlInvalidParamError):
        nb.nixlXferDList(nb.DRAM_SEG, bad)


def test_bad_mem_type():
    with pytest.raises(nb.nixlInvalidParamError):
        nb.nixlXferDList(17, [])


def test_agent_converters(make_agent):
    a = make_agent("descs")
    rows = [(0x1000, 16, 0), (0x2000, 32, 0)]
    x = a.get_xfer_descs(rows, "DRAM")
    assert isinstance(x, nb.nixlXferDList) and x[1] == rows[1]
    assert a.get_xfer_descs(x) is x
    assert a.get_xfer_descs(np.array(rows, dtype=np.uint64), "cpu")[0] == rows[0]
    assert a.get_xfer_descs(rows, "cuda").getType() == nb.VRAM_SEG
    assert a.get_xfer_descs(rows, "BLOCK").getType() == nb.BLK_SEG
    r = a.get_reg_descs([(0x1000, 16, 0, "m")], "FILE")
    assert isinstance(r, nb.nixlRegDList) and r.getType() == nb.FILE_SEG and r[0][3] == b"m"
    rem = a.get_remote_descs(rows, "DRAM")
    assert isinstance(rem, nb.nixlRemoteDList) and rem[0] == rows[0]
    again = a.deserialize_descs(a.get_serialized_descs(r))
    assert again == r


def test_agent_converters_bad_input_logs_and_returns_none(make_agent, caplog):
    a = make_agent("baddescs")
    assert a.get_xfer_descs([(1, 2, 3)]) is None  # no memory type
    assert a.get_xfer_descs([(1, 2, 3)], "NOPE") is None
    assert a.get_xfer_descs([(1, 2)], "DRAM") is None
    assert a.get_xfer_descs([[1, 2, 3]], "DRAM") is None
    assert a.get_xfer_descs(np.zeros((2, 4), dtype=np.uint64), "DRAM") is None
    assert a.get_xfer_descs(np.zeros((2, 3), dtype=np.uint64)) is None
    assert a.get_xfer_descs(a.get_reg_descs([(1, 2, 3, "")], "DRAM")) is None
    assert a.get_reg_descs(a.get_xfer_descs([(1, 2, 3)], "DRAM")) is None
    assert a.get_xfer_descs({"a": 1}, "DRAM") is None
    assert a.get_xfer_descs([(-5, 2, 3)], "DRAM") is None
    assert a.get_xfer_descs([], "DRAM").isEmpty()


@pytest.mark.skipif(torch is None, reason="python3-torch is not installed")
def test_tensors(make_agent):
    a = make_agent("tensors")
    t = torch.arange(1024, dtype=torch.float32)
    d = a.get_xfer_descs(t)
    assert d.getType() == nb.DRAM_SEG and d[0] == (t.data_ptr(), 4096, 0)
    ts = [torch.zeros(16, dtype=torch.int64), torch.ones(8, dtype=torch.int16)]
    d = a.get_reg_descs(ts)
    assert d.descCount() == 2 and d[0] == (ts[0].data_ptr(), 128, 0, b"") and d[1][1] == 16
    assert a.get_xfer_descs(torch.zeros(4, 4).t()) is None  # not contiguous


def test_utils_passthru():
    addr = nixl.malloc_passthru(10000)
    other = nixl.malloc_passthru(10000)
    try:
        assert addr % 4096 == 0
        nixl.ba_buf(addr, 10000)
        nixl.ba_buf(other, 10000)
        assert nixl._utils.verify_transfer(addr, other, 10000)
        import ctypes
        assert ctypes.string_at(addr, 4) == b"\xba" * 4
        ctypes.memset(other + 9999, 0, 1)
        assert not nixl._utils.verify_transfer(addr, other, 10000)
    finally:
        nixl.free_passthru(addr)
        nixl.free_passthru(other)


def test_public_names():
    from nixl import nixl_agent  # noqa: F401
    from nixl._api import nixl_agent as A, nixl_agent_config  # noqa: F401
    from nixl._bindings import nixlXferTelemetry  # noqa: F401
    from nixl.logging import get_logger
    assert get_logger("_api").name == "nixl.api"
    for name in ("nixlNotPostedError", "nixlInvalidParamError", "nixlBackendError", "nixlNotFoundError",
                 "nixlMismatchError", "nixlNotAllowedError", "nixlRepostActiveError", "nixlUnknownError",
                 "nixlNotSupportedError", "nixlRemoteDisconnectError", "nixlCancelledError", "nixlNoTelemetryError"):
        exc = getattr(nb, name)
        assert issubclass(exc, RuntimeError), name
    excs = {getattr(nb, n) for n in dir(nb) if n.endswith("Error") and n != "nixlCanceledError"}
    assert len(excs) == 12
    for seg in ("DRAM_SEG", "VRAM_SEG", "BLK_SEG", "OBJ_SEG", "FILE_SEG"):
        assert isinstance(getattr(nb, seg), int)
    assert nb.NIXL_INIT_AGENT == "" and nb.NIXL_READ != nb.NIXL_WRITE
