#!/usr/bin/env bash
# What opening the journal costs as it grows (issue 18's "open time at
# 1,000 / 100,000 checkpoints and 1 / 20 GiB of journal"): for each size a
# synthetic journal (the test build's bench-journal: 1 MiB writes with the
# checkpoints spread among them, written as the receiver would) is opened
# by a real recovery agent, which writes the segment summaries; then, with
# the page cache dropped before each run,
# - `tidemark checkpoints` (the listing),
# - `tidemark export` until it prints its URI (the export open),
# and, as the peer, the same listing with the summaries moved away (the
# full scan every open did before the index). Writes tests/bench/INDEX.md;
# asserts nothing (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36700
source tests/lib/common.sh
OUT=tests/bench/INDEX.md
SIZES=${INDEX_BENCH_SIZES:-"1000:1GiB 100000:1GiB 1000:20GiB 100000:20GiB"}
EXPORT_PORT=$((PORT_BASE + 6))
ROWS=()
declare -A LIST_MS

FP=$("$TIDEMARK" keygen --dir "$WORK/keys" --name bench | tail -n1)
cat >"$WORK/recovery.toml" <<TOML
role = "recovery"
$(node_toml bench "$WORK")
[listen]
address = "127.0.0.1"
control_port = $CONTROL_PORT
data_port = $DATA_PORT
peer_fingerprints = ["$FP"]
[exports]
listen = "127.0.0.1:$EXPORT_PORT"
TOML
JROOT=$WORK/data/journal
JDIR=$JROOT/v

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now_ms() { date +%s%3N; }
# list_ms: ms of a cold `checkpoints`; its index line is left in $WORK/list.err.
list_ms() {
    local t0
    cold
    t0=$(now_ms)
    "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg v >/dev/null 2>"$WORK/list.err" ||
        fail "checkpoints failed: $(cat "$WORK/list.err")"
    echo $(($(now_ms) - t0))
}
# export_ms CHECKPOINT: ms from a cold `tidemark export` to its URI.
export_ms() {
    local t0 pid ms
    cold
    t0=$(now_ms)
    "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg v --checkpoint "$1" >"$WORK/export.out" 2>&1 &
    pid=$!
    until grep -q nbd:// "$WORK/export.out"; do
        kill -0 "$pid" 2>/dev/null || fail "export of $1 failed: $(cat "$WORK/export.out")"
        sleep 0.002
    done
    ms=$(($(now_ms) - t0))
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$ms"
}

for size in $SIZES; do
    cps=${size%%:*}
    bytes=${size#*:}
    rm -rf "$JROOT"
    mkdir -p "$JROOT"
    log "$cps checkpoints among $bytes of journal"
    "$TIDEMARK_TEST" bench-journal --journal-root "$JROOT" --vpg v --volume-size 1GiB --bytes "$bytes" --checkpoints "$cps"
    sealed=$(($(find "$JDIR" -name '*.tmjrn' | wc -l) - 1))
    start_recovery
    for _ in $(seq 1 1800); do
        [ "$(find "$JDIR" -name '*.tmjrn.idx' | wc -l)" -ge "$sealed" ] && break
        sleep 0.2
    done
    [ "$(find "$JDIR" -name '*.tmjrn.idx' | wc -l)" -ge "$sealed" ] || fail "the agent did not summarize $sealed segments"
    "$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg v --json >"$WORK/list.json"
    listed=$(jq length "$WORK/list.json")
    list=$(list_ms)
    grep -q "^journal index: $sealed sealed segments read from their summaries" "$WORK/list.err" ||
        fail "the listing did not use the summaries: $(cat "$WORK/list.err")"
    last=$(export_ms last)
    middle=$(export_ms "$(jq '.[length / 2 | floor].id' "$WORK/list.json")")
    # The peer: the same listing without summaries (agent stopped, so it
    # does not write them back meanwhile).
    kill9 "$RECOVERY_PID"
    mkdir -p "$WORK/aside"
    mv "$JDIR"/*.idx "$WORK/aside/"
    scan=$(list_ms)
    grep -q "^journal index: 0 sealed segments read from their summaries" "$WORK/list.err" ||
        fail "the peer listing used summaries: $(cat "$WORK/list.err")"
    rm -rf "$WORK/aside"
    LIST_MS[$size]=$list
    echo "BENCH index_open $cps checkpoints $bytes: checkpoints ${list} ms, export last ${last} ms, export middle ${middle} ms; full scan ${scan} ms"
    ratio=$(python3 -c "print('%.3f' % ($list / $scan) if $scan else 'n/a')")
    ROWS+=("| $cps | $bytes | $listed | $list ms | $last ms | $middle ms | $scan ms | $ratio |")
done
first=${SIZES%% *}
final=${SIZES##* }
growth=$(python3 -c "print('%.1f' % (${LIST_MS[$final]} / max(1, ${LIST_MS[$first]})))")
{
    echo "# Journal index bench (tests/bench/index.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), 2 host cores, page cache dropped before every run. A synthetic journal"
    echo "per row (1 MiB writes, checkpoints spread among them), summarized by a real recovery agent."
    echo "Peer: the same \`checkpoints\` with the summaries moved away, i.e. the full scan every open"
    echo "did before the index. Goal: ≤ 100 ms each and flat."
    echo
    echo "| checkpoints | journal | listed | \`checkpoints\` | export open (last) | export open (middle) | full scan | index / scan |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Growth of \`checkpoints\` from $first to $final: ${growth}×."
} >"$OUT"
cat "$OUT"
