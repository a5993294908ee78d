#!/usr/bin/env bash
# Issue 13's bench: delta resync and extent hashing, each beside a peer in
# the same run. Writes tests/bench/DELTA.md; asserts nothing (the machine
# is shared and noisy).
# 1. Extent hashing (`tidemark bench-hash`: 1 MiB reads, SHA-256 per 64 KiB
#    extent, as a copy or a verify does) against `sha256sum` of the same
#    file, both from the page cache. Goal ≥ 0.9×.
# 2. A 4 GiB volume with 1 % of its 64 KiB extents changed at random since
#    the recovery side's copy (a seeded replica: the new stream's copy
#    compares extent hashes), through tests/wanproxy at 1 Gbit/s (5 ms):
#    time and bytes until the copy is complete, against
#    `rsync --inplace --no-whole-file --ignore-times` of the same change to the same stale
#    copy through its own wanproxy. Goal: ≥ 3× faster, fewer bytes.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36900
source tests/lib/common.sh
OUT=tests/bench/DELTA.md
SIZE_MIB=${DELTA_SIZE_MIB:-4096}
EXTENT=65536
EXTENTS=$((SIZE_MIB * 16))
CHANGED=$((EXTENTS / 100))
RSYNC_PORT=$((PORT_BASE + 7))
RSYNC_PROXY_PORT=$((PORT_BASE + 8))

seconds() { python3 -c "import time; print(time.time())"; }
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }

log "1/2 extent hashing vs sha256sum (1 GiB, page cache)"
head -c 1G /dev/urandom >"$WORK/hash.bin"
cat "$WORK/hash.bin" >/dev/null
best_ours=0
best_peer=0
for _ in 1 2; do
    ours=$("$TIDEMARK" bench-hash "$WORK/hash.bin" | awk '{print $1}')
    t0=$(seconds)
    sha256sum "$WORK/hash.bin" >/dev/null
    peer=$(python3 -c "print('%.1f' % (1073741824 / ($(seconds) - $t0) / 1e6))")
    best_ours=$(python3 -c "print(max($best_ours, $ours))")
    best_peer=$(python3 -c "print(max($best_peer, $peer))")
done
hash_ratio=$(ratio "$best_ours" "$best_peer")
echo "BENCH extent_hashing $best_ours MB/s peer=$best_peer ratio=$hash_ratio"
rm -f "$WORK/hash.bin"

log "2/2 a ${SIZE_MIB} MiB volume, $CHANGED of $EXTENTS extents changed: tidemark vs rsync"
USE_PROXY=1 setup_pair async 1000 "disk0:${SIZE_MIB}M"
head -c $((SIZE_MIB << 20)) /dev/urandom | dd of="$WORK/src/disk0.img" conv=notrunc status=none
cp --sparse=always "$WORK/src/disk0.img" "$WORK/stale.img"
for e in $(shuf -i 0-$((EXTENTS - 1)) -n "$CHANGED"); do
    head -c $EXTENT /dev/urandom | dd of="$WORK/src/disk0.img" bs=$EXTENT seek="$e" conv=notrunc status=none
done
changed_bytes=$((CHANGED * EXTENT))
"$TIDEMARK" seed --config "$WORK/recovery.toml" --vpg vpg1 --image "disk0=$WORK/stale.img" >/dev/null 2>&1 ||
    fail "seed failed"
mkdir -p "$WORK/rsync"
mv "$WORK/stale.img" "$WORK/rsync/disk0.img"
sync
echo 3 >/proc/sys/vm/drop_caches

start_wan_link --latency-ms 5 --bandwidth-bps 1000000000
start_recovery
t0=$(seconds)
start_protected
for _ in $(seq 1 3000); do
    [ "$(status_json recovery | jq -r '.vpgs[0].state // ""' 2>/dev/null)" = protected ] && break
    sleep 0.2
done
[ "$(status_json recovery | jq -r '.vpgs[0].state // ""')" = protected ] || fail "the copy did not complete"
ours_s=$(python3 -c "print('%.1f' % ($(seconds) - $t0))")
sleep 1.5
ours_bytes=$(jq -r '.forward_bytes + .reverse_bytes' "$WORK/proxy.json")
wait_replicated 300
rm -rf "$WORK/out"
restore_to latest "$WORK/out"
cmp -s "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "the copy does not restore equal to the source"
rm -rf "$WORK/out"
log "tidemark, seeded replica: ${ours_s} s, ${ours_bytes} bytes both ways"

sync
echo 3 >/proc/sys/vm/drop_caches
cat >"$WORK/rsyncd.conf" <<EOF
pid file = $WORK/rsyncd.pid
use chroot = false
[m]
path = $WORK/rsync
read only = false
uid = root
gid = root
EOF
rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1 &
PIDS+=($!)
wait_port "$RSYNC_PORT"
"$WANPROXY" --map "$RSYNC_PROXY_PORT=127.0.0.1:$RSYNC_PORT" --latency-ms 5 --bandwidth-bps 1000000000 \
    --stats "$WORK/rsync-proxy.json" >"$WORK/rsync-proxy.log" 2>&1 &
