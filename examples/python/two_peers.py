#!/usr/bin/env python3
"""Two peers over the metadata side channel, in the shape of NIXL's basic
Python example: the target registers a tensor and serves its metadata; the
initiator fetches it, READs the tensor with a notification, and checks every
byte. Both roles run as separate processes (this script starts the target).

    PYTHONPATH=python python3 examples/python/two_peers.py [--backend UCX|VERBS] [--bytes N]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from nixl import _bindings as nixlBind  # noqa: E402
from nixl._api import nixl_agent, nixl_agent_config  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


def pattern(n):
    return (np.arange(n, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)


def tagged(stream, tag, keep=False):
    """The words after `tag` on the child's next line that starts with it
    (its other lines, e.g. log lines, are passed through)."""
    for line in stream:
        if line.startswith(tag):
            return line.strip() if keep else line.split()[1:]
        sys.stdout.write(line)
    return None if keep else []


def wait(pred, what, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            sys.exit("two_peers: timed out waiting for %s" % what)
        time.sleep(0.001)


def target(args):
    agent = nixl_agent("target", nixl_agent_config(enable_listen_thread=True, listen_port=0,
                                                   backends=[args.backend]))
    if torch is not None:  # a tensor, as NIXL's example registers
        t = torch.from_numpy(pattern(args.bytes))
        descs = agent.register_memory(t)
    else:
        t = pattern(args.bytes)
        descs = agent.register_memory([(t.ctypes.data, t.nbytes, 0, "")], "DRAM")
    print("PORT", agent.listen_port, flush=True)  # tells the parent where to fetch from
    # the initiator sends its metadata; then it gets our descriptors
    wait(lambda: agent.check_remote_metadata("initiator"), "the initiator's metadata")
    agent.send_notif("initiator", agent.get_serialized_descs(descs.trim()))
    wait(lambda: agent.check_remote_xfer_done("initiator", b"UUID"), "the initiator's notification")
    print("target: the initiator read our %d bytes and said so" % args.bytes, flush=True)


def initiator(args, port):
    agent = nixl_agent("initiator", nixl_agent_config(backends=[args.backend]))
    buf = np.zeros(args.bytes, dtype=np.uint8)
    local = agent.register_memory([(buf.ctypes.data, buf.nbytes, 0, "")], "DRAM")
    agent.fetch_remote_metadata("target", "127.0.0.1", port)
    agent.send_local_metadata("127.0.0.1", port)
    wait(lambda: agent.check_remote_metadata("target"), "the target's metadata")
    notifs = {}

    def got_descs():
        notifs.update(agent.get_new_notifs())
        return notifs.get("target")

    wait(got_descs, "the target's descriptors")
    remote = agent.deserialize_descs(notifs["target"][0])
    start = time.monotonic()
    h = agent.initialize_xfer("READ", local.trim(), remote, "target", b"UUID")
    state = agent.transfer(h)
    while state == "PROC":
        state = agent.check_xfer_state(h)
    took = time.monotonic() - start
    if state != "DONE":
        sys.exit("two_peers: the READ ended %s" % state)
    agent.release_xfer_handle(h)
    if not (buf == pattern(args.bytes)).all():
        sys.exit("two_peers: the bytes differ")
    print("two_peers %s: READ of %d bytes in %.1f ms; every byte matched" % (args.backend, args.bytes, took * 1e3),
          flush=True)
    try:
        agent.remove_remote_agent("target")
    except nixlBind.nixlNotFoundError:
        pass  # the target already left, and its metadata went with it


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="UCX")
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--role", choices=["both", "target"], default="both")
    args = ap.parse_args()
    if args.role == "target":
        return target(args)
    env = dict(os.environ, NIXL_LOG_LEVEL=os.environ.get("NIXL_LOG_LEVEL", "warning"))
    tgt = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", "target", "--backend", args.backend,
                            "--bytes", str(args.bytes)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        port = tagged(tgt.stdout, "PORT")
        if not port:
            sys.exit("two_peers: the target did not start")
        initiator(args, int(port[0]))
        print(tagged(tgt.stdout, "target:", keep=True))
        if tgt.wait(30) != 0:
            sys.exit("two_peers: the target failed")
    finally:
        if tgt.poll() is None:
            tgt.kill()


if __name__ == "__main__":
    main()
