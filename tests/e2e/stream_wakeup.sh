#!/usr/bin/env bash
# A write the sender read before it was fsynced, fsynced by the client's
# FLUSH while the sender was idle, must still be sent. The test build
# pauses the sender between finding nothing sendable and deciding what to
# wait for (FAILPOINTS=stream-idle-before-check=sleep(500)); the FLUSH
# lands in that pause. Before the fix the sender then waited for the next
# append, which never came: `reverse` failed in CI when the recovered
# side's last writes did not reach the old site.
source "$(dirname "$0")/../lib/common.sh"

[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"
# No automatic checkpoints: nothing but the test's writes appends.
setup_pair async 3600000 disk0:16M
start_recovery
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="stream-idle-before-check=sleep(500)" start_protected

# all_acked SECONDS: wait until the recovery journal acknowledged every
# record the protected log holds (the status is rewritten every second).
all_acked() {
    local st head acked
    for _ in $(seq 1 $(($1 * 5))); do
        st=$(status_json protected) || true
        head=$(jq -r '.vpgs[0].head_seq // -1' <<<"$st" 2>/dev/null)
        acked=$(jq -r '.vpgs[0].acked_seq // -2' <<<"$st" 2>/dev/null)
        [ "$head" = "$acked" ] && [ "$head" -gt "${2:-0}" ] 2>/dev/null && return 0
        sleep 0.2
    done
    fail "head seq $head, acked $acked after $1 s: the last write was not sent"
}
all_acked 60
for round in 1 2 3 4 5; do
    before=$(status_json protected | jq -r '.vpgs[0].head_seq')
    qio_check "$NBD_URI/disk0" "write -P $round $((round << 20)) 64k" "flush"
    all_acked 10 "$before"
done
log "5 flushed writes sent while the sender paused before its idle check"
log "PASS"
