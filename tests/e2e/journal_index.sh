#!/usr/bin/env bash
# The persisted journal index (segment summaries, docs/formats.md): the
# recovery agent writes a summary beside each sealed journal segment, and
# `checkpoints`, `restore` and `export` read those instead of the segments.
# Each way a summary can go wrong ends in a correct rebuild, and every
# restore and export meanwhile equals the source at its checkpoint:
# - the agent writes one summary per sealed segment; the listing says it
#   read them (not the segments) and the export's log line says so too;
# - a deleted summary, one with a flipped byte, one cut short and one
#   copied from another segment are each refused (that segment is scanned)
#   and rewritten by the agent, byte for byte as before;
# - the agent is stopped at exact points while writing summaries (the
#   test build's failpoints: half a summary under its name, as a power cut
#   can leave it; a temporary not yet renamed), then SIGKILLed at random
#   moments while rebuilding all of them; every time the readers stay exact
#   and the next agent finishes the job;
# - a byte flipped in a summarized segment (bit rot after the summary was
#   written) is found by the agent's background check: the summary goes,
#   status warns, and the listing reports the damage.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
SIZE_MB=32
setup_pair async 1000 disk0:${SIZE_MB}M
# A 64 MiB journal_limit closes segments at 4 MiB: a few rounds fill several.
printf '[exports]\nlisten = "127.0.0.1:%s"\n[[vpg]]\nname = "vpg1"\njournal_limit = "64MiB"\n' "$EXPORT_PORT" \
    >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60

ROUND_BYTES=$((2 << 20))
: >"$WORK/rounds"
for n in $(seq 1 12); do
    off=$(( (RANDOM * 32768 + RANDOM) % (SIZE_MB * 1024 * 1024 - ROUND_BYTES) / 4096 * 4096 ))
    head -c "$ROUND_BYTES" /dev/urandom >"$WORK/chunk"
    qemu-io -f raw -c "write -s $WORK/chunk $off $ROUND_BYTES" -c flush "$NBD_URI/disk0" >/dev/null ||
        fail "round $n: write failed"
    "$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "round-$n" --wait 60s >/dev/null ||
        fail "round $n: checkpoint failed"
    echo "$n $(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)" >>"$WORK/rounds"
done

