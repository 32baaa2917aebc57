#!/usr/bin/env bash
# tests/softroce/two-vm.sh -- two Soft-RoCE VMs joined by a virtual wire.
#
# Run on the host:   tests/softroce/two-vm.sh
# Starts two VMs with tests/softroce/vm-run (NIXL_VM_NET=listen:PORT and
# connect:PORT), then checks, from node 2 (192.0.2.11) towards node 1
# (192.0.2.10):
#   1. RDMA WRITE over the wire works (ib_write_bw, node 1 serving);
#   2. after cutting the wire (netem: 100% loss on eth0, port stays ACTIVE)
#      node 1 can no longer be reached (bounded by timeout);
#   3. after restoring the wire RDMA WRITE works again.
# It is also the worked example of a two-host test.  Prints one line per
# check and "N passed, M failed"; exits 1 on failure.
#
# Env: NIXL_VM_PORT  host TCP port of the wire (default: derived from $$).
#      Everything vm-run reads (NIXL_VM_TIMEOUT ...) applies to both VMs.

set -u
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)

node1() { # serves two ib_write_bw runs (before the cut, after the restore)
    timeout 240 ib_write_bw -F -d rxe0 -p 18515 -n 100 >/tmp/a 2>&1 &
    local a=$!
    timeout 240 ib_write_bw -F -d rxe0 -p 18517 -n 100 >/tmp/b 2>&1 &
    local b=$!
    wait "$a"; local ra=$?
    wait "$b"; local rb=$?
    echo "node1: servers exited $ra $rb"
    [ "$ra" = 0 ] && [ "$rb" = 0 ]
}

client() { # client PORT TRIES: ib_write_bw to node 1, retrying the connect
    local rc=1
    for _ in $(seq "$2"); do
        timeout 60 ib_write_bw -F -d rxe0 -p "$1" -n 100 "$NIXL_VM_PEER_IP" >/tmp/c 2>&1
        rc=$?
        grep -q "Couldn't connect" /tmp/c || break
        sleep 1
    done
    awk '$1 == 65536 && NF >= 4 { print "    " $4 " MB/s" }' /tmp/c
    return "$rc"
}

node2() {
    local pass=0 fail=0
    if client 18515 120; then echo "PASS: RDMA WRITE node2 -> node1 over the wire"; pass=$((pass + 1))
    else echo "FAIL: RDMA WRITE node2 -> node1 over the wire"; tail -5 /tmp/c; fail=$((fail + 1)); fi

    tc qdisc add dev eth0 root netem loss 100%
    # Nobody serves 18516; with the wire cut the TCP connect must time out
    # rather than be refused.
    if timeout 15 bash -c "exec 3<>/dev/tcp/$NIXL_VM_PEER_IP/18516" 2>/dev/null; then
        echo "FAIL: wire cut (node 1 still answers)"; fail=$((fail + 1))
    elif [ "$(cat /sys/class/infiniband/rxe0/ports/1/state)" = "4: ACTIVE" ]; then
        echo "PASS: wire cut (no answer, rxe0 port still ACTIVE)"; pass=$((pass + 1))
    else
        echo "FAIL: wire cut took the port down"; fail=$((fail + 1))
    fi
    tc qdisc del dev eth0 root

    if client 18517 30; then echo "PASS: RDMA WRITE again after restoring the wire"; pass=$((pass + 1))
    else echo "FAIL: RDMA WRITE again after restoring the wire"; tail -5 /tmp/c; fail=$((fail + 1)); fi
    echo "node2: $pass passed, $fail failed"
    [ "$fail" = 0 ]
}

case ${1:-} in
--node1) node1; exit ;;
--node2) node2; exit ;;
esac

port=${NIXL_VM_PORT:-$((20000 + $$ % 20000))}
NIXL_VM_NET=listen:$port "$HERE/vm-run" "$HERE/two-vm.sh" --node1 2>&1 | sed 's/^/[node1] /' &
n1=$!
NIXL_VM_NET=connect:$port "$HERE/vm-run" "$HERE/two-vm.sh" --node2 2>&1 | sed 's/^/[node2] /'
r2=${PIPESTATUS[0]}
wait "$n1"
r1=$?
pass=0 fail=0
for r in "$r1" "$r2"; do if [ "$r" = 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi; done
echo "node1 vm-run exit $r1, node2 vm-run exit $r2"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
