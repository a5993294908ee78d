#!/usr/bin/env bash
# Reverse protection comes in sync after the recovery agent stops in the
# middle of the delta copy. The copy ran only in the process that started
# it; a restarted recovery agent went on with the stream the old site had
# applied part of (no new hashes asked), no copy ran, and the old site
# waited for good for the CopyDone of a volume (review of helper-52). Now
# a session goes on with the stream only if the old site is in sync or the
# copy runs (or ran) in this process; else a new delta stream starts. The
# failpoint reverse-delta-volume-done aborts the recovery agent 3 s after
# the first volume's copy is done.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

served_pair disk0:16M disk1:32M
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="reverse-delta-volume-done=1*return" start_recovery
start_protected
wait_replicated 90

log "failover; one extent of disk0 and 16 MiB of disk1 change on the recovered side"
failover_to latest
change_two_volumes

log "reverse; the recovery agent stops once disk0's copy is done"
reverse_until_gone "$RECOVERY_PID" "the failpoint never fired"
applied=$(jq -r '.reverse.applied_seq' "$WORK/a/data/log/vpg1/capture-state.json")
[ "$applied" -gt 0 ] 2>/dev/null || fail "the old site applied nothing of the copy: the test proves nothing"

log "restart: the old site comes in sync"
start_recovery
reverse_in_sync "reverse did not come in sync after the recovery agent's restart"
log "PASS"
