#!/usr/bin/env bash
# Records at the edges of the stream's limits reach the journal whole, and
# what cannot be recorded is refused up front with a clear error:
# - A tag of 100 "€" (100 characters, 300 bytes) is refused before
#   anything is logged, saying the limit is in bytes; a tag of 85 "€"
#   (255 bytes) arrives, restores by name, and replication goes on.
#   (Before: the 300-byte tag was logged, every reader refused it, the
#   sender stalled for good and a restart cut the log's tail.)
# - With the link down, nine writes end 44 bytes short of the sender's
#   4 MiB batch target and a 32 MiB write follows: once the link is back,
#   the big write travels in a batch of its own and everything arrives.
#   (Before: both went in one batch over the receiver's limit, refused
#   and resent forever.)
source "$(dirname "$0")/../lib/common.sh"

# No automatic checkpoints: the log must hold exactly the writes below.
setup_pair async 3600000 disk0:64M
start_recovery
start_protected

# checkpoint TAG: a tagged checkpoint that must reach the recovery journal.
checkpoint() {
    local out
    out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "$1" --wait 60s 2>&1) ||
        fail "checkpoint ${1:0:20}... did not reach the recovery journal: $out"
}
checkpoint base
for _ in $(seq 1 100); do
    [ "$(status_json recovery | jq -r '.vpgs[0].state' 2>/dev/null)" = protected ] && break
    sleep 0.2
done
[ "$(status_json recovery | jq -r '.vpgs[0].state')" = protected ] || fail "the initial copy did not complete"

log "a 300-byte tag (100 characters) is refused, and says why"
tag300=$(python3 -c 'print("€" * 100)')
if out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "$tag300" --wait 5s 2>&1); then
    fail "a 300-byte tag was accepted: $out"
fi
grep -q "300 bytes" <<<"$out" || fail "the refusal does not say the tag is 300 bytes: $out"
# Past the CLI too: the agent itself refuses it on its control socket.
python3 - "$WORK/a/data/control.sock" "$tag300" >"$WORK/raw.out" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"op": "checkpoint", "vpg": "vpg1", "tag": sys.argv[2], "wait_ms": 1000}).encode() + b"\n")
print(s.makefile().readline())
PY
grep -q '"ok":false' "$WORK/raw.out" || fail "the agent took a 300-byte tag: $(cat "$WORK/raw.out")"

log "a 255-byte tag (85 characters) arrives and restores by name"
qio_check "$NBD_URI/disk0" "write -P 77 40M 1M" "flush"
tag255=$(python3 -c 'print("€" * 85)')
checkpoint "$tag255"
restore_to "$tag255" "$WORK/out-tag"
cmp "$WORK/out-tag/disk0.img" "$WORK/src/disk0.img" || fail "the restore by the 255-byte tag differs from the source"

log "link down: writes ending 44 bytes short of a 4 MiB batch, then one of 32 MiB"
kill9 "$RECOVERY_PID"
cmds=()
for i in 0 1 2 3 4 5 6 7; do cmds+=("write -P $((i + 1)) $((i * 448))k 448k"); done
cmds+=("write -P 9 3584k 523776" "write -P 10 8M 32M" "flush")
qio_check "$NBD_URI/disk0" "${cmds[@]}"
start_recovery
checkpoint after-big
restore_to after-big "$WORK/out-big"
cmp "$WORK/out-big/disk0.img" "$WORK/src/disk0.img" || fail "the restore after the 32 MiB write differs from the source"
grep -q "bad batch\|over the limit" "$WORK/recovery.log" && fail "the recovery side refused a batch: $(grep -m1 "bad batch\|over the limit" "$WORK/recovery.log")"
log "PASS"
