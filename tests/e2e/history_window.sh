#!/usr/bin/env bash
# History window and applier, with a 1-minute window under continuous
# writes: rounds of random writes, each followed by a tagged checkpoint and
# the source's checksum at that point. Then:
# - the replica moves forward, old segments are retired, and the journal
#   stays bounded by the window's writes (disk use sampled every round);
# - checkpoints inside the window restore bit-exact, ones outside it are
#   refused with a clear error;
# - a journal_limit below what the journal holds applies the oldest
#   history early (status warns the window is short); the recovery agent
#   is killed with SIGKILL in the middle of that apply; a restore before
#   the agent is back is refused; after the restart the apply finishes and
#   every checked checkpoint still restores bit-exact.
source "$(dirname "$0")/../lib/common.sh"

SIZE_MB=64
setup_pair async 1000 disk0:${SIZE_MB}M
printf '[[vpg]]\nname = "vpg1"\nhistory = "1min"\n' >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60


# round N: 2 MiB of random data at a random offset, a tagged checkpoint,
# and the checksum of the source volume at that checkpoint.
ROUND_BYTES=$((2 << 20))
round() {
    local n=$1 off out id
    off=$(( (RANDOM * 32768 + RANDOM) % (SIZE_MB * 1024 * 1024 - ROUND_BYTES) / 4096 * 4096 ))
    head -c "$ROUND_BYTES" /dev/urandom >"$WORK/chunk"
    qemu-io -f raw -c "write -s $WORK/chunk $off $ROUND_BYTES" -c flush "$NBD_URI/disk0" >/dev/null ||
        fail "round $n: write failed"
    out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "round-$n" --wait 60s) ||
        fail "round $n: checkpoint failed: $out"
    id=$(sed -n 's/^checkpoint \([0-9]*\) .*/\1/p' <<<"$out")
    echo "$n $id $(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)" >>"$WORK/rounds"
    echo "$(date +%s.%N) $((n * ROUND_BYTES)) $(journal_bytes)" >>"$WORK/samples"
}

log "phase 1: 95 s of writes (2 MiB per round) against a 1-minute window"
: >"$WORK/rounds"
: >"$WORK/samples"
START=$(date +%s)
n=1
while [ $(($(date +%s) - START)) -lt 95 ]; do
    round "$n"
    n=$((n + 1))
    sleep 0.5
done
log "$((n - 1)) rounds, $(( (n - 1) * 2 )) MiB written; journal now $(( $(journal_bytes) >> 20 )) MiB, replica at seq $(applied_seq)"

[ "$(applied_seq)" -gt 0 ] || fail "nothing was applied to the replica after 95 s with a 1-minute window"
[ -e "$JDIR/00000000000000000001.tmjrn" ] && fail "the first journal segment was never retired"
python3 - "$WORK/samples" <<'PY' || fail "journal disk use is not bounded by the window"
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
t0 = rows[0][0]
worst = 0.0
for t, written, jbytes in rows:
    if t - t0 < 80:
        continue
    # Records newer than the window, plus one checkpoint gap, one applier
    # tick and one segment age (7.5 s) that cannot retire yet.
    recent = written - max((w for (tt, w, _) in rows if tt <= t - 75), default=0)
    bound = recent * 1.1 + (4 << 20)
    worst = max(worst, jbytes / bound)
    if jbytes > bound:
        print(f"at +{t - t0:.0f}s the journal holds {jbytes/2**20:.0f} MiB; the last 75 s wrote {recent/2**20:.0f} MiB")
        sys.exit(1)
print(f"journal size / (writes of the last 75 s): at most {worst:.2f} of the allowed bound after 80 s")
PY