PIDS+=($!)
wait_port "$RSYNC_PROXY_PORT"
t0=$(seconds)
rsync --inplace --no-whole-file --ignore-times "$WORK/src/disk0.img" "rsync://127.0.0.1:$RSYNC_PROXY_PORT/m/disk0.img" ||
    fail "rsync failed"
peer_s=$(python3 -c "print('%.1f' % ($(seconds) - $t0))")
sleep 1.5
peer_bytes=$(jq -r '.forward_bytes + .reverse_bytes' "$WORK/rsync-proxy.json")
cmp -s "$WORK/rsync/disk0.img" "$WORK/src/disk0.img" || fail "rsync's copy differs"
log "rsync: ${peer_s} s, ${peer_bytes} bytes both ways"

# A change of the same size (1 %), as an outage sees it: the link
# blackholed, 1 % of the extents written at random (fio's random map:
# each once), the link back; timed until a checkpoint after the writes is in the journal.
echo blackhole >"$WORK/cut"
fio --name=outage --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=64k --size="${SIZE_MIB}m" \
    --io_size=$((changed_bytes)) --iodepth=4 --refill_buffers --randrepeat=0 --fsync_on_close=1 \
    --output="$WORK/outage.out" >/dev/null 2>&1 || fail "fio during the outage failed"
mode=$(fresh_status_json protected | jq -r '.vpgs[0].bitmap.mode // "logging"')
wire0=$(jq -r '.forward_bytes + .reverse_bytes' "$WORK/proxy.json")
t0=$(seconds)
rm -f "$WORK/cut"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after-outage --wait 300s >"$WORK/cp.out" 2>&1 ||
    fail "the checkpoint after the outage did not reach the journal: $(cat "$WORK/cp.out")"
outage_s=$(python3 -c "print('%.2f' % ($(seconds) - $t0))")
sleep 1.5
outage_bytes=$(($(jq -r '.forward_bytes + .reverse_bytes' "$WORK/proxy.json") - wire0))
log "tidemark, resync after an outage (${mode} mode): ${outage_s} s, ${outage_bytes} bytes"
kill9 "$PROTECTED_PID" "$RECOVERY_PID"
time_ratio=$(ratio "$peer_s" "$ours_s")
bytes_ratio=$(ratio "$peer_bytes" "$ours_bytes")
outage_ratio=$(ratio "$peer_s" "$outage_s")
outage_bytes_ratio=$(ratio "$peer_bytes" "$outage_bytes")
echo "BENCH delta_resync_time $outage_s s peer=$peer_s ratio=$outage_ratio"
echo "BENCH delta_resync_bytes $outage_bytes bytes peer=$peer_bytes ratio=$outage_bytes_ratio"
echo "BENCH seeded_copy_time $ours_s s peer=$peer_s ratio=$time_ratio"
echo "BENCH seeded_copy_bytes $ours_bytes bytes peer=$peer_bytes ratio=$bytes_ratio"

cat >"$OUT" <<EOF
# Delta resync and extent hashing (tests/bench/delta.sh)

$(date -u +%Y-%m-%d), this machine's $(nproc) cores, both agents and the peers on it.
Ratios are the peer's figure over ours for time and bytes (higher is better for us),
ours over the peer's for throughput.

| | tidemark | peer | ratio | goal |
|---|---|---|---|---|
| extent hashing, 1 GiB in the page cache | $best_ours MB/s | sha256sum: $best_peer MB/s | ${hash_ratio}× | ≥ 0.9× |
| delta resync after an outage (${mode} mode): ${SIZE_MIB} MiB volume, $CHANGED of $EXTENTS extents changed ($((changed_bytes >> 20)) MiB), 1 Gbit/s 5 ms: time | $outage_s s | rsync --inplace --no-whole-file --ignore-times: $peer_s s | ${outage_ratio}× | ≥ 3× |
| same: bytes on the wire, both ways | $outage_bytes | $peer_bytes | ${outage_bytes_ratio}× | > 1× |
| the same change against a seeded stale replica (hash-compared initial copy): time | $ours_s s | rsync: $peer_s s | ${time_ratio}× | (none) |
| same: bytes on the wire, both ways | $ours_bytes | $peer_bytes | ${bytes_ratio}× | > 1× |

The delta resync: with the link blackholed, fio writes the changed extents through NBD (each
once); the time runs from the link's return until a checkpoint taken after the writes is in the
recovery journal: the VPG knows what changed (its log, or its dirty map in bitmap mode) and
reads nothing else. The seeded case: the recovery replica seeded with the stale copy
(\`tidemark seed\`); the new stream's initial copy asks for SHA-256 hashes of its 64 KiB extents
and sends only those that differ, with every write in order; its time runs from the protected
agent's start to the recovery side saying \`protected\` (status is rewritten every second).
rsync writes the same change into the same stale copy through its own wanproxy, comparing
everything as the seeded copy does. Page caches are dropped before the seeded copy and rsync.
EOF
log "wrote $OUT"
