#!/usr/bin/env bash
# Sync mode (RPO 0): once a FLUSH returns, the recovery journal has the
# write. Through a WAN with 150 ms one-way latency: kill -9 the protected
# agent right after the flush, delete its log, and the write is still
# restored from the journal's durable end (`head`). A control run in async
# mode, with the link blackholed during the write, shows the check can
# fail: there the flushed write is lost.
source "$(dirname "$0")/../lib/common.sh"

run_rounds() { # mode expect(present|absent)
    local mode=$1 expect=$2 round pattern
    rm -rf "$WORK/a" "$WORK/b" "$WORK/src"
    USE_PROXY=1 setup_pair "$mode" 1000 disk0:16M
    start_recovery
    start_protected
    wait_replicated 60
    for round in 1 2 3; do
        pattern=$((0x40 + round))
        # Control run: with the link blackholed an async FLUSH still returns
        # (it only needs the local log), so the write cannot be journaled.
        [ "$mode" = async ] && echo blackhole >"$WORK/cut"
        python3 - "$NBD_PORT" "$pattern" <<'PY' || fail "writer failed"
import sys
from nbdclient import Client
port, pattern = int(sys.argv[1]), int(sys.argv[2])
c = Client("127.0.0.1", port, "disk0")
c.write(pattern << 16, bytes([pattern]) * 65536)
c.flush()
PY
        kill9 "$PROTECTED_PID"
        rm -rf "$WORK/a/data/log" "$WORK/out"
        restore_to head "$WORK/out"
        rm -f "$WORK/cut"
        if python3 - "$WORK/out/disk0.img" "$pattern" <<'PY'; then got=present; else got=absent; fi
import sys
d, p = open(sys.argv[1], "rb").read(), int(sys.argv[2])
sys.exit(0 if d[p << 16:(p << 16) + 65536] == bytes([p]) * 65536 else 1)
PY
        [ "$got" = "$expect" ] || fail "$mode round $round: flushed write is $got in the journal, expected $expect"
        log "$mode round $round: flushed, killed, log deleted: write $got in the journal"
        start_protected
        wait_replicated 60
    done
    rm -rf "$WORK/final"
    restore_to latest "$WORK/final"
    cmp "$WORK/final/disk0.img" "$WORK/src/disk0.img" || fail "$mode: after the new streams the replica differs"
    kill9 "$PROTECTED_PID" "$RECOVERY_PID"
}

start_wan_link --latency-ms 150

run_rounds sync present
run_rounds async absent
log "sync mode kept every flushed write; async (the control) lost them as expected"
