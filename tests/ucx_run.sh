#!/usr/bin/env bash
# tests/ucx_run.sh -- runs the UCX backend's suite, its valgrind check and
# its benchmark, natively (UCX needs no RDMA hardware: tcp, shared memory).
#
#   tests/ucx_run.sh test      [BIN]  build/test_ucx once per transport list
#   tests/ucx_run.sh valgrind  [BIN]  the suite under memcheck (tcp, posix)
#   tests/ucx_run.sh bench     [BIN]  build/nixl_bench --backend UCX next to ucx_perftest
#
# Transport lists (the backend's tls= param, '+' between transports):
#   tcp         TCP over loopback (RMA emulated with active messages)
#   posix       shared memory, POSIX segments (RMA in software emulation)
#   sysv        shared memory, System V segments
#   cma+posix   cross-memory attach plus posix; UCX 1.13 still does RMA over
#               posix (cma serves only rendezvous), see nixl_ucx.h
# NIXL_UCX_TLS_LISTS="tcp posix" overrides the list. Exit status: non-zero when
# any run failed.
set -u
cd "$(dirname "$0")/.."
mode=${1:-test}
lists=${NIXL_UCX_TLS_LISTS:-"tcp posix sysv cma+posix"}
rc=0

case "$mode" in
test)
    bin=${2:-build/test_ucx}
    tp=0 tf=0
    for t in $lists; do
        echo "== test_ucx tls=$t"
        out=$(mktemp)
        NIXL_TEST_UCX_TLS=$t "$bin" 2>&1 | tee "$out"
        [ "${PIPESTATUS[0]}" = 0 ] || rc=1
        line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
        rm -f "$out"
        if [ -n "$line" ]; then
            tp=$((tp + ${line%% passed*})); f=${line#*passed, }; tf=$((tf + ${f%% failed*}))
        else
            tf=$((tf + 1))
        fi
    done
    [ $rc = 0 ] || [ $tf -gt 0 ] || tf=1
    echo "all-transports: $tp passed, $tf failed"
    ;;
valgrind)
    bin=${2:-build/test_ucx}
    vlists=${NIXL_UCX_TLS_LISTS:-"tcp posix"}
    for t in $vlists; do
        echo "== valgrind test_ucx tls=$t"
        logs=$(mktemp -d)
        supp=()
        [ -f tests/ucx.supp ] && supp=(--suppressions=tests/ucx.supp)
        NIXL_TEST_UCX_TLS=$t NIXL_TEST_TIMEOUT_SCALE=20 \
            valgrind --quiet --leak-check=full --show-leak-kinds=definite \
            --errors-for-leak-kinds=definite "${supp[@]}" \
            --log-file="$logs/vg.%p" "$bin" || rc=1
        # one log per process (tests and their peers fork)
        bad=$(grep -l "ERROR SUMMARY: [1-9]\|definitely lost: [1-9]" "$logs"/vg.* 2>/dev/null)
        if [ -n "$bad" ]; then
            echo "memcheck errors:"; cat $bad; rc=1
        else
            echo "memcheck: $(ls "$logs" | wc -l) processes, no errors"
        fi
        rm -rf "$logs"
    done
    ;;
bench)
    bin=${2:-build/nixl_bench}
    port=${NIXL_UCX_BENCH_PORT:-13337}
    blists=${NIXL_UCX_TLS_LISTS:-"tcp posix sysv"}
    for t in $blists; do
        ucxtls=${t//+/,}
        echo "== tls=$t, 1 MiB WRITE x 1000"
        "$bin" --backend UCX --params "tls=$t" --block-min 1048576 --iters 1000 --window 1 || rc=1
        "$bin" --backend UCX --params "tls=$t" --block-min 1048576 --iters 1000 --window 8 || rc=1
        UCX_TLS=$ucxtls ucx_perftest -p $port >/dev/null 2>&1 &
        srv=$!
        sleep 1
        UCX_TLS=$ucxtls ucx_perftest 127.0.0.1 -p $port -t ucp_put_bw -s 1048576 -n 1000 2>&1 |
            awk -v t="$t" '/Final:/ { printf "ucx_perftest ucp_put_bw tls=%s size=1048576 iters=1000 bw=%s MB/s (avg %s)\n", t, $7, $6 }'
        wait $srv 2>/dev/null
        port=$((port + 1))
    done
    ;;
*)
    echo "usage: $0 test|valgrind|bench [BIN]" >&2
    exit 2
    ;;
esac
exit $rc
