#!/usr/bin/env bash
# Crashes: kill -9 the protected agent at random moments under load (20
# cycles), then the recovery agent (3 cycles). After restarts, every write
# acknowledged by a FLUSH before a kill is in the restored image, and the
# replica equals the source byte for byte.
source "$(dirname "$0")/../lib/common.sh"

CYCLES=${CRASH_CYCLES:-20}
setup_pair async 1000 disk0:1G load:32M
start_recovery
start_protected

load() {
    timeout -s KILL "$(($1 + 5))" fio --name=load --ioengine=nbd --uri="$NBD_URI/load" --rw=randwrite --bs=64k --iodepth=16 \
        --size=32M --rate=20m --time_based --runtime="$1" >/dev/null 2>&1 || true
}

# start_writers SECONDS TAG: the acked writer and the fio load, then a
# random pause of 0.3-1.5 s before the caller's kill.
start_writers() {
    python3 "$ROOT/tests/lib/acked_writer.py" "$NBD_PORT" disk0 "$WORK/counter" "$WORK/acked" "$1" "$2" >"$WORK/writer.out" 2>&1 &
    writer=$!
    load "$1" &
    loadpid=$!
    sleep "$(python3 -c 'import random; print(round(random.uniform(0.3, 1.5), 2))')"
}

for cycle in $(seq 1 "$CYCLES"); do
    start_writers 5 "$cycle"
    kill9 "$PROTECTED_PID"
    # fio's nbd engine spins forever once its server is gone: stop it.
    pkill -9 -f "uri=$NBD_URI/load" 2>/dev/null || true
    wait "$writer" "$loadpid" 2>/dev/null || true
    start_protected
done
acked1=$(wc -l <"$WORK/acked")
[ "$acked1" -gt $((CYCLES * 8)) ] || fail "only $acked1 writes were acknowledged over $CYCLES cycles"
log "$CYCLES kill -9 cycles of the protected agent; $acked1 writes acknowledged"
grep -q "cut a torn tail\|initial copy" "$WORK/protected.log" || true

wait_replicated 180
restore_to latest "$WORK/out1"
n=$(python3 "$ROOT/tests/lib/check_acked.py" "$WORK/out1/disk0.img" "$WORK/acked") || fail "after protected crashes: $n"
cmp "$WORK/out1/disk0.img" "$WORK/src/disk0.img" || fail "replica of disk0 differs from the source after protected crashes"
cmp "$WORK/out1/load.img" "$WORK/src/load.img" || fail "replica of load differs from the source after protected crashes"
log "all $n acknowledged writes restored; replica == source"

for cycle in $(seq 1 3); do
    start_writers 3 "$((100 + cycle))"
    kill9 "$RECOVERY_PID"
    sleep 0.5
    start_recovery
    wait "$writer" "$loadpid" 2>/dev/null || true
done
acked2=$(wc -l <"$WORK/acked")
[ "$acked2" -gt "$acked1" ] || fail "no writes were acknowledged while the recovery agent was being killed"
grep -q "ran out of slots" "$WORK/writer.out" && fail "the writer ran out of slots; the test would prove less than it says"
wait_replicated 180
restore_to latest "$WORK/out2"
n=$(python3 "$ROOT/tests/lib/check_acked.py" "$WORK/out2/disk0.img" "$WORK/acked") || fail "after recovery crashes: $n"
cmp "$WORK/out2/disk0.img" "$WORK/src/disk0.img" || fail "replica differs from the source after recovery crashes"
cmp "$WORK/out2/load.img" "$WORK/src/load.img" || fail "replica of load differs after recovery crashes"
log "3 kill -9 cycles of the recovery agent ($((acked2 - acked1)) more writes): all $n acknowledged writes restored; replica == source"
