#!/usr/bin/env bash
# The appliance runs one static binary: check it with file and ldd, and
# that its command line explains itself and refuses wrong flags.
source "$(dirname "$0")/../lib/common.sh"

desc=$(file -L "$TIDEMARK")
grep -Eq "statically linked|static-pie linked" <<<"$desc" || fail "not static: $desc"
ldd_out=$(ldd "$TIDEMARK" 2>&1 || true)
grep -Eq "not a dynamic executable|statically linked" <<<"$ldd_out" || fail "ldd finds dynamic dependencies: $ldd_out"
log "static: $desc"

help=$("$TIDEMARK" --help)
for cmd in keygen protected recovery checkpoints restore status; do
    grep -q "^  $cmd " <<<"$help" || fail "--help does not list '$cmd'"
done
grep -q -- "--checkpoint" <<<"$("$TIDEMARK" restore --help)" || fail "restore --help lacks --checkpoint"
set +e
"$TIDEMARK" restore --no-such-flag >/dev/null 2>&1
rc=$?
"$TIDEMARK" protected --config /nonexistent.toml 2>"$WORK/err"
rc2=$?
set -e
[ "$rc" = 2 ] || fail "a wrong flag exited $rc, want 2 (usage error)"
[ "$rc2" = 1 ] || fail "a missing config exited $rc2, want 1"
grep -q "/nonexistent.toml" "$WORK/err" || fail "missing config error does not name the file"
log "--help lists every command; wrong flags and missing files give clear errors"
