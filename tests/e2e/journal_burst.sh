#!/usr/bin/env bash
# A burst of writes bigger than the journal's cap, with no checkpoint in
# it, does not stop replication for good (review of helper-50). The
# applier moved the replica only to checkpoints; the segment that held the
# last checkpoint before the burst held the burst's start too, so nothing
# could be retired, the cap refused every batch, and the next checkpoint
# (a record in the same stream) could never arrive. Now, over the limit
# with no checkpoint far enough on, the replica moves to the end of the
# oldest segments (every prefix of the stream is crash-consistent), the
# log names the checkpoint given up, and status says the replica is
# between checkpoints while it is, also after a restart (it said so only
# until one: the warning lived in memory); a SIGKILL and restart change
# nothing.
source "$(dirname "$0")/../lib/common.sh"

# One checkpoint an hour: the burst has none of its own.
setup_pair async 3600000 disk0:16M
printf '[[vpg]]\nname = "vpg1"\nhistory = "1h"\njournal_limit = "64MiB"\njournal_cap = "80MiB"\n' \
    >>"$WORK/recovery.toml"
start_recovery
start_protected
# A restorable checkpoint before the burst (the first ones may come while
# the initial copy runs).
for i in $(seq 1 50); do
    out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "before-$i" --wait 60s 2>&1) ||
        fail "checkpoint before-$i was not taken: $out"
    grep -q "initial copy is still running" <<<"$out" || break
    sleep 0.2
done
before=$(sed -n 's/^checkpoint \([0-9]*\) .*/\1/p' <<<"$out")
[ -n "$before" ] || fail "no restorable checkpoint before the burst: $out"

log "burst: 128 MiB of writes (the 16 MiB volume 8 times) over an 80 MiB journal_cap, no checkpoint"
for i in $(seq 1 8); do
    head -c 16M /dev/urandom >"$WORK/chunk"
    nbdcopy "$WORK/chunk" "$NBD_URI/disk0" || fail "write $i failed"
done
sha=$(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)
# Before the next checkpoint: the replica cannot be at one.
for _ in $(seq 1 150); do
    [ "$(jq -r '.base' "$JDIR/apply.json" 2>/dev/null)" = null ] && [ "$(applied_seq)" -gt 0 ] && break
    sleep 0.2
done
[ "$(jq -r '.base' "$JDIR/apply.json")" = null ] || fail "the replica never left checkpoint $before: $(cat "$JDIR/apply.json")"
warning="WARNING:.*between checkpoints.*head and the checkpoints after it are restorable"
wait_status recovery "$warning"
# Once the journal is back under the limit no pass moves the replica:
# only what the state kept can still say why it is at no checkpoint.
last=-1
for _ in $(seq 1 30); do
    now=$(applied_seq)
    [ "$now" = "$last" ] && break
    last=$now
    sleep 3
done
[ "$now" = "$last" ] || fail "the replica kept moving for 90 s after the burst"
log "SIGKILL of the recovery agent before the next checkpoint: status still says where the replica is"
kill9 "$RECOVERY_PID"
start_recovery
wait_status recovery "$warning"

out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after --wait 90s 2>&1) ||
    fail "no checkpoint reached the recovery site after the burst: $out
$("$TIDEMARK" status --config "$WORK/recovery.toml")"
log "$out"
grep -q "the replica moved to seq [0-9]* and gave up checkpoint $before" "$WORK/recovery.log" ||
    fail "the recovery log does not say checkpoint $before was given up"

"$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$before" --out "$WORK/before" \
    >"$WORK/before.out" 2>&1 && fail "checkpoint $before, given up, was restored"
grep -q "older than the history window" "$WORK/before.out" || fail "unclear refusal: $(cat "$WORK/before.out")"
log "checkpoint $before is refused: $(tail -1 "$WORK/before.out")"

log "SIGKILL of the recovery agent; after the restart the same holds"
kill9 "$RECOVERY_PID"
start_recovery
for cp in after head; do
    rm -rf "$WORK/$cp"
    restore_to "$cp" "$WORK/$cp"
    [ "$(sha256sum <"$WORK/$cp/disk0.img" | cut -d' ' -f1)" = "$sha" ] || fail "$cp differs from the source"
done
log "PASS"
