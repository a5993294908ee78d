#!/usr/bin/env bash
# A switch-back's begin that the old site gave up on and cancelled does
# not refuse the live VMs' writes after the cancel. The recovery site
# carries out a begin even if the old site's connection drops (a finish
# must be finished); a begin that waited (for a reverse session that had
# not reconnected yet, up to 15 s) then refused writes at the recovery
# site after `move-back --cancel` had said they are taken, with nothing at
# the old site waiting for its marker (review of helper-51). The failpoint
# move-back-begin-wait makes the recovery site's begin wait 8 s.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

served_pair disk0:16M
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="move-back-begin-wait=return(8000)" start_recovery
start_protected
wait_replicated 90

log "failover and reverse until in sync"
failover_to latest
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x21 1M 1M" flush
"$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 60s >/dev/null || fail "reverse failed"

log "move-back gives up after 2 s and is cancelled while the recovery site's begin still waits"
"$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --wait 2s >"$WORK/mb.out" 2>&1 &&
    fail "the move-back finished although its begin waits 8 s: $(cat "$WORK/mb.out")"
"$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --cancel >"$WORK/cancel.out" 2>&1 ||
    fail "the cancel failed: $(cat "$WORK/cancel.out")"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x22 2M 64k" flush

log "the begin's wait ends: the recovery site still takes writes"
for _ in $(seq 1 60); do
    grep -q "was cancelled after this begin\|switch-back begins" "$WORK/recovery.log" && break
    sleep 0.2
done
grep -q "was cancelled after this begin\|switch-back begins" "$WORK/recovery.log" || fail "the begin never ended"
out=$(qemu-io -f raw -c "write -P 0x23 3M 64k" "$EXPORTS/vpg1/disk0" 2>&1) ||
    fail "the recovery site refuses writes after the switch-back was cancelled: $out"
grep -q "was cancelled after this begin" "$WORK/recovery.log" ||
    fail "the late begin was not refused: $(grep -i "switch-back\|refused" "$WORK/recovery.log" | tail -3)"
log "PASS"
