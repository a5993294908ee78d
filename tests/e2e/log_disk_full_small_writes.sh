#!/usr/bin/env bash
# The protected log's disk fills under small writes, with no spare segment
# to give back (preallocation off, a 48 MiB tmpfs, the recovery site down):
# 4 KiB random writes keep completing. A failed 4 KiB record gives back no
# block, so bitmap mode's own files (the activity log, the dirty map) must
# need none: they are slot files, made at the start and rewritten in place
# (the same inodes before and after; review of helper-41). Once the recovery site is
# back, the log, a single segment that never filled on this disk, is
# retired as soon as it is acknowledged, the resync converges in steps of
# what the disk takes, and the newest checkpoint restores equal to the
# source (before: the resync never began). A SIGKILL with another file
# taking the disk's last block: the agent starts and takes writes at once
# (review of helper-44: the start's resync mark failed the start).
source "$(dirname "$0")/../lib/common.sh"

LOG_PREALLOCATE=false setup_pair async 1000 disk0:256M
small_data_disk a 48M
start_recovery
start_protected
wait_replicated 60
inodes() { stat -c %i "$WORK/a/data/log/vpg1/activity.log" "$WORK/a/data/log/vpg1/dirty.map" | tr '\n' ' '; }
before=$(inodes) || fail "bitmap mode's files were not made at the start"

kill9 "$RECOVERY_PID"
log "recovery site down; 4 KiB random writes until the log's 48 MiB disk is full, and on"
timeout -s KILL 300 fio --name=small --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=4k --size=256m \
    --io_size=96m --iodepth=4 --refill_buffers --randrepeat=0 >"$WORK/fio.out" 2>&1 ||
    fail "the VM's small writes failed with the log's disk full: $(grep -m3 -i "error\|err=" "$WORK/fio.out")"
grep -q "No space left on device" "$WORK/protected.log" || fail "the log's disk did not fill up; the test proves nothing"
[ "$(inodes)" = "$before" ] || fail "bitmap mode's files were replaced, not rewritten in place: $before, now $(inodes)"
[ "$(fresh_status_json protected | jq -r ".vpgs[0].bitmap.mode // \"none\"")" = bitmap ] ||
    fail "the VPG is not in bitmap mode: $("$TIDEMARK" status --config "$WORK/protected.toml")"
log "writes complete in bitmap mode; SIGKILL, another file taking the disk's last block"
fill_data_disk a
kill9 "$PROTECTED_PID"
start_protected
timeout -s KILL 120 fio --name=again --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=4k --size=256m \
    --io_size=8m --iodepth=4 --refill_buffers --randrepeat=0 >"$WORK/fio2.out" 2>&1 ||
    fail "small writes after a restart on the full disk failed: $(grep -m3 -i "error\|err=" "$WORK/fio2.out")"
[ "$(inodes)" = "$before" ] || fail "bitmap mode's files were replaced at the restart: $before, now $(inodes)"
rm "$WORK/a/data/filler"
log "the restart took writes at once; the other file is gone"

start_recovery
wait_mode none 180 "the resync did not finish"
wait_replicated 120
restore_equal latest "$WORK/src/disk0.img" "after the resync"
log "PASS"
