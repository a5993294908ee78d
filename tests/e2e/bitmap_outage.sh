#!/usr/bin/env bash
# Bitmap mode (issue 13): a WAN outage never makes production wait.
# - A 64 MiB protected log (the smallest allowed), the link through tests/wanproxy. fio (its nbd
#   engine) writes 8x the log's capacity at 32 MiB/s, once with the link
#   up and once with it blackholed: with the link down the VPG goes to
#   `bitmap` and the writes complete with latencies like the link-up run's
#   (back-pressure would hold them for the whole outage). The tagged
#   pre-outage checkpoint restores bit-exact throughout.
# - SIGKILL of the protected agent in bitmap mode: it restarts with every
#   written region still dirty, and takes writes at once. Its start cannot
#   mark the resync's start (a failpoint, as on a full disk): it starts in
#   bitmap mode, so nothing is logged before the mark and the checkpoints
#   below are still listed inconsistent (review of helper-45).
# - The link comes back while writes continue: the VPG resyncs and
#   converges, the newest checkpoint restores equal to the source, and the
#   bytes on the wire are about the log's contents plus the dirty regions
#   plus the new writes, not the 1 GiB volume.
# - Checkpoints taken during the resync are listed `inconsistent` and a
#   restore of one is refused with why, leaving nothing behind; the
#   checkpoint before the outage stays `complete` (and the latest) during
#   the resync; the first checkpoint after the resync is complete again.
# - A second outage, and SIGKILL in the middle of its resync: after the
#   restart it converges and restores equal to the source.
source "$(dirname "$0")/../lib/common.sh"

LOG_MIB=64
USE_PROXY=1 LOG_PREALLOCATE=true LOG_CAPACITY=$((LOG_MIB << 20)) setup_pair async 1000 disk0:1G
start_wan_link --latency-ms 10 --bandwidth-bps 400000000
start_recovery
start_protected

