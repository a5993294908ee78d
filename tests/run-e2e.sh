#!/usr/bin/env bash
# Runs every end-to-end test in tests/e2e (or those named on the command
# line), each with its own ports, network namespaces and work dir, and
# prints one summary line.
#
# Tests run in two lanes side by side (E2E_JOBS=1 runs them one by one):
# the tests that boot a QEMU guest in one, all the others in the other, so
# two TCG guests never compete for the machine's two cores. Each test's
# output is kept until it ends and then printed whole, so the log reads as
# if the tests had run one after another.
set -uo pipefail
cd "$(dirname "$0")/.."
export TIDEMARK=${TIDEMARK:-$PWD/build/tidemark}
[ -x "$TIDEMARK" ] || { echo "build/tidemark is missing: run make build" >&2; exit 2; }
tests=("$@")
((${#tests[@]})) || tests=(tests/e2e/*.sh)
jobs=${E2E_JOBS:-2}

out=$(mktemp -d /tmp/tidemark-e2e-run.XXXXXX)
trap 'rm -rf "$out"' EXIT

# interrupted: prints the output so far of every test still running, so
# a run cut short (a CI timeout, ^C) still shows where each test stood.
interrupted() {
    trap - INT TERM
    local f name
    for f in "$out"/*.log; do
        [ -e "$f" ] || continue
        name=$(basename "$f" .log)
        grep -qxs "$name" "$out/passed" "$out/failed" && continue
        echo "=== $name (interrupted; its output so far)"
        cat "$f"
    done
    exit 130
}
trap interrupted INT TERM

boots_a_guest() { grep -q 'lib/appliance.sh\|lib/detect_guest.sh\|qemu-system' "$1"; }

# run_one INDEX TEST: runs it, then prints its output and verdict at once.
run_one() {
    local i=$1 t=$2 name start rc
    name=$(basename "$t" .sh)
    start=$(date +%s)
    PORT_BASE=$((31000 + i * 10)) timeout "${E2E_TIMEOUT:-900}" bash "$t" >"$out/$name.log" 2>&1
    rc=$?
    {
        flock 9
        echo "=== $name"
        cat "$out/$name.log"
        if ((rc == 0)); then
            echo "--- PASS $name ($(($(date +%s) - start)) s)"
            echo "$name" >>"$out/passed"
        else
            echo "--- FAIL $name ($(($(date +%s) - start)) s)"
            echo "$name" >>"$out/failed"
        fi
    } 9>"$out/print.lock"
}

# run_lane INDEX:TEST...: one test after another.
run_lane() {
    local entry
    for entry in "$@"; do run_one "${entry%%:*}" "${entry#*:}"; done
}

guests=() others=() i=0
for t in "${tests[@]}"; do
    i=$((i + 1))
    if ((jobs > 1)) && boots_a_guest "$t"; then guests+=("$i:$t"); else others+=("$i:$t"); fi
done
started=$(date +%s)
((${#guests[@]})) && run_lane "${guests[@]}" &
((${#others[@]})) && run_lane "${others[@]}" &
wait

pass=$(cat "$out/passed" 2>/dev/null | wc -l)
failed=$(cat "$out/failed" 2>/dev/null | wc -l)
((failed)) && echo "failed: $(tr '\n' ' ' <"$out/failed")"
echo "e2e: $pass passed, $failed failed in $(($(date +%s) - started)) s"
((failed == 0 && pass == ${#tests[@]}))
