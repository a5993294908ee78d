#!/usr/bin/env bash
# The recovery journal's disk fills up (a 40 MiB tmpfs) in the middle of
# appending batches: each failed append is undone, nothing is
# acknowledged, the protected side keeps the data and resends it. Once the
# disk has room again, everything arrives, a restore equals the source and
# the journal reopens without damage. (Before: a partial append stayed in
# the segment, the resent batch was written and acknowledged after it,
# and restores stopped at the garbage.)
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:128M
small_data_disk b 40M
start_recovery
start_protected
wait_replicated 60

log "96 MiB of incompressible writes into a journal with 40 MiB of disk"
head -c 96M /dev/urandom >"$WORK/data.bin"
nbdcopy --flush "$WORK/data.bin" "$NBD_URI/disk0" || fail "nbdcopy failed"
for _ in $(seq 1 100); do
    grep -q "No space left" "$WORK/recovery.log" && break
    sleep 0.2
done
grep -q "No space left" "$WORK/recovery.log" || fail "the journal's disk did not fill up"
grep -q "(undone)" "$WORK/recovery.log" || fail "the failed append was not undone"
sleep 2

log "room again: everything arrives"
mount -o remount,size=512M "$WORK/b/data" || fail "cannot grow the tmpfs"
wait_replicated 120
restore_to latest "$WORK/out"
cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "the restore differs from the source"
kill9 "$RECOVERY_PID"
start_recovery
st=$(fresh_status_json recovery) || fail "no status from the restarted recovery agent"
grep -q "damaged" <<<"$st" && fail "the journal reopened damaged: $st"
grep -q "damaged\|corrupt" "$WORK/recovery.log" && fail "damage reported: $(grep -m1 "damaged\|corrupt" "$WORK/recovery.log")"
log "PASS"
