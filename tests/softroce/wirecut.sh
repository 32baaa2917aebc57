#!/bin/sh
# tests/softroce/wirecut.sh -- two VMs joined by a wire (vm-run's two-VM mode):
# node 1 serves a target, node 2 transfers to it, then cuts the wire on its
# side (netem loss 100%: no DREQ, no NAK, just silence) and expects its next
# request to end in NIXL_ERR_REMOTE_DISCONNECT within the QP timeout.
# Closes with node 2's "N passed, M failed" line (node 1's is printed first).
set -u
cd "$(dirname "$0")/../.."
dir=build/wirecut
port=${NIXL_WIRECUT_PORT:-10131}
rm -rf "$dir"
mkdir -p "$dir"
NIXL_VM_TIMEOUT=400 NIXL_VM_NET=listen:$port tests/softroce/vm-run \
    build/test_verbs --wirecut-target "$dir" >"$dir/target.log" 2>&1 &
target=$!
NIXL_VM_TIMEOUT=400 NIXL_VM_NET=connect:$port tests/softroce/vm-run \
    build/test_verbs --wirecut-init "$dir" >"$dir/init.log" 2>&1
rc=$?
wait $target
trc=$?
sed 's/^/target: /' "$dir/target.log"
cat "$dir/init.log"
[ $rc -eq 0 ] && [ $trc -eq 0 ]
