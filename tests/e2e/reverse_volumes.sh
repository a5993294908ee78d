#!/usr/bin/env bash
# Reverse protection of a VPG of two volumes comes in sync after the old
# site's agent dies between the two volumes' delta copies. The old site
# kept one "in sync" flag, not which volumes' copies it had applied: a
# session that went on with the same stream started with no volume
# copied, the CopyDone of the first was applied already (never sent
# again), so "in sync" never came and move-back was refused for good
# (review of helper-51). The failpoint reverse-applied-part-copied aborts
# the old site's agent right after it recorded a batch that completed
# disk0's copy and not disk1's.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

served_pair disk0:16M disk1:32M
start_recovery
start_protected
wait_replicated 90
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag base --wait 30s >/dev/null || fail "checkpoint failed"
wait_replicated 30

log "failover; one extent of disk0 and 16 MiB of disk1 change on the recovered side"
failover_to base
change_two_volumes

log "reverse; the old site's agent dies once disk0's copy is applied and disk1's is not"
kill9 "$PROTECTED_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="reverse-applied-part-copied=1*return" start_protected
reverse_until_gone "$PROTECTED_PID" "the failpoint never fired: no batch left disk0 copied and disk1 not"
jq -e '.reverse.copied == [true, false]' "$WORK/a/data/log/vpg1/capture-state.json" >/dev/null ||
    fail "the old site's state does not say disk0 is copied and disk1 not: $(jq -c .reverse "$WORK/a/data/log/vpg1/capture-state.json")"

log "restart: the session goes on with the same stream and comes in sync"
start_protected
reverse_in_sync "reverse did not come in sync after the restart"
grep -q "need_hashes=false" "$WORK/protected.log" || fail "the restarted session hashed the volumes again: the test proves nothing"
log "PASS"
