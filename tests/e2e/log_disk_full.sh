#!/usr/bin/env bash
# The protected log's disk fills up (a 96 MiB tmpfs under a 1 GiB log, the
# recovery site down): the VM's writes keep completing. The log's append
# fails with ENOSPC, the failed record is undone, and the VPG goes to
# bitmap mode saying why, as it does at the log's high-water mark; its
# high-water mark is then capped to what the disk took. (Before: every
# write from there failed with EIO, so a full data disk stopped
# production.)
# - The VM reads back every byte it wrote; the tagged checkpoint from
#   before restores bit-exact throughout.
# - SIGKILL of the protected agent with its disk full to the last block
#   (another file takes what was left): it starts again and takes writes
#   at once, its dirty regions kept. (Before: the start failed, rewriting
#   its activity log as a new file: no VM could reach its disk.)
# - The recovery site comes back: the log drains, the VPG resyncs (its
#   reads stay under the cap, so they do not fill the disk again), and
#   the newest checkpoint restores equal to the source.
source "$(dirname "$0")/../lib/common.sh"

LOG_PREALLOCATE=true setup_pair async 1000 disk0:256M
small_data_disk a 96M
start_recovery
start_protected

head -c 8M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"
wait_replicated 60
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before --wait 60s >/dev/null ||
    fail "the checkpoint before was not taken"
cp --sparse=always "$WORK/src/disk0.img" "$WORK/before.img"

kill9 "$RECOVERY_PID"
log "recovery site down; 192 MiB of incompressible writes into a log whose disk holds 96 MiB"
head -c 192M /dev/urandom >"$WORK/data.bin"
nbdcopy --flush "$WORK/data.bin" "$NBD_URI/disk0" 2>"$WORK/nbdcopy.err" ||
    fail "the VM's writes failed with the log's disk full: $(cat "$WORK/nbdcopy.err")"
grep -q "No space left on device" "$WORK/protected.log" || fail "the log's disk did not fill up; the test proves nothing"
wait_mode bitmap 5 "the VPG is not in bitmap mode after its log's disk filled"
bitmap_field why | grep -q "No space left" || fail "bitmap mode does not say why: $(bitmap_field why)"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "bitmap: .*could not take a record.*No space left" ||
    fail "status does not explain: $("$TIDEMARK" status --config "$WORK/protected.toml")"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "log: .*its disk did not take a record: high-water mark capped to" ||
    fail "the log's line does not say its disk is full: $("$TIDEMARK" status --config "$WORK/protected.toml")"
[ "$(status_json protected | jq '.vpgs[0].log.disk_full_cap_bytes // 0')" -gt 0 ] ||
    fail "status --json has no cap (tidemark_vpg_log_disk_capped reads it)"
nbdcopy "$NBD_URI/disk0" "$WORK/readback.img" || fail "cannot read the disk back"
cmp -n $((192 << 20)) "$WORK/readback.img" "$WORK/data.bin" || fail "the VM does not read back what it wrote"
rm -f "$WORK/readback.img"
log "writes complete in bitmap mode: $(bitmap_field dirty_bytes) bytes marked"

log "SIGKILL of the protected agent, another file taking every block left on its disk"
fill_data_disk a
kill9 "$PROTECTED_PID"
start_protected
mode=$(fresh_status_json protected | jq -r '.vpgs[0].bitmap.mode // "none"')
[ "$mode" = bitmap ] || [ "$mode" = resync ] || fail "after the kill the VPG forgot its dirty regions (mode $mode)"
head -c 16M /dev/urandom >"$WORK/more.bin"
nbdcopy --flush "$WORK/more.bin" "$NBD_URI/disk0" 2>"$WORK/nbdcopy.err" ||
    fail "writes after the restart failed: $(cat "$WORK/nbdcopy.err")"
restore_equal before "$WORK/before.img" "with the log's disk full"

log "the other file is gone; recovery site back: the log drains and the VPG resyncs"
rm "$WORK/a/data/filler"
start_recovery
wait_mode none 180 "the resync did not finish"
wait_replicated 120
restore_equal latest "$WORK/src/disk0.img" "after the resync"
restore_equal before "$WORK/before.img" "after the resync"
log "PASS"
