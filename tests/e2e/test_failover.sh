#!/usr/bin/env bash
# Test failover: `tidemark test-failover start` serves the VPG at a
# checkpoint as writable NBD exports whose writes go to scratch. While a
# "test VM" writes to them and the protected side keeps writing, the
# replication lag stays within the RPO goal (p99 <= 1 s). After `stop`:
# the scratch is gone, the journal segments that existed hold the same
# bytes, the replica is untouched, the checkpoint restores exactly as
# before the test, and the newest checkpoint equals the source. A second
# start, a stop with nothing running and an unknown VPG are clear errors.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
setup_pair async 1000 disk0:64M disk1:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60

for v in disk0 disk1; do
    qemu-io -f raw -c "write -P 0x11 0 8M" -c "write -P 0x22 4M 1M" "$NBD_URI/$v" >/dev/null || fail "write failed"
done
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before-test --wait 30s >/dev/null ||
    fail "checkpoint failed"
restore_to before-test "$WORK/before"

# What must not change: every journal segment's bytes so far, the replica.
fingerprint_store() {
    local s f
    for s in "$WORK"/size-*; do
        f=$JDIR/${s#"$WORK"/size-}
        echo "$(basename "$f") $(head -c "$(cat "$s")" "$f" | sha256sum | cut -d' ' -f1)"
    done
    find "$JDIR" -maxdepth 1 -name apply.json -exec sha256sum {} \; | cut -d' ' -f1
    [ -d "$JDIR/replica" ] && find "$JDIR/replica" -type f -exec sha256sum {} \; | sort
    return 0
}
for f in "$JDIR"/*.tmjrn; do stat -c %s "$f" >"$WORK/size-$(basename "$f")"; done
fingerprint_store >"$WORK/store.before"

log "start the test failover at 'before-test'"
out=$("$TIDEMARK" test-failover start --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint before-test) ||
    fail "test-failover start failed: $out"
echo "$out"
T0=nbd://127.0.0.1:$EXPORT_PORT/vpg1/disk0/test
T1=nbd://127.0.0.1:$EXPORT_PORT/vpg1/disk1/test
grep -q "$T0" <<<"$out" || fail "start did not name $T0: $out"
for v in disk0 disk1; do
    t=nbd://127.0.0.1:$EXPORT_PORT/vpg1/$v/test
    cmp=$(qemu-img compare -f raw -F raw "$WORK/before/$v.img" "$t" 2>&1) || fail "test export $v is not the checkpoint: $cmp"
done

out=$("$TIDEMARK" test-failover start --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest 2>&1) &&
    fail "a second test failover of the same VPG started"
grep -q "test failover of VPG .* is running (checkpoint" <<<"$out" || fail "unclear error for a second test failover: $out"

log "the test VM writes (aligned, unaligned, zeroes) while production keeps writing"
( # production: 1 MiB writes and a checkpoint every second
    i=0
    while :; do
        qemu-io -f raw -c "write -P $((i % 200 + 1)) $(( (i % 48) * 1048576 )) 1M" "$NBD_URI/disk0" >/dev/null 2>&1 || exit 1
        i=$((i + 1))
        sleep 0.2
    done
) &
PROD=$!
PIDS+=("$PROD")
U=$((1048576 + 5000)) # an unaligned write: its blocks' other bytes stay the checkpoint's
qio_check "$T0" "write -P 0xaa 0 1M" "write -P 0xbb $U 3000" "write -z 2M 64k" "write -P 0xcc 16773120 4096"
qio_check "$T1" "write -P 0xdd 1M 512"
lags=()
for i in $(seq 1 20); do
    lags+=("$(status_json protected | jq -r '.vpgs[0].lag_seconds')")
    qio_check "$T0" "write -P $((i + 1)) $((20 * 1048576 + i * 65536)) 64k"
    sleep 0.5
done
qio_check "$T0" "read -P 0xaa 0 1M" "read -P 0x11 1M 5000" "read -P 0xbb $U 3000" "read -P 0x11 $((U + 3000)) 192" \
    "read -P 0 2M 64k" "read -P 0xcc 16773120 4096" "read -P 0x22 4M 4096"
qio_check "$T1" "read -P 0x11 0 512" "read -P 0xdd 1M 512" "read -P 0x11 1049088 512"
kill "$PROD"
wait "$PROD" 2>/dev/null || true
grep -q "test failover running at checkpoint" <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" ||
    fail "status does not show the running test failover"
p99=$(printf '%s\n' "${lags[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int(NR*0.99+0.999)]}')
log "replication lag during the test: p99 ${p99}s over ${#lags[@]} samples"
awk -v l="$p99" 'BEGIN {exit !(l <= 1.0)}' || fail "lag p99 ${p99}s during the test is over the 1 s RPO goal"

log "stop: writes discarded, store unchanged"
out=$("$TIDEMARK" test-failover stop --config "$WORK/recovery.toml" --vpg vpg1) || fail "stop failed: $out"
echo "$out"
grep -q "discarded" <<<"$out" || fail "stop did not report what it discarded: $out"
[ -e "$WORK/b/data/scratch/vpg1" ] && fail "scratch files are left after stop"
nbdinfo "$T0" >/dev/null 2>&1 && fail "the test export is still served after stop"
fingerprint_store >"$WORK/store.after"
diff "$WORK/store.before" "$WORK/store.after" || fail "the test changed the journal or the replica"
restore_to before-test "$WORK/again"
for v in disk0 disk1; do
    cmp -s "$WORK/before/$v.img" "$WORK/again/$v.img" || fail "checkpoint before-test restores differently after the test ($v)"
done
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after-test --wait 30s >/dev/null
restore_to after-test "$WORK/after"
cmp -s "$WORK/after/disk0.img" "$WORK/src/disk0.img" || fail "replication during the test lost writes"

out=$("$TIDEMARK" test-failover stop --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "stop with nothing running succeeded"
grep -q "no test failover" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" test-failover start --config "$WORK/recovery.toml" --vpg nosuch 2>&1) && fail "unknown VPG accepted"
grep -q "no journal for VPG" <<<"$out" || fail "unclear error for an unknown VPG: $out"
[ -e "$WORK/b/data/scratch/nosuch" ] && fail "a refused start left scratch behind"
log "PASS"
