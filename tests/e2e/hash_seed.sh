#!/usr/bin/env bash
# Hash-based initial sync and seeding (issue 13, item 3), through
# tests/wanproxy so the bytes on the wire are counted:
# - A replica copied by hand (`tidemark seed` with a copy of the disk made
#   before 1 % of its extents changed): the first pairing sends hashes plus
#   the changed extents only, not the volume.
# - The recovery journal deleted on purpose (its replica kept): the new
#   stream resyncs by hashes, without a full copy.
# - A replica restored from an older checkpoint, seeded after the journal
#   was moved aside: again only what changed since that checkpoint.
# Each ends with the newest checkpoint restoring equal to the source; the
# seed command's refusals are checked too.
source "$(dirname "$0")/../lib/common.sh"

DATA_MIB=192
EXTENT=65536
# A small log (4 MiB segments): the writes below retire its first segment,
# so a journal that is gone cannot be given the stream again from its start.
USE_PROXY=1 LOG_PREALLOCATE=true LOG_CAPACITY=$((64 << 20)) setup_pair async 1000 disk0:256M
start_wan_link --latency-ms 5 --bandwidth-bps 1000000000

wire_bytes() { jq -r '.forward_bytes' "$WORK/proxy.json"; }
hash_bytes() { jq -r '.reverse_bytes' "$WORK/proxy.json"; }
seed() { "$TIDEMARK" seed --config "$WORK/recovery.toml" --vpg vpg1 "$@"; }
# change_extents FILE N: N distinct random extents of the data region get
# fresh random data, in place.
change_extents() {
    local e
    for e in $(shuf -i 0-$((DATA_MIB * 1024 * 1024 / EXTENT - 1)) -n "$2"); do
        head -c $EXTENT /dev/urandom | dd of="$1" bs=$EXTENT seek="$e" conv=notrunc status=none
    done
}
# change_via_nbd N: the same, written through the protected agent (one
# qemu-io run, flushed).
change_via_nbd() {
    local e i=0 args=()
    for e in $(shuf -i 0-$((DATA_MIB * 1024 * 1024 / EXTENT - 1)) -n "$1"); do
        head -c $EXTENT /dev/urandom >"$WORK/extent$i.bin"
        args+=(-c "write -s $WORK/extent$i.bin $((e * EXTENT)) $EXTENT")
        i=$((i + 1))
    done
    qemu-io -f raw "${args[@]}" -c flush "$NBD_URI/disk0" >/dev/null || fail "writes through NBD failed"
    rm -f "$WORK"/extent*.bin
}
# converged WHAT CHANGED_BYTES WIRE_BEFORE HASH_BEFORE: the newest checkpoint
# restores equal to the source, and the wire carried about the changes.
converged() {
    local what=$1 changed=$2 wire hashes
    wait_replicated 180
    wire=$(($(wire_bytes) - $3))
    hashes=$(($(hash_bytes) - $4))
    rm -rf "$WORK/out"
    restore_to latest "$WORK/out"
    cmp -s "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "$what: the newest checkpoint differs from the source"
    log "$what: ${wire} bytes sent for ${changed} changed ($((DATA_MIB << 20)) of data in the volume), ${hashes} bytes of hashes back"
    [ "$wire" -le $((changed * 11 / 10 + (4 << 20))) ] || fail "$what: ${wire} bytes sent, over ${changed} + 10 % + 4 MiB"
}

# --- A replica copied by hand, then 1 % of the source's extents change.
head -c $((DATA_MIB << 20)) /dev/urandom | dd of="$WORK/src/disk0.img" conv=notrunc status=none
cp --sparse=always "$WORK/src/disk0.img" "$WORK/shipped.img"
change_extents "$WORK/src/disk0.img" 31
out=$(seed --image disk0 2>&1) && fail "seed took an image without a file"
grep -q "VOLUME=FILE" <<<"$out" || fail "seed's error for a bad --image: $out"
seed --image "disk0=$WORK/shipped.img" >"$WORK/seed1.out" 2>&1 || fail "seed failed: $(cat "$WORK/seed1.out")"
grep -q "seeded volume disk0 of vpg1: 256.0 MiB (192.0 MiB of data)" "$WORK/seed1.out" ||
    fail "seed's report: $(cat "$WORK/seed1.out")"
out=$(seed --image "disk0=$WORK/shipped.img" 2>&1) && fail "seeding twice was taken"
grep -q "exists already" <<<"$out" || fail "seeding twice: $out"
start_recovery
out=$(seed --image "disk1=$WORK/shipped.img" 2>&1) && fail "seeding under a running agent was taken"
grep -q "agent is running" <<<"$out" || fail "seeding under a running agent: $out"
start_protected
converged "seeded by hand" $((31 * EXTENT)) 0 0
grep -rq "sending only extents whose hashes differ" "$WORK/a/logs" || fail "the protected log does not say the copy is by hash"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag old --wait 60s >/dev/null ||
    fail "the checkpoint 'old' was not taken"

# --- The recovery journal deleted on purpose, its replica kept.
change_via_nbd 100
wait_replicated 120
kill9 "$RECOVERY_PID"
find "$JDIR" -mindepth 1 -maxdepth 1 ! -name replica -exec rm -rf {} +
change_via_nbd 10
wire0=$(wire_bytes)
hash0=$(hash_bytes)
start_recovery
# The replica is the oldest point of the history window: what changed
# since then is at most every change of this test.
converged "journal deleted" $(((31 + 100 + 10) * EXTENT)) "$wire0" "$hash0"
grep -rq "starting a new stream" "$WORK/a/logs" || fail "the protected side did not start a new stream"

# --- A replica restored from an older checkpoint ('old' was taken on the
# journal that is gone: take a fresh one, change, then restore it).
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag old2 --wait 60s >/dev/null ||
    fail "the checkpoint 'old2' was not taken"
change_via_nbd 25
wait_replicated 120
restore_to old2 "$WORK/old-out"
kill9 "$RECOVERY_PID"
mv "$JDIR" "$WORK/journal-aside"
seed --image "disk0=$WORK/old-out/disk0.img" >"$WORK/seed2.out" 2>&1 || fail "seed failed: $(cat "$WORK/seed2.out")"
wire0=$(wire_bytes)
hash0=$(hash_bytes)
start_recovery
converged "seeded from an older checkpoint" $((25 * EXTENT)) "$wire0" "$hash0"

# --- The journal replaced again, while the protected log still holds the
# whole stream from its StreamStart (little was written since): that
# stream's copy skipped what equalled the journal it compared with, so it
# must not be replayed into another one; a new stream compares again.
kill9 "$RECOVERY_PID"
rm -rf "$JDIR"
seed --image "disk0=$WORK/shipped.img" >"$WORK/seed3.out" 2>&1 || fail "seed failed: $(cat "$WORK/seed3.out")"
streams_before=$(grep -rc "starting a new stream" "$WORK/a/logs" | awk -F: '{s+=$2} END {print s}')
wire0=$(wire_bytes)
hash0=$(hash_bytes)
start_recovery
converged "the journal replaced under a stream that compared" $(((31 + 100 + 10 + 25) * EXTENT)) "$wire0" "$hash0"
streams=$(grep -rc "starting a new stream" "$WORK/a/logs" | awk -F: '{s+=$2} END {print s}')
[ "$streams" -gt "$streams_before" ] || fail "the stream that compared was replayed into another journal"
