#!/usr/bin/env bash
# Nothing is logged before a start's resync mark (docs/bitmap-mode.md).
# A start that finds regions to read again (here the last write before a
# SIGKILL) marks the stream's end as no image before it logs anything.
# When the disk does not take that mark at the start (failpoint
# no-image-mark, for the resync-start mark) and bitmap mode is off, the VPG logs writes at once:
# the mark must go into the log before the first of them. Before, it
# never did, and `head` stayed restorable while the resync had read back
# some regions and not others, until the next scheduled checkpoint (here
# none for ten minutes).
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

BITMAP_TOML=$'[vpg.bitmap]\nenabled = false' setup_pair async 600000 disk0:32M
start_recovery
start_protected
checkpoints_json() { "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json; }
# wait_acked: the recovery journal holds everything the protected log has
# now (no scheduled checkpoint comes to say so: wait_replicated waits for one).
wait_acked() {
    local st head_seq
    st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
    head_seq=$(jq -r '.vpgs[0].head_seq' <<<"$st")
    for _ in $(seq 1 150); do
        [ "$(status_json protected | jq -r '.vpgs[0].acked_seq')" -ge "$head_seq" ] && return 0
        sleep 0.2
    done
    fail "the recovery journal did not take seq $head_seq within 30 s"
}

head -c 8M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"
# No scheduled checkpoint comes: the tagged one goes after the initial copy.
for _ in $(seq 1 150); do
    [ "$(status_json recovery | jq -r '.vpgs[0].state')" = protected ] && break
    sleep 0.2
done
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before --wait 60s >/dev/null ||
    fail "the checkpoint before the kill was not taken"
wait_acked
cp "$WORK/src/disk0.img" "$WORK/before.img"

log "a write, then SIGKILL: the start reads its range again"
qio_check "$NBD_URI/disk0" "write -P 0x5a 1M 1M" flush
st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
end_before=$(jq -r '.vpgs[0].head_seq' <<<"$st")
kill9 "$PROTECTED_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="no-image-mark=return(resync-start)" start_protected
grep -q "marking the resync's start in the protected log" "$WORK/protected.log" ||
    fail "the start did not meet the refused mark: $(grep -i resync "$WORK/protected.log" | tail -3)"
grep -q "starting in bitmap mode" "$WORK/protected.log" && fail "bitmap mode is off, yet the start went to it"

log "writes logged right after the start"
qio_check "$NBD_URI/disk0" "write -P 0x6b 4M 1M" flush
wait_acked

list=$(checkpoints_json)
# The mark is the first record after the start, before the resync's
# read-back and the write.
jq -e --argjson at $((end_before + 1)) '[.[] | select(.tag == "resync-start") | .id] == [$at]' <<<"$list" >/dev/null ||
    fail "no resync-start mark at seq $((end_before + 1)), the first after the start: $(jq -c '[.[] | {id, tag, consistent}]' <<<"$list")"
if "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint head --out "$WORK/head" >"$WORK/head.out" 2>&1; then
    fail "head was restored while the start's resync was logged without its mark"
fi
grep -qi "resync" "$WORK/head.out" || fail "the refused restore of head does not say why: $(cat "$WORK/head.out")"
restore_equal before "$WORK/before.img" "after the restart"

log "a checkpoint once the resync is done restores equal to the source"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after --wait 60s >"$WORK/cp.out" 2>&1 ||
    fail "the checkpoint after the resync was not taken: $(cat "$WORK/cp.out")"
wait_acked
restore_equal after "$WORK/src/disk0.img" "after the resync"
log "PASS"
