#!/usr/bin/env bash
# Cancelling an unfinished move. A move that gives up waiting (a backlog
# behind a 4 MiB/s link, --wait 2s) leaves writes refused; `move --cancel`
# asks the recovery side, which confirms it has not taken over, and writes
# are taken again, also after a SIGKILL and restart; replication goes on
# and a restore equals the source. With the recovery agent dead the cancel
# changes nothing (it may have taken over); once it is back the cancel
# goes through. Reverse during an unfinished move is refused. Cancel with no move, or after a finished move, is a clear
# error; a finished move still works after all this.
source "$(dirname "$0")/../lib/common.sh"

THROTTLE=$((4 << 20)) setup_pair async 1000 disk0:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' $((PORT_BASE + 6)) >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60
tm() { "$TIDEMARK" "$@" --config "$WORK/protected.toml" --vpg vpg1; }
writes_ok() { qemu-io -f raw -c "write -P $1 $2 64k" "$NBD_URI/disk0" >/dev/null 2>&1; }
backlog() { # 24 MiB of random data behind the 4 MiB/s link
    head -c 8M /dev/urandom >"$WORK/backlog"
    qemu-io -f raw -c "write -s $WORK/backlog 0 8M" -c "write -s $WORK/backlog 4M 8M" \
        -c "write -s $WORK/backlog 8M 8M" "$NBD_URI/disk0" >/dev/null || fail "backlog write failed"
}
# gives_up: a move that gives up waiting, leaving writes refused.
gives_up() {
    backlog
    if tm move --wait 2s >"$WORK/move.out" 2>&1; then fail "the move finished although the link was slow: $(cat "$WORK/move.out")"; fi
    grep -q "writes stay refused" "$WORK/move.out" || fail "the failed move did not say writes stay refused: $(cat "$WORK/move.out")"
    writes_ok 0x11 0 && fail "a write was taken during an unfinished move"
    true
}

out=$(tm move --cancel 2>&1) && fail "cancel with no move succeeded: $out"
grep -q "has no move to cancel" <<<"$out" || fail "cancel with no move: $out"

log "a move that gives up, then --cancel with the link up"
gives_up
# Reverse protection is for a VPG the recovery site runs: during an
# unfinished move it is refused and recorded nowhere (a recorded reverse
# would keep the sender stopped after the cancel and a restart).
out=$(tm reverse --wait 3s 2>&1) && fail "reverse during an unfinished move succeeded: $out"
grep -q "unfinished move" <<<"$out" || fail "reverse during an unfinished move said: $out"
state=$WORK/a/data/log/vpg1/capture-state.json
[ -f "$state" ] || fail "no capture state at $state"
grep -q '"reverse": {' "$state" && fail "a refused reverse was recorded: $(cat "$state")"
tm move --cancel >"$WORK/cancel.out" 2>&1 || fail "cancel failed: $(cat "$WORK/cancel.out")"
grep -q "cancelled: the recovery site confirmed" "$WORK/cancel.out" || fail "cancel said: $(cat "$WORK/cancel.out")"
writes_ok 0x22 1M || fail "writes are still refused after the cancel"
log "cancelled; writes taken again: $(cat "$WORK/cancel.out")"
kill9 "$PROTECTED_PID"
start_protected
writes_ok 0x23 2M || fail "writes are refused again after a restart"
wait_replicated 120
restore_to latest "$WORK/out1"
cmp "$WORK/out1/disk0.img" "$WORK/src/disk0.img" || fail "after the cancel, the restore differs from the source"
log "replication went on: the latest checkpoint restores equal to the source"

log "a move that gives up, then --cancel with the recovery agent dead"
gives_up
kill9 "$RECOVERY_PID"
if tm move --cancel --wait 3s >"$WORK/cancel2.out" 2>&1; then
    fail "cancel succeeded without the recovery side: $(cat "$WORK/cancel2.out")"
fi
# Either the link was already known down, or the kill broke it under the
# cancel's request: both must refuse and say writes stay refused.
grep -Eq "(not reachable|did not agree).*writes stay refused" "$WORK/cancel2.out" || fail "cancel without the link said: $(cat "$WORK/cancel2.out")"
writes_ok 0x33 3M && fail "a write was taken after a cancel the recovery side never confirmed"
start_recovery
tm move --cancel --wait 60s >"$WORK/cancel3.out" 2>&1 || fail "cancel with the link back failed: $(cat "$WORK/cancel3.out")"
writes_ok 0x34 3M || fail "writes are still refused after the confirmed cancel"
log "refused without the recovery side; went through once it was back"

log "a move that finishes; then there is nothing to cancel"
tm move --wait 120s >"$WORK/move2.out" 2>&1 || fail "the move failed: $(cat "$WORK/move2.out")"
out=$(tm move --cancel 2>&1) && fail "cancel after a finished move succeeded: $out"
grep -q "no unfinished move to cancel" <<<"$out" || fail "cancel after a finished move: $out"
writes_ok 0x44 4M && fail "a write was taken after the move"
log "PASS"