sealed_segments() { find "$JDIR" -maxdepth 1 -name '*.tmjrn' | sort | head -n -1; }
mapfile -t SEALED < <(sealed_segments)
[ "${#SEALED[@]}" -ge 5 ] || fail "only ${#SEALED[@]} sealed journal segments; the test needs at least 5"
# wait_summaries: every sealed segment (as listed above) has a summary, and
# no temporary is left (within 20 s).
wait_summaries() {
    local s missing
    for _ in $(seq 1 100); do
        missing=0
        for s in "${SEALED[@]}"; do [ -s "$s.idx" ] || missing=$((missing + 1)); done
        [ "$missing" = 0 ] && [ -z "$(find "$JDIR" -name '*.idx-new')" ] && return 0
        sleep 0.2
    done
    fail "$missing of ${#SEALED[@]} sealed segments have no summary after 20 s: $(ls "$JDIR")"
}
wait_summaries
mkdir "$WORK/good"
cp "$JDIR"/*.idx "$WORK/good/"
log "${#SEALED[@]} sealed segments, each with a summary ($(du -cb "$WORK"/good/*.idx | tail -1 | cut -f1) bytes in all)"

# expect_index N: `checkpoints` read N sealed segments from their
# summaries and scanned the rest (the others and the newest).
expect_index() {
    local line want_scanned=$(( ${#SEALED[@]} + 1 - $1 ))
    "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 >"$WORK/cps.out" 2>"$WORK/cps.err" ||
        fail "checkpoints failed: $(cat "$WORK/cps.err")"
    grep -q "round-12" "$WORK/cps.out" || fail "the last round's checkpoint is not listed"
    line=$(grep "^journal index:" "$WORK/cps.err") || fail "checkpoints does not say how it read the journal"
    grep -q "^journal index: $1 sealed segments read from their summaries, $want_scanned scanned" <<<"$line" ||
        fail "expected $1 summaries and $want_scanned scans: $line"
}
# restores_exact N...: each round's restore equals the source at it.
restores_exact() {
    local n want
    for n in "$@"; do
        rm -rf "$WORK/r"
        restore_to "round-$n" "$WORK/r"
        want=$(awk -v n="$n" '$1 == n {print $2}' "$WORK/rounds")
        [ "$(sha256sum <"$WORK/r/disk0.img" | cut -d' ' -f1)" = "$want" ] ||
            fail "restore of round $n differs from the source at that checkpoint"
    done
    rm -rf "$WORK/r"
}
# export_exact N: the export of round N equals the source at it, and the
# agent built it from the summaries.
export_exact() {
    local want uri
    # Emptied here, not by the background job's redirection, which may come
    # after the wait below has read the previous export's URI.
    : >"$WORK/export.out"
    "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "round-$1" >>"$WORK/export.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1 100); do grep -q "nbd://" "$WORK/export.out" && break; sleep 0.1; done
    uri=$(grep -o 'nbd://[^ ]*' "$WORK/export.out") || fail "export of round $1 printed no URI: $(cat "$WORK/export.out")"
    want=$(awk -v n="$1" '$1 == n {print $2}' "$WORK/rounds")
    qemu-img convert -f raw -O raw "$uri" "$WORK/exported.img" || fail "reading the export of round $1 failed"
    [ "$(sha256sum <"$WORK/exported.img" | cut -d' ' -f1)" = "$want" ] ||
        fail "the export of round $1 differs from the source at that checkpoint"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$WORK/exported.img"
    grep "serving checkpoint .*journal index:" "$WORK/recovery.log" | tail -1 |
        grep -q "journal index: [1-9][0-9]* sealed segments read from their summaries" ||
        fail "the export was not built from the summaries: $(grep 'serving checkpoint' "$WORK/recovery.log" | tail -1)"
}
# the_same_as_before: the summaries are byte for byte those first written.
the_same_as_before() {
    local f
    for f in "$WORK"/good/*.idx; do
        cmp -s "$f" "$JDIR/$(basename "$f")" || fail "$(basename "$f") was not rebuilt as it was: $1"
    done
}

# run_to_failpoint SPEC: the test build of the recovery agent, which must
# stop at the failpoint within 20 s (it may do so before it listens).
run_to_failpoint() {
    local rc=0
    # (The subshell keeps bash's "Aborted" job report out of the output.)
    (FAILPOINTS=$1 timeout 20 "$TIDEMARK_TEST" recovery --config "$WORK/recovery.toml" >>"$WORK/recovery.log" 2>&1; exit $?) \
        2>/dev/null || rc=$?
    [ "$rc" = 0 ] && fail "the recovery agent did not stop at $1"
    [ "$rc" = 124 ] && fail "the recovery agent did not reach $1 within 20 s"
    return 0
}

log "the readers use the summaries"
expect_index "${#SEALED[@]}"
restores_exact 1 6 12
export_exact 6

log "a deleted, a flipped, a cut and a misplaced summary, read with the agent stopped"
kill9 "$RECOVERY_PID"
rm "${SEALED[0]}.idx"
size=$(stat -c %s "${SEALED[1]}.idx")
printf '\xff' | dd of="${SEALED[1]}.idx" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "${SEALED[1]}.idx" "$WORK/good/$(basename "${SEALED[1]}").idx" &&
    printf '\x00' | dd of="${SEALED[1]}.idx" bs=1 seek=$((size / 2)) conv=notrunc status=none
truncate -s $(($(stat -c %s "${SEALED[2]}.idx") - 5)) "${SEALED[2]}.idx"
cp "${SEALED[4]}.idx" "${SEALED[3]}.idx"
expect_index $(( ${#SEALED[@]} - 4 ))
restores_exact 1 12
log "the agent rewrites them"
start_recovery
wait_summaries
the_same_as_before "after damage"
expect_index "${#SEALED[@]}"

log "stopped while writing: half a summary under its name (a power cut without fsync)"
kill9 "$RECOVERY_PID"
rm "$JDIR"/*.idx
run_to_failpoint "summary-store-torn=2*off->return"
torn=$(basename "${SEALED[2]}").idx
[ -s "$JDIR/$torn" ] && ! cmp -s "$JDIR/$torn" "$WORK/good/$torn" || fail "no torn summary was left for $torn"
expect_index 2
restores_exact 3 12

log "stopped between writing a summary and renaming it"
run_to_failpoint "summary-store-before-rename=1*off->return"
[ -n "$(find "$JDIR" -name '*.idx-new')" ] || fail "no temporary summary was left behind"
expect_index 3
restores_exact 4

log "SIGKILL at random moments while every summary is rebuilt"
left=()
for i in 1 2 3 4 5; do
    rm -f "$JDIR"/*.idx
    start_recovery
    sleep "$((RANDOM % 2)).$((RANDOM % 10))"
    kill9 "$RECOVERY_PID"
    left+=("$(find "$JDIR" -name '*.idx' | wc -l)")
    "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 >/dev/null 2>"$WORK/cps.err" ||
        fail "checkpoints failed after kill $i: $(cat "$WORK/cps.err")"
done
log "summaries in place at each kill: ${left[*]} (of ${#SEALED[@]})"
restores_exact 2 9 12
start_recovery
wait_summaries
the_same_as_before "after the kills"
expect_index "${#SEALED[@]}"
restores_exact 1 7 12
export_exact 11

log "bit rot in a summarized segment: the background check finds it"
size=$(stat -c %s "${SEALED[2]}")
printf '\x5a' | dd of="${SEALED[2]}" bs=1 seek=$((size / 2)) conv=notrunc status=none
# 8 MiB a second over 6 segments of 4 MiB: one round takes about 3 s.
for _ in $(seq 1 100); do
    grep -q "WARNING:.*$(basename "${SEALED[2]}") is damaged (found by the background check)" \
        <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" && break
    sleep 0.2
done
wait_status recovery "WARNING:.*$(basename "${SEALED[2]}") is damaged (found by the background check)"
[ -e "${SEALED[2]}.idx" ] && fail "the damaged segment's summary is still there"
"$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 >/dev/null 2>"$WORK/cps.err" || true
grep -q "WARNING: journal damaged" "$WORK/cps.err" || fail "the listing does not report the damage: $(cat "$WORK/cps.err")"
log "PASS"
