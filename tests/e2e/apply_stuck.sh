#!/usr/bin/env bash
# An apply to the replica that cannot finish (its disk is full: failpoint
# replica-apply) does not keep the recovery agent from starting. The
# applier records the apply's target before it writes the replica, and
# the next start finishes an interrupted apply before it opens anything;
# when that failed too, the whole agent exited at every start, every VPG
# with it, until someone edited apply.json by hand (review of helper-50).
# Now the start leaves the apply pending: the agent takes batches, serves
# the checkpoints from the apply's target on, says why in status, and
# finishes the apply once the disk takes it.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

setup_pair async 1000 disk0:128M
printf '[[vpg]]\nname = "vpg1"\nhistory = "1h"\njournal_limit = "64MiB"\n' >>"$WORK/recovery.toml"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="replica-apply=return" start_recovery
start_protected

log "96 MiB over a 64 MiB journal_limit: the applier applies early, and the replica's disk refuses it"
head -c 96M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"
wait_replicated 120
for _ in $(seq 1 100); do
    grep -q '"applying_to": [0-9]' "$JDIR/apply.json" 2>/dev/null && break
    sleep 0.2
done
grep -q '"applying_to": [0-9]' "$JDIR/apply.json" || fail "no apply began: the test proves nothing"
target=$(jq -r '.applying_to' "$JDIR/apply.json")
wait_status recovery "applier failed (retrying)"

log "SIGKILL; the start cannot finish the apply to seq $target either"
kill9 "$RECOVERY_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="replica-apply=return" start_recovery
sleep 2
kill -0 "$RECOVERY_PID" 2>/dev/null || fail "the recovery agent did not start: $(tail -3 "$WORK/recovery.log")"
grep -q "cannot be finished now" "$WORK/recovery.log" || fail "the start did not say the apply is pending"
wait_status recovery "applier failed (retrying)"
[ "$(jq -r '.applying_to' "$JDIR/apply.json")" = "$target" ] || fail "the pending apply's target changed"

log "replication goes on, and a checkpoint after the apply's target restores equal to the source"
qio_check "$NBD_URI/disk0" "write -P 0x77 100M 1M" flush
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag during --wait 60s >/dev/null ||
    fail "no checkpoint was replicated while the apply is pending"
restore_equal during "$WORK/src/disk0.img" "with the apply pending"

log "the disk takes writes again: the apply finishes"
kill9 "$RECOVERY_PID"
start_recovery
for _ in $(seq 1 100); do
    grep -q '"applying_to": null' "$JDIR/apply.json" && [ "$(applied_seq)" -ge "$target" ] && break
    sleep 0.2
done
[ "$(applied_seq)" -ge "$target" ] || fail "the pending apply was not finished once the disk took it"
restore_equal during "$WORK/src/disk0.img" "after the apply"
log "PASS"
