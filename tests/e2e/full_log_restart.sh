#!/usr/bin/env bash
# A full protected log never takes the VMs' disks away, with bitmap mode
# off (bitmap_outage.sh tests it on):
# - With the recovery side down, a writer fills the 64 MiB log and blocks
#   (back-pressure: writes wait for room, nothing is dropped).
# - kill -9 of the protected agent, and a restart: it listens on NBD at
#   once and serves reads of what was written, although the log is still
#   full and the link down. (Before: a restart waited for room in the log
#   before it listened, and never did.)
# - A tagged checkpoint asked for meanwhile waits for the log with no lock
#   held, and the status still answers.
# - The recovery side comes back: everything drains, the blocked writes
#   complete, and a checkpoint restores equal to the source.
source "$(dirname "$0")/../lib/common.sh"

BITMAP_TOML=$'[vpg.bitmap]\nenabled = false' LOG_PREALLOCATE=true LOG_CAPACITY=$((64 << 20)) setup_pair async 1000 disk0:256M
start_protected
head -c 96M /dev/urandom >"$WORK/data.bin"

log "recovery side down: writing 96 MiB into a 64 MiB log"
timeout -s KILL 20 nbdcopy "$WORK/data.bin" "$NBD_URI/disk0" >"$WORK/nbdcopy1.out" 2>&1 &
writer=$!
# Wait until the log is full and the writer blocked on it.
for _ in $(seq 1 100); do
    # Records only: the spares the log made ahead of need are not its fill.
    used=$(du -sb --exclude='*.spare' --exclude='*.zeroing' "$WORK/a/data/log/vpg1" | cut -f1)
    [ "$used" -gt $((60 << 20)) ] && break
    sleep 0.2
done
[ "$used" -gt $((60 << 20)) ] || fail "the log did not fill up ($used bytes)"
sleep 1
kill -0 "$writer" 2>/dev/null || fail "the writer finished although the log is full: $(cat "$WORK/nbdcopy1.out")"
kill9 "$PROTECTED_PID"
wait "$writer" 2>/dev/null || true

log "restart with the log full and the link down: NBD must answer at once"
t0=$(date +%s.%N)
start_protected
wait_port "$NBD_PORT"
nbdinfo "$NBD_URI/disk0" >"$WORK/nbdinfo.out" 2>&1 || fail "nbdinfo after the restart: $(cat "$WORK/nbdinfo.out")"
timeout 10 qemu-io -f raw -r -c "read 0 1M" "$NBD_URI/disk0" >"$WORK/read.out" 2>&1 ||
    fail "a read after the restart did not complete: $(cat "$WORK/read.out")"
took=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
python3 -c "import sys; sys.exit(0 if $took < 10 else 1)" || fail "NBD took ${took}s to serve a read after the restart"
log "NBD answered and served a read ${took}s after the restart, with the log full"

# A write now waits for room (the link is down), holding nothing up.
timeout -s KILL 120 nbdcopy "$WORK/data.bin" "$NBD_URI/disk0" >"$WORK/nbdcopy2.out" 2>&1 &
writer=$!
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag while-full --wait 1s >"$WORK/cp.out" 2>&1 &
cp_pid=$!
sleep 2
status_json protected >/dev/null || fail "the status does not answer while the log is full"
kill -0 "$writer" 2>/dev/null || fail "the write did not wait for room: $(cat "$WORK/nbdcopy2.out")"

log "the recovery side comes back: the log drains, the writes complete"
start_recovery
wait "$writer" || fail "the write did not complete once the link was back: $(cat "$WORK/nbdcopy2.out")"
wait "$cp_pid" 2>/dev/null || true
qemu-io -f raw -c flush "$NBD_URI/disk0" >/dev/null
wait_replicated 120
restore_to latest "$WORK/out"
cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "the restore differs from the source"
cmp -n $((96 << 20)) "$WORK/out/disk0.img" "$WORK/data.bin" || fail "the restore does not hold the data written"
log "PASS"
