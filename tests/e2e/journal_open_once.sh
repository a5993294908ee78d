#!/usr/bin/env bash
# A VPG's journal is opened once, however many hellos ask for it at once.
# The first hello of a new VPG opens its journal; when that takes longer
# than the protected side waits for its welcome (15 s: a slow disk, a
# seeded replica's check), the protected side hangs up and says hello
# again. Before, the second hello opened the journal a second time beside
# the first: its recovery (cutting a torn tail, setting damaged segments
# aside) then ran over a journal the first open's slot was appending to,
# and acknowledged records could be cut. Now the second hello waits for
# the first open and joins the VPG it made. The failpoint `journal-open`
# makes the first open take 20 s.
source "$(dirname "$0")/../lib/common.sh"
[ -x "$TIDEMARK_TEST" ] || fail "no test build: run make build"

setup_pair async 1000 disk0:32M
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="journal-open=1*sleep(20000)" start_recovery
started=$(date +%s)
start_protected

head -c 8M /dev/urandom >"$WORK/base.bin"
nbdcopy "$WORK/base.bin" "$NBD_URI/disk0"

log "the protected side gives up on its first hello and says hello again"
for _ in $(seq 1 150); do
    grep -q "peer silent" "$WORK/protected.log" && break
    sleep 0.2
done
grep -q "peer silent" "$WORK/protected.log" ||
    fail "the protected side did not give up on its first hello: the test proves nothing"
# The first open ends 20 s after the start: then both hellos have had theirs.
while [ $(($(date +%s) - started)) -lt 23 ]; do sleep 0.5; done
qio_check "$NBD_URI/disk0" "write -P 0x3c 2M 1M" flush
wait_replicated 90

opens=$(grep -c "opened the journal for the VPG's first hello" "$WORK/recovery.log" || true)
[ "$opens" -eq 1 ] ||
    fail "the journal of vpg1 was opened $opens times for its hellos: $(grep -E "opened the journal|hello" "$WORK/recovery.log" | tail -5)"
restore_equal latest "$WORK/src/disk0.img" "after two hellos met"
log "PASS"
