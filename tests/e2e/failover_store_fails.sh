#!/usr/bin/env bash
# The protected site refuses writes once the recovery site failed the VPG
# over, even when its disk does not take the record of it. The link
# hears "failed over" and stores the refusal; when that store failed (a
# full or failing log disk), the refusal was not made at all and no link
# ran again: the old site took the VMs' writes for good while the
# recovery site's VMs ran on the replica (split brain; review of
# helper-51). Now the refusal holds at once and its store is tried again
# until it goes in; a restart before then hears it again from the
# recovery site. Failpoint failed-over-store: the store fails.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

EXPORT_PORT=$((PORT_BASE + 6))
setup_pair async 1000 disk0:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="failed-over-store=return" start_protected
qio_check "$NBD_URI/disk0" "write -P 0x41 0 1M"
wait_replicated 60
state=$WORK/a/data/log/vpg1/capture-state.json

# refused_within SECONDS WHAT: a write to the protected export fails
# within SECONDS, else fails the test saying WHAT.
refused_within() {
    for _ in $(seq 1 $(($1 * 5))); do
        qemu-io -f raw -c "write -P 0x66 2M 4k" "$NBD_URI/disk0" >/dev/null 2>&1 || return 0
        sleep 0.2
    done
    fail "$2"
}

log "failover; the protected site cannot store that it was failed over"
"$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest >/dev/null || fail "failover failed"
refused_within 15 "the protected site still takes writes after the failover"
for _ in $(seq 1 50); do
    grep -q "recording that the VPG was failed over failed" "$WORK/protected.log" && break
    sleep 0.2
done
grep -q "recording that the VPG was failed over failed" "$WORK/protected.log" ||
    fail "the store never failed: the test proves nothing"
jq -e '.refused == null' "$state" >/dev/null || fail "the refusal was stored although the failpoint refuses it"
fresh_status_json protected >/dev/null || fail "the protected agent's status was not rewritten within 5 s"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "stopped: .*failed over" ||
    fail "status does not say the VPG was failed over: $("$TIDEMARK" status --config "$WORK/protected.toml")"

log "a restart before the store went in hears the failover again and stores it"
kill9 "$PROTECTED_PID"
start_protected
refused_within 15 "the restarted protected site takes writes after the failover"
for _ in $(seq 1 50); do
    jq -e '.refused != null' "$state" >/dev/null && break
    sleep 0.2
done
jq -e '.refused != null' "$state" >/dev/null || fail "the refusal was not stored after the restart: $(cat "$state")"
log "PASS"