"$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json >"$WORK/checkpoints.json"
# restore_round N: restore round N's tag and compare with its checksum.
restore_round() {
    rm -rf "$WORK/r-$1"
    restore_to "round-$1" "$WORK/r-$1"
    round_matches "$1"
}
# round_matches N: the restore in $WORK/r-N equals round N's checksum.
round_matches() {
    local want got
    want=$(awk -v n="$1" '$1 == n {print $3}' "$WORK/rounds")
    got=$(sha256sum <"$WORK/r-$1/disk0.img" | cut -d' ' -f1)
    [ "$got" = "$want" ] || fail "restore of round $1 differs from the source at that checkpoint"
    rm -rf "$WORK/r-$1"
}
# restore_oldest: the oldest listed round restores exactly. It sits at the
# window's edge: the applier (once a second) may retire it between the
# listing and the restore's lease (taken after the restore reads the
# journal). Then the refusal must say so (older than the window, or, if
# its segment was retired before the restore read it, no such checkpoint
# any more), and the new oldest is tried.
restore_oldest() {
    local n
    for _ in 1 2 3; do
        n=$(listed_rounds | head -1)
        rm -rf "$WORK/r-$n"
        if "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "round-$n" --out "$WORK/r-$n" \
            >"$WORK/oldest.out" 2>&1; then
            round_matches "$n"
            OLDEST_RESTORED=$n
            return 0
        fi
        grep -q "older than the history window\|has no checkpoint \"round-$n\"" "$WORK/oldest.out" ||
            fail "restore of the oldest round $n failed: $(cat "$WORK/oldest.out")"
        [ -e "$WORK/r-$n" ] && fail "a refused restore left output behind"
    done
    fail "the oldest listed round aged out before its restore three times in a row"
}
# The rounds whose tags are still listed (inside the window).
listed_rounds() {
    "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json |
        jq -r '.[] | .tag | select(startswith("round-")) | ltrimstr("round-")' | sort -n
}
mapfile -t IN_WINDOW < <(listed_rounds)
[ "${#IN_WINDOW[@]}" -ge 5 ] || fail "only ${#IN_WINDOW[@]} rounds are inside the window"
[ "${IN_WINDOW[0]}" -gt 1 ] || fail "round 1 is still listed although it is older than the window"
# The oldest, the newest and every 4th round between: each must be exact.
pick=()
for i in "${!IN_WINDOW[@]}"; do
    if [ $((i % 4)) = 0 ] || [ "$i" = $(( ${#IN_WINDOW[@]} - 1 )) ]; then pick+=("${IN_WINDOW[$i]}"); fi
done
log "rounds ${IN_WINDOW[0]}..${IN_WINDOW[-1]} are in the window; restoring ${#pick[@]} of them: ${pick[*]}"
restore_oldest
for r in "${pick[@]:1}"; do restore_round "$r"; done
log "the oldest listed round ($OLDEST_RESTORED) and the others restored exactly"

old_id=$(awk '$1 == 1 {print $2}' "$WORK/rounds")
out=$("$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$old_id" --out "$WORK/old" 2>&1) &&
    fail "a checkpoint outside the window was restored"
grep -q "older than the history window" <<<"$out" || fail "unclear error for an expired checkpoint: $out"
[ -e "$WORK/old" ] && fail "a refused restore left output behind"
grep -q "WARNING" <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" &&
    fail "status warns although the window is as configured"

log "phase 2: journal_limit 64MiB on a journal of $(( $(journal_bytes) >> 20 )) MiB; SIGKILL during the early apply"
kill -TERM "$RECOVERY_PID"
while kill -0 "$RECOVERY_PID" 2>/dev/null; do sleep 0.05; done
grep -q '"applying_to": null' "$JDIR/apply.json" || fail "a stopped agent left an apply unfinished"
sed -i 's/^history = "1min"$/history = "1min"\njournal_limit = "64MiB"/' "$WORK/recovery.toml"
before=$(applied_seq)
"$TIDEMARK" recovery --config "$WORK/recovery.toml" >>"$WORK/recovery.log" 2>&1 &
RECOVERY_PID=$!
PIDS+=("$RECOVERY_PID")
caught=0
for _ in $(seq 1 20000); do
    if grep -q '"applying_to": [0-9]' "$JDIR/apply.json" 2>/dev/null; then
        kill9 "$RECOVERY_PID"
        caught=1
        break
    fi
done
[ "$caught" = 1 ] || fail "never saw the early apply start"
grep -q '"applying_to": [0-9]' "$JDIR/apply.json" ||
    fail "the apply finished before SIGKILL landed; the crash case was not exercised"
target=$(jq -r '.applying_to' "$JDIR/apply.json")
log "killed in the middle of the apply from seq $before to $target"

early=$(awk -v b="$before" -v t="$target" '$2 > b && $2 < t {print $1; exit}' "$WORK/rounds")
if [ -n "$early" ]; then
    out=$("$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "round-$early" --out "$WORK/mid" 2>&1) &&
        fail "restored a checkpoint the interrupted apply had partly overwritten"
    grep -q "interrupted" <<<"$out" || fail "unclear error while an apply is unfinished: $out"
fi

start_recovery
for _ in $(seq 1 100); do
    grep -q '"applying_to": null' "$JDIR/apply.json" && [ "$(applied_seq)" -ge "$target" ] && break
    sleep 0.2
done
[ "$(applied_seq)" -ge "$target" ] || fail "the interrupted apply was not finished after restart"
for _ in $(seq 1 50); do
    [ "$(journal_bytes)" -le $((64 << 20)) ] && break
    sleep 0.2
done
[ "$(journal_bytes)" -le $((64 << 20)) ] || fail "journal holds $(journal_bytes) bytes, over its 64 MiB limit"
sleep 1.5
st=$("$TIDEMARK" status --config "$WORK/recovery.toml")
grep -q "WARNING:.*journal_limit" <<<"$st" || fail "status does not warn about the shortened window: $st"
grep "history:\|journal:\|WARNING" <<<"$st"

mapfile -t IN_WINDOW < <(listed_rounds)
[ "${#IN_WINDOW[@]}" -ge 1 ] || fail "no round left in the window"
pick=("${IN_WINDOW[0]}" "${IN_WINDOW[-1]}")
log "after the crash and restart: rounds ${IN_WINDOW[0]}..${IN_WINDOW[-1]} in the window; restoring ${pick[*]}"
restore_oldest
for r in "${pick[@]:1}"; do restore_round "$r"; done
log "the oldest listed round ($OLDEST_RESTORED) and the others restored exactly"
log "PASS"