# expect_mode MODE WHAT: status, rewritten after this call, shows MODE.
expect_mode() {
    local st
    st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten"
    [ "$(jq -r '.vpgs[0].bitmap.mode // "none"' <<<"$st")" = "$1" ] || fail "$2: $(jq -c '.vpgs[0]' <<<"$st")"
}
wire_bytes() { jq -r '.forward_bytes' "$WORK/proxy.json"; }
# fio_write NAME OFFSET SIZE IO_SIZE [RATE]: random 64 KiB writes of fresh
# random data (incompressible) through fio's nbd engine; JSON in NAME.json.
fio_write() {
    local rate=()
    [ -n "${5:-}" ] && rate=(--rate="$5")
    timeout -s KILL 120 fio --name="$1" --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=64k \
        --offset="$2" --size="$3" --io_size="$4" "${rate[@]}" --iodepth=4 --refill_buffers --randrepeat=0 \
        --output-format=json --output="$WORK/$1.json" >"$WORK/$1.out" 2>&1 ||
        fail "fio $1 did not complete: $(tail -5 "$WORK/$1.out")"
}
# p99 and max completion latency in ms of a fio run.
fio_lat() {
    jq -r '.jobs[0].write.clat_ns | "\(.percentile["99.000000"] / 1e6) \(.max / 1e6)"' "$WORK/$1.json"
}
checkpoints_json() { "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json; }

head -c 8M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"
wait_replicated 120
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before --wait 60s >/dev/null ||
    fail "the pre-outage checkpoint was not taken"
cp --sparse=always "$WORK/src/disk0.img" "$WORK/before.img"
log "baseline replicated; checkpoint 'before' tagged"

# fio writes 8x the log at 32 MiB/s; the link (50 MB/s) keeps up.
fio_write up 64m 96m $((8 * LOG_MIB))m 32m
read -r up_p99 up_max < <(fio_lat up)
expect_mode none "the VPG left logging with the link up"
log "link up: ${up_p99} ms p99, ${up_max} ms max"
wait_replicated 120

echo blackhole >"$WORK/cut"
log "link blackholed"
fio_write down 64m 96m $((8 * LOG_MIB))m 32m
read -r down_p99 down_max < <(fio_lat down)
log "link down: ${down_p99} ms p99, ${down_max} ms max"
expect_mode bitmap "the VPG is not in bitmap mode after 8x its log with the link down"
# The last checkpoint that names an image: none is taken from here until
# the resync is done.
pre_bitmap=$(status_json protected | jq -r '.vpgs[0].last_checkpoint.id')
grep -q "bitmap mode: the protected log holds" "$WORK/protected.log" || fail "entering bitmap mode was not logged"
# Back-pressure would hold a write for the whole outage; allow for a noisy
# shared machine, but not for a wait on the link.
awk -v d="$down_max" 'BEGIN { exit !(d < 1000) }' || fail "a write took ${down_max} ms with the link down"
awk -v d="$down_p99" -v u="$up_p99" 'BEGIN { exit !(d <= 3 * u + 20) }' ||
    fail "p99 ${down_p99} ms with the link down, against ${up_p99} ms with it up"
restore_equal before "$WORK/before.img" "in bitmap mode"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "bitmap: .*changed regions marked" ||
    fail "status does not explain bitmap mode: $("$TIDEMARK" status --config "$WORK/protected.toml")"
if "$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag during --wait 1s >"$WORK/cp.out" 2>&1; then
    fail "a checkpoint was taken in bitmap mode"
fi
grep -q "bitmap mode" "$WORK/cp.out" || fail "the refused checkpoint does not say why: $(cat "$WORK/cp.out")"

log "SIGKILL of the protected agent in bitmap mode; its start cannot mark the resync's start (a full disk)"
kill9 "$PROTECTED_PID"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="no-image-mark=return(resync-start)" start_protected
grep -q "starting in bitmap mode: the resync begins once its start is marked" "$WORK/protected.log" ||
    fail "a start without its resync mark did not go to bitmap mode: $(grep -i "resync" "$WORK/protected.log" | tail -3)"
mode=$(fresh_status_json protected | jq -r '.vpgs[0].bitmap.mode // "none"')
[ "$mode" = bitmap ] || [ "$mode" = resync ] || fail "after the kill the VPG forgot its dirty regions (mode $mode)"
fio_write after-kill 64m 96m 16m
expect_mode bitmap "writes after the restart did not go to bitmap mode"
restore_equal before "$WORK/before.img" "after the kill in bitmap mode"

dirty=$(bitmap_field dirty_bytes)
log_used=$(du -sb "$WORK/a/data/log/vpg1" --exclude='*.json' --exclude='*.spare' --exclude=activity.log --exclude=dirty.map | cut -f1)
wire0=$(wire_bytes)
log "healing the link: ${dirty} bytes dirty, ${log_used} bytes in the log; writes go on"
rm -f "$WORK/cut"
fio_write during 64m 96m 16m 4m &
writer=$!
for _ in $(seq 1 100); do
    [ "$(bitmap_field mode)" = resync ] && break
    sleep 0.2
done
grep -q "resync: the protected log drained" "$WORK/protected.log" || fail "the resync never began"
before_id=$(checkpoints_json | jq -r '.[] | select(.tag == "before") | .id')
# The resync's start is marked in the stream at once (head is no image
# from there): the list shows it while the resync runs.
for _ in $(seq 1 50); do
    during_resync=$(checkpoints_json)
    jq -e '([.[] | select(.tag == "resync-start") | .id] | max // 0) > ([.[] | select(.tag == "bitmap-start") | .id] | max // 0)' \
        <<<"$during_resync" >/dev/null && break
    sleep 0.1
done
[ "$(bitmap_field mode)" = resync ] || fail "the resync ended before the list was read; the check proves nothing"
# Marks, all inconsistent: where bitmap mode began (again after the
# restart), and this resync's start after the last of those (the restart's
# own resync-start comes before it).
jq -e '[.[] | select(.tag == "bitmap-start" or .tag == "resync-start")] | all(.resync and (.consistent | not)) and
    ([.[] | select(.tag == "resync-start") | .id] | max) > ([.[] | select(.tag == "bitmap-start") | .id] | max)' \
    <<<"$during_resync" >/dev/null || fail "the marks of bitmap mode and of the resync's start are not listed: $during_resync"
jq -e --argjson b "$before_id" --argjson p "$pre_bitmap" \
    '[.[] | select(.consistent)] | last | .id >= $b and .id <= $p' <<<"$during_resync" >/dev/null ||
    fail "during the resync the latest complete checkpoint is not one from before bitmap mode ($before_id..$pre_bitmap): $during_resync"
jq -e '.[] | select(.tag == "before") | .consistent' <<<"$during_resync" >/dev/null ||
    fail "during the resync the pre-outage checkpoint is not listed complete: $during_resync"
wait "$writer" || fail "writes during the resync failed"
for _ in $(seq 1 300); do
    [ "$(bitmap_field mode)" = none ] && break
    sleep 0.2
done
[ "$(bitmap_field mode)" = none ] || fail "the resync did not finish: $("$TIDEMARK" status --config "$WORK/protected.toml")"
wait_replicated 120
wire=$(($(wire_bytes) - wire0))
expected=$((log_used + dirty + (16 << 20)))
log "converged: ${wire} bytes on the wire for ${expected} expected (log + dirty + new writes)"
[ "$wire" -le $((expected * 11 / 10 + (4 << 20))) ] || fail "the resync sent ${wire} bytes, over ${expected} + 10 %"
[ "$wire" -ge $((dirty * 9 / 10)) ] || fail "the resync sent ${wire} bytes, under the ${dirty} dirty"
restore_equal latest "$WORK/src/disk0.img" "after the resync"
restore_equal before "$WORK/before.img" "after the resync"

list=$(checkpoints_json)
inconsistent=$(jq -r '[.[] | select(.resync and (.consistent | not)) | .id] | join(" ")' <<<"$list")
[ -n "$inconsistent" ] || fail "no checkpoint taken during the resync is listed: $list"
last_inconsistent=${inconsistent##* }
jq -e --argjson i "$last_inconsistent" '[.[] | select(.id > $i)] | first | .consistent' <<<"$list" >/dev/null ||
    fail "the first checkpoint after the resync is not complete: $list"
jq -e --argjson f "${inconsistent%% *}" --argjson l "$last_inconsistent" \
    '[.[] | select(.id > $f and .id < $l and .consistent)] | length == 0' <<<"$list" >/dev/null ||
    fail "a checkpoint in the middle of the resync is listed complete: $list"
"$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 | grep -Eq "^$last_inconsistent +.* inconsistent " ||
    fail "the list does not say inconsistent: $("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1)"
rm -rf "$WORK/refused"
if "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$last_inconsistent" \
    --out "$WORK/refused" >"$WORK/refused.out" 2>&1; then
    fail "checkpoint $last_inconsistent, taken during the resync, was restored"
fi
grep -q "taken during a resync" "$WORK/refused.out" || fail "the refused restore does not say why: $(cat "$WORK/refused.out")"
[ ! -e "$WORK/refused/disk0.img" ] || fail "the refused restore left an image behind"
log "$(wc -w <<<"$inconsistent") checkpoints taken during the resync listed inconsistent and refused; the next is complete"

log "second outage; SIGKILL in the middle of its resync"
echo blackhole >"$WORK/cut"
fio_write second 256m 256m 384m
expect_mode bitmap "the second outage did not go to bitmap mode"
rm -f "$WORK/cut"
for _ in $(seq 1 300); do
    [ "$(bitmap_field mode)" = resync ] && [ "$(bitmap_field resynced_bytes)" -gt 0 ] && break
    sleep 0.1
done
[ "$(bitmap_field mode)" = resync ] || fail "the second resync was not seen under way"
left=$(bitmap_field dirty_bytes)
kill9 "$PROTECTED_PID"
log "killed with ${left} bytes left to resync"
start_protected
for _ in $(seq 1 300); do
    [ "$(bitmap_field mode)" = none ] && break
    sleep 0.2
done
[ "$(bitmap_field mode)" = none ] || fail "the resync did not finish after the kill"
wait_replicated 120
restore_equal latest "$WORK/src/disk0.img" "after a kill in the middle of the resync"
restore_equal before "$WORK/before.img" "at the end"
log "PASS"
