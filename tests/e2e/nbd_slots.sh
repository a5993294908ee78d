#!/usr/bin/env bash
# Sources that fill every NBD connection slot cannot lock a hypervisor out.
# Four sources (127.0.0.11-14) each open their maximum of 256 connections,
# complete the handshake and then sit idle: 1024, every slot the agent
# has. While they are fresh, a new connection is refused at once, with
# the reason in the log (it does not hang). Once they have gone
# NBD_EVICT_IDLE (30 s) without a request, the hypervisor (127.0.0.1,
# holding none) connects and reads within seconds: it takes the slot of
# one of them, from a source holding the most, which is closed. (Before:
# the accept loop waited for a free slot, so every new connection, the
# hypervisor's among them, hung in the listen backlog for as long as the
# idle ones stayed open; keepalive sees live peers.) Which connections may
# be taken, and the rule that two sources never trade a slot, are unit
# tests (nbd::admission).
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:64M
start_recovery
start_protected
HOSTILE="python3 $ROOT/tests/lib/hostile_nbd.py"
HOLD=40

log "four sources take all 1024 connection slots and sit idle"
hogs=()
for n in 11 12 13 14; do
    $HOSTILE idle "$NBD_PORT" disk0 "127.0.0.$n" 256 "$HOLD" >"$WORK/idle$n.out" 2>"$WORK/idle$n.err" &
    hogs+=($!)
done
for _ in $(seq 1 300); do
    [ "$(cat "$WORK"/idle*.err | grep -c '"held": 256')" = 4 ] && break
    sleep 0.1
done
[ "$(cat "$WORK"/idle*.err | grep -c '"held": 256')" = 4 ] || fail "the idle clients did not get their slots: $(cat "$WORK"/idle*.err)"
held_at=$(date +%s)

t0=$(date +%s.%N)
timeout 10 qemu-io -f raw -r -c "read 0 1M" "$NBD_URI/disk0" >"$WORK/early.out" 2>&1 &&
    fail "a connection was let in while every slot was held by connections in use"
took=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
python3 -c "import sys; sys.exit(0 if $took < 5 else 1)" || fail "the refusal took ${took}s: it waited, it was not refused at once"
grep -q "NBD connection refused: all 1024 connection slots are taken, and no source holding two more than 127.0.0.1 (which holds 0) has a connection that sent no request in 30s" \
    "$WORK/protected.log" || fail "the refusal does not say why: $(grep "NBD connection refused" "$WORK/protected.log" | tail -2)"
log "while every slot was in fresh use: refused in ${took}s, with the reason logged"

sleep $((held_at + 31 - $(date +%s)))
t0=$(date +%s.%N)
timeout 10 qemu-io -f raw -r -c "read 0 1M" "$NBD_URI/disk0" >"$WORK/legit.out" 2>&1 ||
    fail "the hypervisor could not connect and read while idle connections held the slots: $(cat "$WORK/legit.out")"
log "after 30 s without a request: the hypervisor connected and read 1 MiB in $(python3 -c "import time; print('%.1f' % (time.time() - $t0))") s"
grep -q "closing a connection of 127.0.0.1[1-4] (it holds 256) that sent no request in 30s, to let 127.0.0.1 (holding 0) in" \
    "$WORK/protected.log" || fail "no idle connection was closed to let the hypervisor in"

for pid in "${hogs[@]}"; do wait "$pid" || fail "an idle client failed"; done
closed=0
for n in 11 12 13 14; do
    log "127.0.0.$n: $(cat "$WORK/idle$n.out")"
    closed=$((closed + $(jq .closed_by_server "$WORK/idle$n.out")))
done
# One slot for the hypervisor's one connection.
[ "$closed" = 1 ] || fail "$closed idle connections were closed, not the 1 the hypervisor needed"
grep -q "NBD accept failed" "$WORK/protected.log" && fail "accepts failed: $(grep -m3 "NBD accept failed" "$WORK/protected.log")"
kill -0 "$PROTECTED_PID" || fail "the protected agent died"
qio_check "$NBD_URI/disk0" "write -P 0x5a 0 1M" "flush" "read -P 0x5a 0 1M"
log "PASS"
