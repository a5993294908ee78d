#!/usr/bin/env bash
# Crashes and failures at exact points, with the test build's failpoints
# (build/test/tidemark, FAILPOINTS=...). Each needs no operator afterwards:
# - A new stream (the recovery journal was lost) is cut down between
#   storing "nothing copied yet" and its StreamStart: after a restart every
#   volume is copied again and a checkpoint restores equal to the source.
#   (Before, the two steps ran the other way round: a stop between them
#   skipped the copy for good, and "latest" froze with no warning.)
# - A volume write fails after its record was logged: the guest gets an
#   error, and the replica must not hold what the volume does not. (Before:
#   the failed write was replicated.)
# - A failover is cut down after it set aside the first journal segment:
#   the next start finishes it. (Before: segments were set aside before the
#   record existed, so a crash left a VPG neither failed over nor whole.)
source "$(dirname "$0")/../lib/common.sh"

[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"
EXPORT_PORT=$((PORT_BASE + 6))
LOG_PREALLOCATE=true LOG_CAPACITY=$((64 << 20)) setup_pair async 1000 disk0:32M disk1:8M
# Journal segments of 4 MiB, so a failover sets aside several.
printf '[exports]\nlisten = "127.0.0.1:%s"\n[[vpg]]\nname = "vpg1"\njournal_limit = "64MiB"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="restart-stream-after-state=return" start_protected
wait_replicated 60

log "a new stream, cut down between the copy state and its StreamStart"
# Enough to roll the log's 4 MiB segments, so the acknowledged ones (with
# the stream's start) are retired and the log cannot replay from it.
qio_check "$NBD_URI/disk0" "write -P 0x31 2M 12M" "flush"
wait_replicated 60
kill9 "$RECOVERY_PID"
rm -rf "$WORK/b/data/journal/vpg1"
start_recovery
for _ in $(seq 1 100); do kill -0 "$PROTECTED_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PROTECTED_PID" 2>/dev/null && fail "the protected agent did not reach the failpoint (no new stream?)"
grep -q "starting a new stream" "$WORK/protected.log" || fail "the protected agent did not start a new stream"
start_protected
wait_replicated 90
restore_to latest "$WORK/out1"
for v in disk0 disk1; do
    cmp "$WORK/out1/$v.img" "$WORK/src/$v.img" || fail "$v differs from the source after the interrupted new stream"
done
log "after the crash every volume was copied again; latest restores equal to the source"

log "a volume write that fails after it was logged"
kill9 "$PROTECTED_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="volume-write=1*return" start_protected
if qemu-io -f raw -c "write -P 0xee 6M 64k" "$NBD_URI/disk0" >"$WORK/failed-write.out" 2>&1 &&
    ! grep -qi "error" "$WORK/failed-write.out"; then
    fail "the failed volume write was acknowledged: $(cat "$WORK/failed-write.out")"
fi
qio_check "$NBD_URI/disk0" "write -P 0x32 7M 64k" "flush"
wait_replicated 60
restore_to latest "$WORK/out2"
cmp "$WORK/out2/disk0.img" "$WORK/src/disk0.img" || fail "the replica holds a write that failed on the volume"
log "the guest got an error; the replica equals the volume"

log "a failover cut down after its first segment was set aside"
kill9 "$PROTECTED_PID"
start_protected
qio_check "$NBD_URI/disk0" "write -P 0x33 0 12M" "flush"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag golden --wait 30s >/dev/null || fail "checkpoint failed"
restore_to golden "$WORK/golden"
qio_check "$NBD_URI/disk0" "write -P 0x34 0 12M" "flush"
wait_replicated 60
segments=$(find "$JDIR" -maxdepth 1 -name '*.tmjrn' | wc -l)
[ "$segments" -ge 3 ] || fail "only $segments journal segments; the test needs several"
kill9 "$RECOVERY_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="failover-set-aside=return" start_recovery
"$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden --files >"$WORK/fo.out" 2>&1 &&
    fail "the failover completed past its failpoint: $(cat "$WORK/fo.out")"
for _ in $(seq 1 50); do kill -0 "$RECOVERY_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$RECOVERY_PID" 2>/dev/null && fail "the recovery agent did not stop at the failpoint"
[ "$(find "$JDIR/after-failover" -name '*.tmjrn' | wc -l)" = 1 ] || fail "the crash was not after exactly one segment"
start_recovery
wait_status recovery "failed over at checkpoint"
[ "$(find "$JDIR/after-failover" -name '*.tmjrn' | wc -l)" = "$segments" ] || fail "not every segment was set aside"
[ -z "$(find "$JDIR" -maxdepth 1 -name '*.tmjrn' -size +32c)" ] || fail "records were left in the journal after the restart"
cmp "$WORK/golden/disk0.img" "$JDIR/replica/disk0.img" || fail "the failed-over disk0 is not checkpoint golden"
cmp "$WORK/golden/disk1.img" "$JDIR/replica/disk1.img" || fail "the failed-over disk1 is not checkpoint golden"
grep -q "finishing a failover a stop interrupted" "$WORK/recovery.log" || fail "the restart did not say it finished the failover"
log "the restart finished the failover: golden is live, every later segment set aside"
log "PASS"
