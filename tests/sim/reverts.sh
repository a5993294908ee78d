#!/usr/bin/env bash
# Shows the simulator finds each earlier defect: for every fix in
# tests/sim/reverts.py, a copy of the tree with that fix reverted must
# break an invariant within SEEDS seeds (`make simulate-reverts`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
seeds=${SEEDS:-10000}
work=$(mktemp -d /tmp/tidemark-reverts.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CARGO_TARGET_DIR="$root/target/sim-reverts"
missed=0
for name in $(python3 "$root/tests/sim/reverts.py" --list); do
    rm -rf "$work/tree" && mkdir -p "$work/tree"
    git -C "$root" archive HEAD | tar -x -C "$work/tree"
    python3 "$root/tests/sim/reverts.py" "$work/tree" "$name"
    (cd "$work/tree" && cargo build --quiet --release --locked -p tidemark --features simulate --example simulate)
    if "$CARGO_TARGET_DIR/release/examples/simulate" --seeds "$seeds" > "$work/out" 2>&1; then
        echo "MISSED $name: $seeds seeds hold with its fix reverted"
        missed=$((missed + 1))
    else
        echo "found  $name: $(grep -m1 'broke an invariant' "$work/out")"
    fi
done
[ "$missed" -eq 0 ] || { echo "reverts: $missed defect(s) not found"; exit 1; }
echo "reverts: the simulator finds every reverted fix within $seeds seeds"
