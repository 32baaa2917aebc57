#!/usr/bin/env python3
"""Python's cost over the C API, the same steps on the same shapes in the
same run (tests/bench/py_bench_ref.c is the C side), over UCX with two agents
in one process:

  descs_numpy    get_xfer_descs from an N x 3 numpy array (N = 1.5 M); the C
                 side allocates and fills a descriptor array of its own
  descs_tuples   get_xfer_descs from a list of N tuples
  prep           prep_xfer_dlist over the N descriptors (local side)
  make_post      make_prepped_xfer over 15,000 block ids + transfer + wait
                 (NIXL issue #176: 0.6 s through NIXL's Python)
  status         check_xfer_state on a finished request, per call

Prints RESULT lines: ns per descriptor (or per call) from Python and from C,
and their ratio. Goals: the numpy paths within 1.2x of C per descriptor; a
status call under 2 us."""

import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "python"))
from nixl._api import nixl_agent, nixl_agent_config  # noqa: E402

N, K, BLOCK, ROUNDS, CALLS = 1500000, 15000, 64, 5, 200000


def best_of(fn, rounds=ROUNDS, before=None):
    """median seconds of fn() over rounds; before() and freeing what fn
    returned happen outside the clock (as on the C side)"""
    ts = []
    for _ in range(rounds):
        if before:
            before()
        t0 = time.perf_counter()
        kept = fn()
        ts.append(time.perf_counter() - t0)
        del kept
    return sorted(ts)[len(ts) // 2]


def reference():
    ref = os.path.join(ROOT, "build", "py_bench_ref")
    out = subprocess.run([ref], check=True, capture_output=True, text=True,
                         env=dict(os.environ, NIXL_LOG_LEVEL="error")).stdout
    return {line.split()[1]: float(line.split()[2]) for line in out.splitlines() if line.startswith("REF ")}


def main():
    ref = reference()
    # no progress threads, as on the C side: the waits drive progress
    ini = nixl_agent("py-ini", nixl_agent_config(enable_prog_thread=False, backends=["UCX"]))
    tgt = nixl_agent("py-tgt", nixl_agent_config(enable_prog_thread=False, backends=["UCX"]))
    src = np.zeros(N * BLOCK, dtype=np.uint8)
    dst = np.zeros(N * BLOCK, dtype=np.uint8)
    ini.register_memory([(src.ctypes.data, src.nbytes, 0, "")], "DRAM")
    tgt.register_memory([(dst.ctypes.data, dst.nbytes, 0, "")], "DRAM")
    peer = ini.add_remote_agent(tgt.get_agent_metadata())
    rows = np.empty((N, 3), dtype=np.uint64)
    rows[:, 0] = src.ctypes.data + np.arange(N, dtype=np.uint64) * BLOCK
    rows[:, 1] = BLOCK
    rows[:, 2] = 0
    rrows = rows.copy()
    rrows[:, 0] = dst.ctypes.data + np.arange(N, dtype=np.uint64) * BLOCK
    tuples = [tuple(r) for r in rows.tolist()]
    results = []

    t = best_of(lambda: ini.get_xfer_descs(rows, "DRAM"))
    results.append(("descs_numpy", t * 1e9 / N, ref["descs"], "ns/desc"))
    t = best_of(lambda: ini.get_xfer_descs(tuples, "DRAM"), rounds=3)
    results.append(("descs_tuples", t * 1e9 / N, ref["descs"], "ns/desc"))
    dl = ini.get_xfer_descs(rows, "DRAM")
    handles = []

    def release_previous():  # as the C side: the previous round's list goes first, off the clock
        if handles:
            ini.release_dlist_handle(handles.pop())

    t = best_of(lambda: handles.append(ini.prep_xfer_dlist("NIXL_INIT_AGENT", dl)), before=release_previous)
    results.append(("prep", t * 1e9 / N, ref["prep"], "ns/desc"))
    local = handles[-1]
    remote = ini.prep_xfer_dlist(peer, ini.get_xfer_descs(rrows, "DRAM"))
    ids = (np.arange(K, dtype=np.int64) * (N // K))
    last = []

    def make_post():
        h = ini.make_prepped_xfer("WRITE", local, ids, remote, ids)
        state = ini.transfer(h)
        while state == "PROC":
            tgt.agent.progress()
            state = ini.check_xfer_state(h)
        assert state == "DONE"
        last.append(h)

    t = best_of(make_post)
    results.append(("make_post_15k", t * 1e9 / K, ref["make_post"], "ns/id"))
    print("FIGURE py_make_post_15k_ids seconds=%.4f (NIXL issue #176: 0.6 s through NIXL's Python)" % t)
    h = last[-1]
    check = ini.check_xfer_state

    def statuses():
        for _ in range(CALLS):
            check(h)

    t = best_of(statuses)
    results.append(("status_call", t * 1e9 / CALLS, ref["status"], "ns/call"))
    for name, py, c, unit in results:
        print("RESULT python_%s python=%.2f %s c_api=%.2f %s ratio=%.2f" % (name, py, unit, c, unit, py / c))
    st = [r for r in results if r[0] == "status_call"][0]
    print("FIGURE py_status_overhead_us=%.3f (goal < 2)" % ((st[1] - st[2]) / 1000.0))


if __name__ == "__main__":
    main()
