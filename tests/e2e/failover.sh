#!/usr/bin/env bash
# Live failover to a tagged checkpoint. Refused, with nothing changed and
# replication going on, while a test failover or an export is open. Then:
# the served volumes equal a restore of that checkpoint taken before;
# later history is set aside; the protected side is told and refuses
# writes; the recovered volumes take writes and keep them across a SIGKILL
# of the recovery agent; a second failover, a restore, an export and an
# unknown VPG or checkpoint are clear errors.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
setup_pair async 1000 disk0:32M disk1:8M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60
fo() { "$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 "$@" 2>&1; }

qio_check "$NBD_URI/disk0" "write -P 0x41 0 4M" "write -P 0x42 10M 1M"
qio_check "$NBD_URI/disk1" "write -P 0x43 1M 1M"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag golden --wait 30s >/dev/null || fail "checkpoint failed"
restore_to golden "$WORK/golden"
# Written after the chosen checkpoint: must not appear in the failover.
qio_check "$NBD_URI/disk0" "write -P 0x66 0 1M"
wait_replicated 30

log "refused while a test failover runs, and while an export is open"
"$TIDEMARK" test-failover start --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden >/dev/null || fail "test start failed"
out=$(fo --checkpoint golden) && fail "failover ran during a test failover: $out"
grep -q "test failover .* is running" <<<"$out" || fail "unclear error: $out"
"$TIDEMARK" test-failover stop --config "$WORK/recovery.toml" --vpg vpg1 >/dev/null || fail "test stop failed"
"$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden >"$WORK/export.out" 2>&1 &
EXPORT_PID=$!
PIDS+=("$EXPORT_PID")
for _ in $(seq 1 100); do grep -q nbd:// "$WORK/export.out" && break; sleep 0.1; done
out=$(fo --checkpoint golden) && fail "failover ran while an export was open: $out"
grep -q "reader of VPG .* is open" <<<"$out" || fail "unclear error: $out"
kill "$EXPORT_PID"; wait "$EXPORT_PID" 2>/dev/null || true
[ -e "$JDIR/failover.json" ] && fail "a refused failover left a record"
qio_check "$NBD_URI/disk1" "write -P 0x44 2M 4k"
wait_replicated 30 # replication went on after the refusals

log "bad requests change nothing"
out=$(fo --checkpoint no-such-tag) && fail "failover to an unknown checkpoint: $out"
grep -q "has no checkpoint" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg nosuch --checkpoint latest 2>&1) && fail "unknown VPG accepted"
grep -q "no journal for VPG" <<<"$out" || fail "unclear error: $out"
wait_replicated 30

log "failover to 'golden'"
segments_before=$(find "$JDIR" -maxdepth 1 -name '*.tmjrn' | wc -l)
out=$(fo --checkpoint golden) || fail "failover failed: $out"
echo "$out"
grep -q "$EXPORTS/vpg1/disk0" <<<"$out" || fail "failover did not name the served volumes: $out"
for v in disk0 disk1; do
    cmp=$(qemu-img compare -f raw -F raw "$WORK/golden/$v.img" "$EXPORTS/vpg1/$v" 2>&1) ||
        fail "failed-over $v differs from checkpoint golden: $cmp"
done
[ "$(find "$JDIR/after-failover" -name '*.tmjrn' | wc -l)" = "$segments_before" ] || fail "later history was not set aside"
wait_status recovery "failed over at checkpoint"

log "the protected side is told to stop capturing"
refused=0
for _ in $(seq 1 50); do
    if ! qemu-io -f raw -c "write -P 0x77 0 4k" "$NBD_URI/disk0" >"$WORK/late.out" 2>&1; then refused=1; break; fi
    sleep 0.2
done
[ "$refused" = 1 ] || fail "the protected side still takes writes 10 s after the failover"
grep -qi "not permitted\|permission" "$WORK/late.out" || fail "unclear refusal on the protected side: $(cat "$WORK/late.out")"

log "the recovered volumes take writes and keep them across SIGKILL"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x99 20M 1M" "flush"
kill9 "$RECOVERY_PID"
start_recovery
for _ in $(seq 1 50); do nbdinfo "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 && break; sleep 0.2; done
qio_check "$EXPORTS/vpg1/disk0" "read -P 0x99 20M 1M" "read -P 0x41 1M 1M" "read -P 0x42 10M 1M"

log "what a failed-over VPG refuses"
out=$(fo --checkpoint latest) && fail "a second failover ran: $out"
grep -q "was failed over at checkpoint" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint golden --out "$WORK/late" 2>&1) &&
    fail "restore of a failed-over VPG ran"
grep -q "was failed over" <<<"$out" || fail "unclear error: $out"
out=$(timeout 10 "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "export of a failed-over VPG"
grep -q "was failed over" <<<"$out" || fail "unclear error: $out"
log "PASS"
