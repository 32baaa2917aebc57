#!/bin/sh
# tests/ucx_softroce.sh -- UCX over Soft-RoCE (rdma_rxe), inside the VM:
#   tests/softroce/vm-run tests/ucx_softroce.sh [test|bench|all]
# test:  what UCX sees on rxe0, which lanes it picks, then the backend's
#        two-process, ordering, loopback and peer-kill tests per transport list
#        (NIXL_UCX_VM_TLS, default "rc_verbs+tcp rc_verbs+ud_verbs"). UD needs
#        UCX_IB_GID_INDEX=0 on rxe (UCX 1.13's default GID index 1 loses every
#        UD packet), set here unless the caller set it; see nixl_ucx.h.
# bench: build/nixl_bench over rc_verbs+tcp next to ib_write_bw, same VM.
set -u
cd "$(dirname "$0")/.."
mode=${1:-all}
bin=build/test_ucx
dev=${NIXL_VM_RDMA_DEV:-rxe0}
ip=${NIXL_VM_IP:-192.0.2.1}
rc=0
export UCX_IB_GID_INDEX=${UCX_IB_GID_INDEX:-0}
if [ "$mode" != bench ]; then
    echo "== ucx_info on $(hostname): verbs transports"
    ucx_info -d 2>&1 | grep -E "Transport:|Device:" | paste - - | grep -E "verbs" | sort -u
    for tls in ${NIXL_UCX_VM_TLS:-rc_verbs+tcp rc_verbs+ud_verbs}; do
        echo "== lanes for tls=$tls"
        UCX_LOG_LEVEL=info NIXL_TEST_UCX_TLS=$tls timeout 300 "$bin" test_sizes_two_processes 2>&1 |
            grep -o "ep_cfg\[[0-9]*\]: .*" | sort -u
        echo "== test_ucx tls=$tls"
        NIXL_TEST_UCX_TLS=$tls NIXL_TEST_TIMEOUT_SCALE=4 timeout 900 "$bin" test_loopback \
            test_sizes_two_processes test_notification_ordering test_gen_notif_burst \
            test_dereg_while_peer_holds_rkey test_peer_killed || rc=1
    done
fi
if [ "$mode" != test ]; then
    echo "== build/nixl_bench UCX rc_verbs+tcp, 1 MiB WRITE x 200"
    timeout 300 build/nixl_bench --backend UCX --params tls=rc_verbs+tcp --block-min 1048576 --iters 200 --window 1 || rc=1
    timeout 300 build/nixl_bench --backend UCX --params tls=rc_verbs+tcp --block-min 1048576 --iters 200 --window 8 || rc=1
    echo "== ib_write_bw -s 1048576 -n 200 (columns: bytes iterations peak_MB/s avg_MB/s Mpps)"
    timeout 120 ib_write_bw -F -d "$dev" -s 1048576 -n 200 >/dev/null 2>&1 &
    sleep 1
    timeout 120 ib_write_bw -F -d "$dev" -s 1048576 -n 200 "$ip" 2>&1 | awk '/#bytes/ {getline; print; exit}'
    wait
fi
exit $rc
