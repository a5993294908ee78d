#!/usr/bin/env bash
# A thousand NBD connections that each had a burst of small reads do not
# leave the agent holding hundreds of MiB once they are quiet. Four sources
# (127.0.0.21-24) open 250 connections each; every connection pipelines
# 128 reads of 4 KiB and takes the replies a second later, then stays open
# and quiet. The agent must end under 160 MiB resident (68 MiB measured)
# and 80 threads.
# (Before: 472 MiB and 516 threads, kept while the connections stayed
# open: every read ran in place on a runtime thread, and tokio started up
# to 512 threads for them, each with its own allocator pages; and every
# connection kept the 256 KiB buffer its replies were gathered in.)
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:64M
start_recovery
start_protected
HOSTILE="python3 $ROOT/tests/lib/hostile_nbd.py"
status() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PROTECTED_PID/status"; }
base=$(status VmRSS)

log "1000 connections, a burst of 128 reads of 4 KiB on each (agent at $((base / 1024)) MiB)"
clients=()
for n in 21 22 23 24; do
    $HOSTILE bursts "$NBD_PORT" disk0 "127.0.0.$n" 250 128 8 >"$WORK/bursts$n.out" 2>"$WORK/bursts$n.err" &
    clients+=($!)
done
done_count=0
for _ in $(seq 1 600); do
    done_count=$(cat "$WORK"/bursts*.err | grep -c bursts_done || true)
    [ "$done_count" = 4 ] && break
    sleep 0.1
done
[ "$done_count" = 4 ] || fail "the bursts did not finish in 60 s: $(cat "$WORK"/bursts*.err)"
sleep 2
rss=$(status VmRSS) threads=$(status Threads) peak=$(status VmHWM)
log "all replies taken, connections quiet: $((rss / 1024)) MiB resident (peak $((peak / 1024)) MiB), $threads threads"
for pid in "${clients[@]}"; do wait "$pid" || fail "a client failed: $(cat "$WORK"/bursts*.err)"; done
[ "$rss" -lt $((160 * 1024)) ] || fail "quiet connections left the agent at $((rss / 1024)) MiB resident"
[ "$threads" -le 80 ] || fail "the agent kept $threads threads"
kill -0 "$PROTECTED_PID" || fail "the protected agent died"
qio_check "$NBD_URI/disk0" "write -P 0x5a 0 1M" "flush" "read -P 0x5a 0 1M"
log "PASS"
