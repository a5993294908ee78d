#!/usr/bin/env bash
# A reverse session that ends while the old site applies a batch: the next
# session waits for that apply (review of helper-53). The apply runs in a
# blocking task that goes on after its session is dropped; the next
# session's hello said what was applied before it, and when the recovery
# site then asked for extent hashes (a restarted recovery agent, mid-copy)
# the old site hashed volumes the leftover apply was still writing: an
# extent hashed before that write could compare equal to the recovery
# site's and never be copied, and the sites diverged with reverse "in
# sync". Now the session first waits for the write-order lock, which the
# apply holds from before its task starts. The failpoint reverse-apply-slow
# makes the batch that writes at 8 MiB take 20 s, before it writes (the
# next session, without the wait, says hello about 5 s after the kill).
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

served_pair disk0:16M
start_recovery
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="reverse-apply-slow=return($((8 << 20)))" start_protected
wait_replicated 90
failover_to latest
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) || fail "reverse failed: $out"

STATE=$WORK/a/data/log/vpg1/capture-state.json
reverse_applied() { jq -r '.reverse.applied_seq' "$STATE"; }
before=$(reverse_applied)
log "a write at 8 MiB on the recovered side; its batch takes 20 s at the old site (applied so far: $before)"
head -c 64K /dev/urandom >"$WORK/change"
qio_check "$EXPORTS/vpg1/disk0" "write -s $WORK/change 8M 64k" flush
sleep 2
[ "$(reverse_applied)" = "$before" ] || fail "the batch was applied at once: the failpoint did not fire"
log "SIGKILL and restart of the recovery agent while that batch is applied"
sessions=$(grep -c "reverse link up" "$WORK/protected.log")
kill9 "$RECOVERY_PID"
start_recovery
for _ in $(seq 1 150); do
    [ "$(reverse_applied)" != "$before" ] && break
    sleep 0.2
done
leftover=$(reverse_applied)
[ "$leftover" != "$before" ] || fail "the slow batch was never applied"
for _ in $(seq 1 100); do
    [ "$(grep -c "reverse link up" "$WORK/protected.log")" -gt "$sessions" ] && break
    sleep 0.2
done
hello=$(grep "reverse link up" "$WORK/protected.log" | sed -n "$((sessions + 1))s/.*applied_seq=\([0-9]*\).*/\1/p")
[ -n "$hello" ] || fail "no reverse session after the restart"
[ "$hello" -ge "$leftover" ] ||
    fail "the next session began at seq $hello while the last one's batch (to seq $leftover) was still being applied"
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) || fail "not in sync again: $out"
cmp=$(qemu-img compare -f raw -F raw "$WORK/src/disk0.img" "$EXPORTS/vpg1/disk0" 2>&1) || fail "disk0 differs: $cmp"
log "the next session began at seq $hello, after the batch ended at $leftover; both sites equal"
log "PASS"
