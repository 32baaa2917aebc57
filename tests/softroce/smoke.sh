#!/usr/bin/env bash
# tests/softroce/smoke.sh -- check that the Soft-RoCE VM is fit for tests.
#
# Meant to run INSIDE the VM:   tests/softroce/vm-run tests/softroce/smoke.sh
# (it also works on any host whose RDMA device is given in NIXL_VM_RDMA_DEV
# and whose address is in NIXL_VM_IP).
#
# Prints one line per check, then exactly "N passed, M failed"; exits 1 if
# anything failed.  Every step that could block is bounded by timeout(1).
#
# Env: NIXL_VM_RDMA_DEV (default rxe0), NIXL_VM_IP (default 192.0.2.1),
#      SMOKE_PORT (perftest TCP port, default 18515).

set -u
DEV=${NIXL_VM_RDMA_DEV:-rxe0}
IP=${NIXL_VM_IP:-192.0.2.1}
PORT=${SMOKE_PORT:-18515}
pass=0 fail=0
TMP=$(mktemp -d) || exit 1
trap 'rm -rf "$TMP"' EXIT

ok() { echo "PASS: $*"; pass=$((pass + 1)); }
ko() { echo "FAIL: $*"; fail=$((fail + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >"$TMP/check.out" 2>&1; then ok "$what"; else
        ko "$what"
        sed 's/^/    /' "$TMP/check.out" | tail -n 10
    fi
}

check "rdma_rxe and rdma_ucm loaded" test -d /sys/module/rdma_rxe -a -d /sys/module/rdma_ucm
check "rdma_cm device node exists" test -c /dev/infiniband/rdma_cm

timeout 20 ibv_devinfo -d "$DEV" >"$TMP/devinfo" 2>&1
check "ibv_devinfo -d $DEV shows PORT_ACTIVE" grep -q PORT_ACTIVE "$TMP/devinfo"
check "$DEV active_mtu is 4096" grep -Eq 'active_mtu:[[:space:]]+4096' "$TMP/devinfo"
check "loopback has 127.0.0.1" sh -c 'ip -4 addr show dev lo | grep -q "inet 127.0.0.1"'
check "locked-memory limit is unlimited" test "$(ulimit -l)" = unlimited
shm_ok() { [ "$(stat -f -c %T "$1")" = tmpfs ] && : >"$1/.smoke.$$" && rm -f "$1/.smoke.$$"; }
check "/dev/shm and /tmp are writable tmpfs" sh -c "$(declare -f shm_ok); shm_ok /dev/shm && shm_ok /tmp"

# Real traffic: perftest RDMA WRITE between two processes over rxe.  -F:
# no CPU-frequency check (there is no cpufreq in the VM, perftest would
# complain).  The client retries while the server is still starting.
SIZE=65536 ITERS=200
# Generous bounds: under TCG on a busy 2-core machine even starting a
# process can take seconds.
timeout 120 ib_write_bw -F -d "$DEV" -p "$PORT" -s "$SIZE" -n "$ITERS" \
    >"$TMP/server.out" 2>&1 &
server=$!
client_rc=1
deadline=$((SECONDS + 60))
while :; do
    sleep 0.5
    timeout 60 ib_write_bw -F -d "$DEV" -p "$PORT" -s "$SIZE" -n "$ITERS" "$IP" \
        >"$TMP/client.out" 2>&1
    client_rc=$?
    # Only a failed connect (server not listening yet) is worth retrying;
    # anything else is a verdict.
    grep -q "Couldn't connect" "$TMP/client.out" || break
    [ "$SECONDS" -lt "$deadline" ] && kill -0 "$server" 2>/dev/null || break
done
wait "$server"
server_rc=$?
# The result row starts with the message size: "#bytes #iters peak avg ...".
bw=$(awk -v s="$SIZE" '$1 == s && NF >= 4 { print $4 }' "$TMP/client.out" | tail -n 1)
if [ "$client_rc" = 0 ] && [ "$server_rc" = 0 ] && awk -v b="${bw:-0}" 'BEGIN { exit !(b > 0) }'; then
    ok "ib_write_bw -d $DEV to $IP moved data: ${bw} MB/s at ${SIZE} B"
else
    ko "ib_write_bw -d $DEV to $IP (client rc $client_rc, server rc $server_rc, BW '${bw}')"
    tail -n 15 "$TMP/client.out" "$TMP/server.out" | sed 's/^/    /'
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
