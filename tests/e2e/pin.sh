#!/usr/bin/env bash
# Pinned checkpoints: `tidemark pin` keeps a checkpoint restorable past the
# history window and past journal_limit, across a SIGKILL of the recovery
# agent, until `tidemark unpin`; then the applier catches up.
# - with a 64 MiB journal_limit and 1-minute window, a checkpoint is
#   pinned, then 96 MiB more is written: the journal grows past its limit,
#   status warns with the pin's reason, the list shows it pinned, and the
#   checkpoint restores bit-exact;
# - bad pins are clear errors that change nothing (a checkpoint the
#   replica passed, an unknown one, a two-line reason, unpinning what is
#   not pinned);
# - with a 128 MiB journal_cap, 48 MiB more is refused at the cap: the
#   journal stays under it, both sides' status say why, the protected
#   side keeps the writes, and the pinned checkpoint still restores;
# - after unpin the journal is back under its limit, the warning goes, the
#   held-back writes arrive and the newest checkpoint equals the source.
source "$(dirname "$0")/../lib/common.sh"

SIZE_MB=32
setup_pair async 1000 disk0:${SIZE_MB}M
printf '[[vpg]]\nname = "vpg1"\nhistory = "1min"\njournal_limit = "64MiB"\njournal_cap = "128MiB"\n' >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60
R=(--config "$WORK/recovery.toml" --vpg vpg1)

write_mib() { # MiB of random data in 2 MiB writes, then a flush
    local i off
    for i in $(seq 1 $(($1 / 2))); do
        off=$(( (RANDOM * 32768 + RANDOM) % (SIZE_MB - 2) * 1048576 ))
        head -c 2M /dev/urandom >"$WORK/chunk"
        qemu-io -f raw -c "write -s $WORK/chunk $off 2M" "$NBD_URI/disk0" >/dev/null || fail "write failed"
    done
}

write_mib 8
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag before --wait 60s >/dev/null ||
    fail "checkpoint failed"
want=$(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)
out=$("$TIDEMARK" pin "${R[@]}" --checkpoint before --reason "e2e: before the incident" 2>>"$WORK/cli.log") ||
    fail "pin failed: $out $(cat "$WORK/cli.log")"
log "$out"
id=$("$TIDEMARK" checkpoints "${R[@]}" --json | jq -r '.[] | select(.tag == "before") | .id')
[ "$("$TIDEMARK" checkpoints "${R[@]}" --json | jq -r ".[] | select(.id == $id) | .pinned")" = true ] ||
    fail "the list does not show the checkpoint pinned"
"$TIDEMARK" checkpoints "${R[@]}" >/dev/null 2>"$WORK/list.err" || fail "checkpoints failed"
grep -q "pinned: checkpoint $id .*e2e: before the incident" "$WORK/list.err" ||
    fail "the listing does not name the pin and its reason: $(cat "$WORK/list.err")"

log "bad pins change nothing"
cp "$JDIR/pins.json" "$WORK/pins.before"
bad() { # expected-message args...
    local want=$1 out
    shift
    out=$("$TIDEMARK" "$@" 2>&1) && fail "accepted: $*"
    grep -q "$want" <<<"$out" || fail "unclear error for $*: $out"
    cmp -s "$JDIR/pins.json" "$WORK/pins.before" || fail "a refused $* changed pins.json"
}
bad "no checkpoint" pin "${R[@]}" --checkpoint no-such-tag
bad "one line" pin "${R[@]}" --checkpoint latest --reason "$(printf 'two\nlines')"
bad "not pinned" unpin "${R[@]}" --checkpoint 1

log "96 MiB more against a 64 MiB journal_limit, SIGKILL of the recovery agent half-way"
write_mib 48
kill9 "$RECOVERY_PID"
start_recovery
write_mib 48
wait_replicated 120
sleep 2
[ "$(applied_seq)" -le "$id" ] || fail "the replica moved past the pinned checkpoint ($(applied_seq) > $id)"
[ "$(journal_bytes)" -gt $((64 << 20)) ] || fail "the journal did not grow past its limit ($(journal_bytes) bytes)"
wait_status recovery "WARNING:.*checkpoint $id is pinned (e2e: before the incident).*over its journal_limit"
rm -rf "$WORK/r"
restore_to before "$WORK/r"
[ "$(sha256sum <"$WORK/r/disk0.img" | cut -d' ' -f1)" = "$want" ] || fail "the pinned checkpoint restores wrong"
log "pinned checkpoint restored exactly with the journal at $(( $(journal_bytes) >> 20 )) MiB"

log "48 MiB more against the 128 MiB journal_cap: refused at the cap, kept by the protected side"
write_mib 48
wait_status recovery "WARNING:.*at its journal_cap of 128.0 MiB.*checkpoint $id is pinned"
wait_status protected "disconnected (writes are kept in the protected log): .*journal_cap"
[ "$(journal_bytes)" -le $((128 << 20)) ] || fail "the journal passed its cap: $(journal_bytes) bytes"
acked=$(status_json protected | jq -r '.vpgs[0].acked_seq')
head=$(status_json protected | jq -r '.vpgs[0].head_seq')
[ "$acked" -lt "$head" ] || fail "every write was acknowledged although the journal is at its cap"
rm -rf "$WORK/r"
restore_to before "$WORK/r"
[ "$(sha256sum <"$WORK/r/disk0.img" | cut -d' ' -f1)" = "$want" ] || fail "the pinned checkpoint restores wrong at the cap"
log "at the cap: journal $(( $(journal_bytes) >> 20 )) MiB, seqs $((acked + 1))..$head held by the protected side"

log "unpin: the applier catches up"
"$TIDEMARK" unpin "${R[@]}" --checkpoint before >/dev/null 2>>"$WORK/cli.log" || fail "unpin failed"
for _ in $(seq 1 100); do
    [ "$(journal_bytes)" -le $((64 << 20)) ] && break
    sleep 0.2
done
[ "$(journal_bytes)" -le $((64 << 20)) ] || fail "the journal is still over its limit after unpin: $(journal_bytes)"
[ "$(applied_seq)" -gt "$id" ] || fail "the replica did not move past the released checkpoint"
wait_replicated 120
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after-cap --wait 60s >/dev/null ||
    fail "checkpoint after the cap failed"
rm -rf "$WORK/r"
restore_to after-cap "$WORK/r"
cmp -s "$WORK/r/disk0.img" "$WORK/src/disk0.img" || fail "after the release, the newest checkpoint differs from the source"
log "the writes held at the cap arrived: the newest checkpoint equals the source"
sleep 1.5
grep -q "is pinned" <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" && fail "status still warns of the pin"
cp "$JDIR/pins.json" "$WORK/pins.before"
bad "older than the history window" pin "${R[@]}" --checkpoint "$id"
log "PASS"
