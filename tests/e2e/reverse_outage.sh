#!/usr/bin/env bash
# After a failover the recovery site runs production: its VMs' writes must
# never wait for the old site. Under reverse protection they are logged for
# the old site in the reverse log (1 GiB); with the old site down, that log
# fills. Then the VPG goes to bitmap mode there (writes only mark their
# regions) instead of holding the VMs' writes until the old site returns
# (before: the writes past the log's capacity hung). The old site, back,
# gets the log and then the marked regions read back (resync), and ends
# equal to the live volume. A switch-back asked while the recovery site is
# still in bitmap mode is refused at once, naming why, and changes nothing
# (the old site's "in sync" cannot see the marked regions); once the
# resync is done it works. The link is capped at 200 Mbit/s, so the old
# site takes a while to drain the log after its return.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
exported_pair --bandwidth-bps 200000000
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag base --wait 30s >/dev/null || fail "checkpoint failed"
"$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint base >/dev/null || fail "failover failed"
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 120s) || fail "reverse failed: $out"
wait_status protected "reverse protection: .*in sync"

log "the old site goes down; 1.1 GiB of writes on the failed-over volume (the reverse log holds 1 GiB)"
kill9 "$PROTECTED_PID"
# Data zstd cannot shrink, so the capped link takes its time to drain it.
head -c $((64 << 20)) /dev/urandom >"$WORK/random"
for i in $(seq 1 18); do
    timeout 60 qemu-io -f raw -c "write -s $WORK/random 0 64M" "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 ||
        fail "write $i of 64 MiB on the failed-over volume did not complete within 60 s (the VMs wait for the old site)"
done
timeout 60 qemu-io -f raw -c "write -P 0x77 10M 1M" -c flush "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 ||
    fail "a write and flush after the reverse log filled did not complete"
grep -q "bitmap mode:" "$WORK/recovery.log" || fail "the recovery agent did not say it went to bitmap mode"
wait_status recovery "bitmap:"

log "the old site returns (the link still cut, then back); a switch-back before the resync is refused"
echo blackhole >"$WORK/cut"
start_protected
rm -f "$WORK/cut"
out=$("$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) &&
    fail "move-back ran while the recovery site was in bitmap mode: $out"
grep -q "bitmap mode" <<<"$out" || fail "move-back did not say the recovery site is in bitmap mode: $out"
grep -q "nothing was changed" <<<"$out" || fail "move-back did not say nothing changed: $out"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x78 12M 1M"
log "refused at once: $(tail -n1 <<<"$out" | cut -c1-160)"

same_within 180 "$EXPORTS/vpg1/disk0"
wait_status protected "reverse protection: .*in sync"
for _ in $(seq 1 300); do
    "$TIDEMARK" status --config "$WORK/recovery.toml" | grep -q "bitmap:\|resync:" || break
    sleep 0.2
done
"$TIDEMARK" status --config "$WORK/recovery.toml" | grep -q "bitmap:\|resync:" && fail "the recovery site's resync did not end"

log "switch-back"
out=$("$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) || fail "move-back failed: $out"
qio_check "$NBD_URI/disk0" "read -P 0x77 10M 1M" "read -P 0x78 12M 1M"
cmp -n $((10 << 20)) "$WORK/src/disk0.img" "$WORK/random" || fail "after the switch-back the old site lacks the writes"
log "PASS: the failed-over VMs never waited for the old site, which caught up and took the VPG back"
