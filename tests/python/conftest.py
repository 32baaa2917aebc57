"""Fixtures of the Python suite: agents on the backend under test
(NIXL_PY_BACKEND: UCX natively, VERBS inside the Soft-RoCE VM), pairs of
agents with memory registered and metadata exchanged, and a closing line
"N passed, M failed, K skipped" for tests/run-suite."""

import logging
import os
import time
import uuid

import numpy as np
import pytest

from nixl._api import nixl_agent, nixl_agent_config

BACKEND = os.environ.get("NIXL_PY_BACKEND", "UCX")


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def wait_for(fn, timeout=20.0, what="condition"):
    """Polls fn() until it returns something true; fails the test after timeout."""
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.001)


def wait_xfer(agent, handle, timeout=20.0):
    """Polls check_xfer_state until it is not "PROC"; returns the state."""
    end = time.monotonic() + timeout
    while True:
        st = agent.check_xfer_state(handle)
        if st != "PROC":
            return st
        if time.monotonic() > end:
            pytest.fail("transfer still in progress after %.0f s" % timeout)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def text(self):
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def nixl_log():
    """The lines the package's Python loggers ("nixl.*") wrote during a test."""
    h = _Records()
    root = logging.getLogger("nixl")
    level = root.level
    root.setLevel(logging.DEBUG)  # whatever NIXL_LOG_LEVEL says
    root.addHandler(h)
    yield h
    root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
def backend():
    return BACKEND


@pytest.fixture
def make_agent():
    """make_agent(prefix, **config) -> nixl_agent on the backend under test."""
    made = []

    def make(prefix="agent", backends=None, **kw):
        conf = nixl_agent_config(backends=backends if backends is not None else [BACKEND], **kw)
        a = nixl_agent(unique(prefix), conf)
        if backends is None:
            assert BACKEND in a.backends, "backend %s did not start" % BACKEND
        made.append(a)
        return a

    yield make
    made.clear()


class Pair:
    """An initiator and a target, each with a registered numpy buffer; the
    initiator loaded the target's metadata and the target the initiator's."""

    def __init__(self, make_agent, size=1 << 16, **kw):
        self.tgt = make_agent("target", **kw)
        self.ini = make_agent("initiator", **kw)
        self.size = size
        self.src = (np.arange(size, dtype=np.uint64).astype(np.uint8) * 7 + 3).astype(np.uint8)
        self.dst = np.zeros(size, dtype=np.uint8)
        self.ini_reg = self.ini.register_memory([(self.src.ctypes.data, size, 0, "")], "DRAM")
        self.tgt_reg = self.tgt.register_memory([(self.dst.ctypes.data, size, 0, "")], "DRAM")
        self.tgt_name = self.ini.add_remote_agent(self.tgt.get_agent_metadata())
        self.tgt.add_remote_agent(self.ini.get_agent_metadata())

    def local(self, off=0, n=None):
        n = self.size - off if n is None else n
        return self.ini.get_xfer_descs([(self.src.ctypes.data + off, n, 0)], "DRAM")

    def remote(self, off=0, n=None):
        n = self.size - off if n is None else n
        return self.ini.get_xfer_descs([(self.dst.ctypes.data + off, n, 0)], "DRAM")


@pytest.fixture
def pair(make_agent):
    return Pair(make_agent)


_counts = {"passed": 0, "failed": 0, "skipped": 0}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        key = report.outcome if report.outcome in _counts else "failed"
        if report.when == "setup" and report.outcome == "failed":
            key = "failed"
        _counts[key] += 1


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line("%d passed, %d failed, %d skipped" % (_counts["passed"], _counts["failed"],
                                                                      _counts["skipped"]))
