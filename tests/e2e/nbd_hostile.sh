#!/usr/bin/env bash
# Hostile NBD clients on the storage network cannot take the appliance
# down, and cannot lock the well-behaved hypervisor out. At once, each from
# a source address of its own (the hypervisor is 127.0.0.1):
# - 127.0.0.2: 4 connections pipeline 48 READs of 32 MiB each (6 GiB asked
#   for, ~5 KB sent) and never read a reply. The agent pays for reply
#   buffers before it allocates them, per source: its resident memory stays
#   under 200 MiB (two replies of 32 MiB are paid for at a time, the other
#   connections wait), and after NBD_SEND_TIMEOUT (30 s) with no reply
#   taken the connections holding them are closed. (Before: 48 such reads took it from 18 MiB
#   to 1,276 MiB.)
# - 127.0.0.5: 100,000 FLUSHes; all answered, with at most 40 threads in
#   the agent. (Before: 516 threads, one blocking sync each.)
# - 127.0.0.3: 257 silent connections: the 257th is closed at once (256
#   per source), the others after the 10 s handshake timeout.
# - 127.0.0.4: a handshake sent one byte a second is cut after ~10 s.
# - 127.0.0.6: 3 connections each send a 32 MiB WRITE's header and one
#   byte of it, then nothing: the two whose buffers were paid for are
#   closed after NBD_PAYLOAD_TIMEOUT (30 s). (Before: held as long as the
#   connections stayed open, and with them the source's budget.)
# Meanwhile the hypervisor connects and reads within seconds, every time.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:256M
start_recovery
start_protected
wait_replicated 60
HOSTILE="python3 $ROOT/tests/lib/hostile_nbd.py"

# Peak VmRSS (KiB) and thread count of the protected agent, sampled.
(
    peak_rss=0 peak_threads=0
    while kill -0 "$PROTECTED_PID" 2>/dev/null; do
        read -r rss threads < <(awk '/^VmRSS/ {r=$2} /^Threads/ {t=$2} END {print r, t}' "/proc/$PROTECTED_PID/status") ||
            break
        [ "${rss:-0}" -gt "$peak_rss" ] && peak_rss=$rss
        [ "${threads:-0}" -gt "$peak_threads" ] && peak_threads=$threads
        echo "$peak_rss $peak_threads" >"$WORK/peaks"
        sleep 0.1
    done
) &
sampler=$!
sleep 0.3
base=$(cut -d' ' -f1 "$WORK/peaks")

log "attacks from four sources at once (idle agent: $((base / 1024)) MiB resident)"
$HOSTILE reads "$NBD_PORT" disk0 127.0.0.2 4 48 33554432 36 >"$WORK/reads.out" 2>&1 &
reads=$!
$HOSTILE silent "$NBD_PORT" 127.0.0.3 257 13 >"$WORK/silent.out" 2>&1 &
silent=$!
$HOSTILE slow "$NBD_PORT" disk0 127.0.0.4 >"$WORK/slow.out" 2>&1 &
slow=$!
$HOSTILE flushes "$NBD_PORT" disk0 127.0.0.5 100000 >"$WORK/flushes.out" 2>&1 &
flushes=$!
$HOSTILE stalled "$NBD_PORT" disk0 127.0.0.6 3 36 >"$WORK/stalled.out" 2>&1 &
stalled=$!

# The hypervisor keeps being served throughout.
for i in 1 2 3 4 5 6; do
    sleep 4
    t0=$(date +%s.%N)
    timeout 10 qemu-io -f raw -r -c "read 0 1M" "$NBD_URI/disk0" >"$WORK/legit.out" 2>&1 ||
        fail "the hypervisor's read $i during the attacks failed: $(cat "$WORK/legit.out")"
    took=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
    log "hypervisor read $i: connected and read 1 MiB in ${took}s"
done

kill -0 "$PROTECTED_PID" || fail "the protected agent died during the attacks"
wait "$silent" || fail "silent client: $(cat "$WORK/silent.out")"
wait "$slow" || fail "slow client: $(cat "$WORK/slow.out")"
wait "$flushes" || fail "flush flood: $(cat "$WORK/flushes.out")"
wait "$reads" || fail "read attack: $(cat "$WORK/reads.out")"
wait "$stalled" || fail "stalled writes: $(cat "$WORK/stalled.out")"
kill "$sampler" 2>/dev/null || true
read -r peak_rss peak_threads <"$WORK/peaks"
log "reads: $(cat "$WORK/reads.out")"
log "silent: $(cat "$WORK/silent.out")"
log "slow: $(cat "$WORK/slow.out")"
log "flushes: $(cat "$WORK/flushes.out")"
log "stalled: $(cat "$WORK/stalled.out")"
log "agent peak: $((peak_rss / 1024)) MiB resident, $peak_threads threads"

[ "$peak_rss" -lt $((200 * 1024)) ] || fail "the agent grew to $((peak_rss / 1024)) MiB under the read attack"
[ "$peak_threads" -le 40 ] || fail "the agent ran $peak_threads threads under the flush flood"
# The source's buffers hold two replies of 32 MiB: the two connections that
# got them were closed after 30 s without taking them; the other two were
# waiting for buffers (holding none) and get their turn after.
[ "$(jq .closed_by_server "$WORK/reads.out")" -ge 2 ] || fail "connections that took no reply for 30 s were not closed"
[ "$(jq .replies "$WORK/flushes.out")" = 100000 ] || fail "not every FLUSH was answered"
[ "$(jq .closed_by_server "$WORK/stalled.out")" -ge 2 ] || fail "writes whose payload stalled for 30 s kept their buffers"
[ "$(jq .closed_by_server "$WORK/silent.out")" = 257 ] || fail "silent connections were not all closed within 13 s"
python3 -c "import json,sys; s=json.load(open('$WORK/slow.out'))['closed_after_s']; sys.exit(0 if 8 <= s <= 14 else 1)" ||
    fail "the slow handshake was not cut after about 10 s"
grep -q "NBD connection refused: source 127.0.0.3 holds its maximum of 256 connections" "$WORK/protected.log" || fail "the 257th connection from one source was not refused"
kill -0 "$PROTECTED_PID" || fail "the protected agent died"
qio_check "$NBD_URI/disk0" "write -P 0x5a 0 1M" "flush" "read -P 0x5a 0 1M"
log "PASS"
