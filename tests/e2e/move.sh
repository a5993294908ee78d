#!/usr/bin/env bash
# Move (planned migration) under live writes, through a throttled link so
# the move has to wait for a backlog: a writer keeps writing distinct
# patterns while `tidemark move` runs. Afterwards every write the writer
# saw succeed is in the moved volume, every write after the move began got
# an error (none vanished), and the moved volume equals the source byte for
# byte. A failover requested while the move runs is refused; so are a
# second move and a move from the recovery-side config.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
THROTTLE=$((4 << 20)) setup_pair async 1000 disk0:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60

log "a backlog of 24 MiB (random, so it does not compress) behind a 4 MiB/s link, then a writer"
head -c 24M /dev/urandom >"$WORK/backlog"
qemu-io -f raw -c "write -s $WORK/backlog 0 8M" -c "write -s $WORK/backlog 0 8M" -c "write -s $WORK/backlog 8M 8M" \
    "$NBD_URI/disk0" >/dev/null || fail "backlog write failed"
( # one 4 KiB write per step at its own offset with its own pattern
    i=0
    while [ $i -lt 400 ]; do
        off=$(( (i % 4096) * 4096 ))
        pat=$(( i % 250 + 1 ))
        if qemu-io -f raw -c "write -P $pat $off 4k" "$NBD_URI/disk0" >/dev/null 2>&1; then
            echo "ok $i $off $pat"
        else
            echo "refused $i $off $pat"
        fi
        i=$((i + 1))
    done >"$WORK/writes"
) &
WRITER=$!
PIDS+=("$WRITER")
sleep 1

log "move, and a failover attempt while it runs"
"$TIDEMARK" move --config "$WORK/protected.toml" --vpg vpg1 >"$WORK/move.out" 2>&1 &
MOVER=$!
sleep 1.5
kill -0 "$MOVER" 2>/dev/null || fail "the move finished before the failover attempt: $(cat "$WORK/move.out")"
out=$("$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest 2>&1) &&
    fail "a failover ran during the move: $out"
grep -q "a move of VPG .* is already running" <<<"$out" || fail "unclear error for a failover during a move: $out"
out=$("$TIDEMARK" move --config "$WORK/protected.toml" --vpg vpg1 --wait 5s 2>&1) && fail "a second move ran: $out"
grep -q "already running\|takes no writes" <<<"$out" || fail "unclear error for a second move: $out"
wait "$MOVER" || fail "move failed: $(cat "$WORK/move.out")"
cat "$WORK/move.out"
wait "$WRITER"

ok=$(grep -c '^ok' "$WORK/writes" || true)
refused=$(grep -c '^refused' "$WORK/writes" || true)
log "writer: $ok writes succeeded, $refused refused"
[ "$ok" -gt 0 ] && [ "$refused" -gt 0 ] || fail "the writer did not straddle the move ($ok ok, $refused refused)"
first_refused=$(awk '$1 == "refused" {print $2; exit}' "$WORK/writes")
awk -v f="$first_refused" '$1 == "ok" && $2 > f {bad=1} END {exit bad}' "$WORK/writes" ||
    fail "a write succeeded after writes were refused"

log "the moved volume equals the source, and holds every acknowledged write"
for _ in $(seq 1 50); do nbdinfo "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 && break; sleep 0.2; done
cmp=$(qemu-img compare -f raw -F raw "$WORK/src/disk0.img" "$EXPORTS/vpg1/disk0" 2>&1) ||
    fail "moved volume differs from the source: $cmp"
# The last successful write to each offset must be there.
awk '$1 == "ok" {last[$3] = $4} END {for (o in last) print o, last[o]}' "$WORK/writes" >"$WORK/expect"
args=()
while read -r off pat; do args+=("read -P $pat $off 4k"); done <"$WORK/expect"
qio_check "$EXPORTS/vpg1/disk0" "${args[@]}"
log "$(wc -l <"$WORK/expect") acknowledged offsets verified on the moved volume"
wait_status recovery "failed over at checkpoint"

out=$("$TIDEMARK" move --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "move from the recovery config ran"
grep -q "runs on the protected appliance" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" move --config "$WORK/protected.toml" --vpg vpg1 --wait 5s 2>&1) && fail "a move of a moved VPG ran"
grep -q "takes no writes here already" <<<"$out" || fail "unclear error: $out"
log "PASS"
