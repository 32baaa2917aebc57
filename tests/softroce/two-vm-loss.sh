#!/usr/bin/env bash
# tests/softroce/two-vm-loss.sh -- nixl.h over a lossy wire between two VMs.
#
# Run on the host:   tests/softroce/two-vm-loss.sh
# Node 1 (192.0.2.10) runs the kv_cache example's prefill side twice; node 2
# (192.0.2.11) runs its decode side against it, first with 1% and then with
# 10% packet loss on its wire (tc netem). RC retransmits what netem drops:
# every request must finish and every byte must match. Prints one line per
# case and "N passed, M failed".
set -u
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$HERE/../.." && pwd -P)
KV="$REPO/build/kv_cache"
ARGS=(--backend VERBS --layers 1 --blocks 32 --block-bytes 16384 --requests 4 --max-prompt 128)
LOSSES=(1 10)

node1() {
    local i rc=0
    for i in "${!LOSSES[@]}"; do
        timeout 400 "$KV" "${ARGS[@]}" --role prefill --port $((5600 + i)) || rc=1
    done
    return $rc
}

node2() {
    local i pass=0 fail=0 loss
    for i in "${!LOSSES[@]}"; do
        loss=${LOSSES[$i]}
        # the prefill side needs a moment to listen; retry the metadata fetch
        tc qdisc replace dev eth0 root netem loss "${loss}%"
        local t0=$SECONDS ok=0
        for _ in $(seq 60); do
            if timeout 300 "$KV" "${ARGS[@]}" --role decode --ip "$NIXL_VM_PEER_IP" --port $((5600 + i)) >/tmp/kv.$i 2>&1; then
                ok=1; break
            fi
            grep -q "fetch_remote_md\|connect to" /tmp/kv.$i || break
            sleep 1
        done
        tc qdisc del dev eth0 root
        if [ $ok = 1 ] && grep -q "every byte matched" /tmp/kv.$i; then
            echo "PASS: ${loss}% loss: $(grep -o '[0-9.]* MB read.*' /tmp/kv.$i) ($((SECONDS - t0)) s)"
            pass=$((pass + 1))
        else
            echo "FAIL: ${loss}% loss"; tail -5 /tmp/kv.$i; fail=$((fail + 1))
        fi
    done
    echo "node2: $pass passed, $fail failed"
    [ $fail = 0 ]
}

case ${1:-} in
--node1) node1; exit ;;
--node2) node2; exit ;;
esac

[ -x "$KV" ] || { echo "two-vm-loss: build $KV first (make)"; echo "0 passed, 1 failed"; exit 1; }
port=${NIXL_VM_PORT:-$((20000 + $$ % 20000))}
NIXL_VM_NET=listen:$port "$HERE/vm-run" "$HERE/two-vm-loss.sh" --node1 2>&1 | sed 's/^/[node1] /' &
n1=$!
NIXL_VM_NET=connect:$port "$HERE/vm-run" "$HERE/two-vm-loss.sh" --node2 2>&1 | sed 's/^/[node2] /'
r2=${PIPESTATUS[0]}
wait "$n1"
r1=$?
echo "node1 exit $r1, node2 exit $r2"
if [ "$r1" = 0 ] && [ "$r2" = 0 ]; then echo "${#LOSSES[@]} passed, 0 failed"; else echo "0 passed, ${#LOSSES[@]} failed"; fi
[ "$r1" = 0 ] && [ "$r2" = 0 ]
