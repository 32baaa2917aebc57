#!/usr/bin/env python3
"""A vLLM-shaped KV-cache pull: a prefill process holds KV blocks (layers x
blocks, one region per layer); a decode process fetches its metadata over
the side channel on a handshake thread, prepares both sides once from N x 3
numpy descriptors, and worker threads pull requests' blocks by id with
make_prepped_xfer (READ, a notification per request), check every byte, and
tell the prefill it may free the blocks (send_notif). The prefill counts the
notifications and exits when all came.

    PYTHONPATH=python python3 examples/python/kv_pull.py [--backend UCX|VERBS]
        [--layers 4] [--blocks 256] [--block-bytes 16384] [--requests 32] [--threads 4]
"""

import argparse
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from nixl._api import nixl_agent, nixl_agent_config  # noqa: E402


def block_content(layer, block, nbytes):
    """What the prefill wrote into (layer, block): the decode checks against it."""
    return ((np.arange(nbytes, dtype=np.uint32) + layer * 131 + block * 7) % 251).astype(np.uint8)


def block_rows(layers, base_addrs, blocks, block_bytes):
    """N x 3 descriptors, row = layer * blocks + block (vLLM's layout)."""
    rows = np.empty((layers * blocks, 3), dtype=np.uint64)
    for layer in range(layers):
        idx = slice(layer * blocks, (layer + 1) * blocks)
        rows[idx, 0] = base_addrs[layer] + np.arange(blocks, dtype=np.uint64) * block_bytes
        rows[idx, 1] = block_bytes
        rows[idx, 2] = 0
    return rows


def tagged(stream, tag, keep=False):
    """The words after `tag` on the child's next line that starts with it
    (its other lines, e.g. log lines, are passed through)."""
    for line in stream:
        if line.startswith(tag):
            return line.strip() if keep else line.split()[1:]
        sys.stdout.write(line)
    return None if keep else []


def wait(pred, what, timeout=60.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            sys.exit("kv_pull: timed out waiting for %s" % what)
        time.sleep(0.0005)


def prefill(args):
    agent = nixl_agent("prefill-0", nixl_agent_config(enable_listen_thread=True, listen_port=0,
                                                      backends=[args.backend]))
    kv = []
    for layer in range(args.layers):
        t = np.empty((args.blocks, args.block_bytes), dtype=np.uint8)
        for b in range(args.blocks):
            t[b] = block_content(layer, b, args.block_bytes)
        kv.append(t)
    agent.register_memory([(t.ctypes.data, t.nbytes, 0, "") for t in kv], "DRAM")
    print("PORT", agent.listen_port, flush=True)
    # tell the decode where the blocks are (vLLM sends this in its handshake)
    print("BASES", " ".join(str(t.ctypes.data) for t in kv), flush=True)
    freed = set()

    def all_freed():
        for msgs in agent.get_new_notifs().values():
            for m in msgs:  # "req-N" rides on each READ; "req-N:freed" is the decode's word
                if m.endswith(b":freed"):
                    freed.add(m.decode().split(":")[0])
        return len(freed) >= args.requests

    wait(all_freed, "every request's notification", 120)
    print("prefill-0: the decode freed all %d requests" % args.requests, flush=True)


def decode(args, port, remote_bases):
    agent = nixl_agent("decode-0", nixl_agent_config(backends=[args.backend]))
    mine = [np.zeros((args.blocks, args.block_bytes), dtype=np.uint8) for _ in range(args.layers)]
    agent.register_memory([(t.ctypes.data, t.nbytes, 0, "") for t in mine], "DRAM")
    local_rows = block_rows(args.layers, [t.ctypes.data for t in mine], args.blocks, args.block_bytes)
    local = agent.prep_xfer_dlist("NIXL_INIT_AGENT", local_rows, "DRAM")
    remote = {}

    def handshake():  # vLLM's handshake thread
        agent.fetch_remote_metadata("prefill-0", "127.0.0.1", port)
        wait(lambda: agent.check_remote_metadata("prefill-0"), "the prefill's metadata")
        rows = block_rows(args.layers, remote_bases, args.blocks, args.block_bytes)
        remote["h"] = agent.prep_xfer_dlist("prefill-0", rows, "DRAM")

    hs = threading.Thread(target=handshake)
    hs.start()
    rng = np.random.default_rng(11)
    work = queue.Queue()
    share = args.blocks // args.threads  # each worker lands its blocks in its own share of ours
    for r in range(args.requests):  # a request: some prefill blocks, in a random order
        n = int(rng.integers(1, share + 1))
        work.put((r, rng.choice(args.blocks, n, replace=False)))
    errors, moved = [], [0]
    lock = threading.Lock()

    def worker(w):
        wait(lambda: "h" in remote, "the handshake")
        mine_rng = np.random.default_rng(100 + w)
        while True:
            try:
                r, src_blocks = work.get_nowait()
            except queue.Empty:
                return
            dst_blocks = w * share + mine_rng.permutation(share)[:len(src_blocks)]
            try:
                # one descriptor per (layer, block): ids into the prepared lists
                lidx = np.concatenate([layer * args.blocks + dst_blocks for layer in range(args.layers)])
                ridx = np.concatenate([layer * args.blocks + src_blocks for layer in range(args.layers)])
                h = agent.make_prepped_xfer("READ", local, lidx, remote["h"], ridx, b"req-%d" % r)
                state = agent.transfer(h)
                while state == "PROC":
                    state = agent.check_xfer_state(h)
                if state != "DONE":
                    raise RuntimeError("request %d ended %s" % (r, state))
                agent.release_xfer_handle(h)
                for layer in range(args.layers):
                    for s, d in zip(src_blocks, dst_blocks):
                        if not (mine[layer][d] == block_content(layer, int(s), args.block_bytes)).all():
                            raise RuntimeError("request %d: layer %d block %d differs" % (r, layer, s))
                agent.send_notif("prefill-0", b"req-%d:freed" % r)
                with lock:
                    moved[0] += len(lidx) * args.block_bytes
            except Exception as e:  # noqa: BLE001 (reported by the main thread)
                errors.append(e)
                return

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads + [hs]:
        t.join()
    took = time.monotonic() - start
    if errors:
        sys.exit("kv_pull: %s" % errors[0])
    print("decode-0 %s: %d requests on %d threads, %.1f MB read in %.2f s; every byte matched"
          % (args.backend, args.requests, args.threads, moved[0] / 1e6, took), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="UCX")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=256)
    ap.add_argument("--block-bytes", type=int, default=16384)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--role", choices=["both", "prefill"], default="both")
    args = ap.parse_args()
    if args.role == "prefill":
        return prefill(args)
    cmd = [sys.executable, os.path.abspath(__file__), "--role", "prefill"] + sys.argv[1:]
    env = dict(os.environ, NIXL_LOG_LEVEL=os.environ.get("NIXL_LOG_LEVEL", "warning"))
    pre = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        port, bases = tagged(pre.stdout, "PORT"), tagged(pre.stdout, "BASES")
        if not port or len(bases) != args.layers:
            sys.exit("kv_pull: the prefill did not start")
        decode(args, int(port[0]), [int(b) for b in bases])
        print(tagged(pre.stdout, "prefill-0:", keep=True))
        if pre.wait(60) != 0:
            sys.exit("kv_pull: the prefill failed")
    finally:
        if pre.poll() is None:
            pre.kill()


if __name__ == "__main__":
    main()
