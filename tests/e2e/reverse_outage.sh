#!/usr/bin/env bash
# After a failover the recovery site runs production: its VMs' writes must
# never wait for the old site. Under reverse protection they are logged for
# the old site in the reverse log (1 GiB); with the old site down, that log
# fills. Then the VPG goes to bitmap mode there (writes only mark their
# regions) instead of holding the VMs' writes until the old site returns
# (before: the writes past the log's capacity hung). The old site, back,
# gets the log and then the marked regions read back (resync), and ends
# equal to the live volume; a switch-back after that still works.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
mkdir -p "$WORK/src"
head -c $((64 << 20)) /dev/urandom >"$WORK/src/disk0.img"
setup_pair async 1000 disk0:64M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 90
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag base --wait 30s >/dev/null || fail "checkpoint failed"
"$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint base >/dev/null || fail "failover failed"
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 120s) || fail "reverse failed: $out"
wait_status protected "reverse protection: .*in sync"

log "the old site goes down; 1.1 GiB of writes on the failed-over volume (the reverse log holds 1 GiB)"
kill9 "$PROTECTED_PID"
for i in $(seq 1 18); do
    timeout 60 qemu-io -f raw -c "write -P $((i + 16)) 0 64M" "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 ||
        fail "write $i of 64 MiB on the failed-over volume did not complete within 60 s (the VMs wait for the old site)"
done
timeout 60 qemu-io -f raw -c "write -P 0x77 10M 1M" -c flush "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 ||
    fail "a write and flush after the reverse log filled did not complete"
grep -q "bitmap mode:" "$WORK/recovery.log" || fail "the recovery agent did not say it went to bitmap mode"
wait_status recovery "bitmap:"

log "the old site returns: it gets the log, then the marked regions"
start_protected
same_within 180 "$EXPORTS/vpg1/disk0"
wait_status protected "reverse protection: .*in sync"
for _ in $(seq 1 150); do
    "$TIDEMARK" status --config "$WORK/recovery.toml" | grep -q "bitmap:\|resync:" || break
    sleep 0.2
done
"$TIDEMARK" status --config "$WORK/recovery.toml" | grep -q "bitmap:\|resync:" && fail "the recovery site's resync did not end"

log "switch-back"
out=$("$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) || fail "move-back failed: $out"
qio_check "$NBD_URI/disk0" "read -P 0x77 10M 1M" "read -P 34 0 10M"
log "PASS: the failed-over VMs never waited for the old site, which caught up and took the VPG back"
