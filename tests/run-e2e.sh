#!/usr/bin/env bash
# Runs every end-to-end test in tests/e2e (or those named on the command
# line), each with its own ports and work dir, and prints one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."
export TIDEMARK=${TIDEMARK:-$PWD/build/tidemark}
[ -x "$TIDEMARK" ] || { echo "build/tidemark is missing: run make build" >&2; exit 2; }
tests=("$@")
((${#tests[@]})) || tests=(tests/e2e/*.sh)
pass=0 failed=0 names=()
i=0
for t in "${tests[@]}"; do
    i=$((i + 1))
    name=$(basename "$t" .sh)
    start=$(date +%s)
    echo "=== $name"
    if PORT_BASE=$((31000 + i * 10)) timeout "${E2E_TIMEOUT:-900}" bash "$t"; then
        pass=$((pass + 1))
        echo "--- PASS $name ($(($(date +%s) - start)) s)"
    else
        failed=$((failed + 1))
        names+=("$name")
        echo "--- FAIL $name ($(($(date +%s) - start)) s)"
    fi
done
((failed)) && echo "failed: ${names[*]}"
echo "e2e: $pass passed, $failed failed"
((failed == 0))
