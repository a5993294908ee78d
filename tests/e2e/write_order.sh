#!/usr/bin/env bash
# Write order across volumes: one writer alternates numbered writes between
# the two volumes of a VPG, each write waiting for the previous reply. Every
# write goes to its own slot, so a crash-consistent image holds exactly
# writes 0..m for some m. Every restored checkpoint must be such a prefix
# ("if volume B holds write k, volume A holds every write before k").
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 vola:16M volb:16M
start_recovery
start_protected
sleep 1

WRITES=3000
python3 - "$NBD_PORT" "$WRITES" <<'PY' || fail "ordered writer failed"
import struct, sys, time
from nbdclient import Client
port, n = int(sys.argv[1]), int(sys.argv[2])
a = Client("127.0.0.1", port, "vola")
b = Client("127.0.0.1", port, "volb")
start = time.time()
for k in range(n):
    block = struct.pack("<Q", k + 1) * 512  # 4 KiB; k+1 so zeros mean "absent"
    (a if k % 2 == 0 else b).write((k // 2) * 4096, block)
    if k % 50 == 0:
        time.sleep(0.1)  # spread the writes over several checkpoints
a.flush(); b.flush()
print("wrote %d ordered writes in %.1f s" % (n, time.time() - start))
PY
wait_replicated 120

"$TIDEMARK" checkpoints --json --config "$WORK/recovery.toml" --vpg vpg1 | jq -r '.[] | select(.consistent) | .id' >"$WORK/ids"
total=$(wc -l <"$WORK/ids")
[ "$total" -ge 4 ] || fail "only $total checkpoints; the writer should have spanned several"
# Every checkpoint is checked (restores of 2 x 16 MiB are cheap).
partial=0
while read -r id; do
    rm -rf "$WORK/r"
    restore_to "$id" "$WORK/r"
    m=$(python3 "$ROOT/tests/lib/order_prefix.py" "$WORK/r/vola.img" "$WORK/r/volb.img" "$WRITES") || fail "checkpoint $id is not a prefix of the write order: $m"
    [ "$m" -ge 0 ] && [ "$m" -lt $((WRITES - 1)) ] && partial=$((partial + 1))
done <"$WORK/ids"
[ "$partial" -ge 2 ] || fail "only $partial checkpoints fell inside the write run; the test proved nothing"
log "$total checkpoints restored, each a prefix of the write order ($partial mid-run)"
