#!/usr/bin/env bash
# Issue 13's bench: write latency during a WAN outage against the same
# writes with the link up, in one run. Writes tests/bench/OUTAGE.md;
# asserts nothing (the machine is shared and noisy).
# A 64 MiB protected log (the smallest allowed; the OVA's is 180 MiB), the
# link through tests/wanproxy (400 Mbit/s, 10 ms). fio (its nbd engine)
# writes 8x the log's capacity as random 64 KiB writes at 32 MiB/s, QD 4,
# with the link up, then with it blackholed (the VPG goes to bitmap mode
# instead of making the writes wait for the link). Each case is run
# ROUNDS times; the table shows the median of the rounds' p50, p99 and max
# completion latencies. Goal: p99 with the link down ≤ 1.2x link up.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=37100
source tests/lib/common.sh
OUT=tests/bench/OUTAGE.md
LOG_MIB=64
ROUNDS=${OUTAGE_ROUNDS:-3}

USE_PROXY=1 LOG_CAPACITY=$((LOG_MIB << 20)) setup_pair async 1000 disk0:1G
start_wan_link --latency-ms 10 --bandwidth-bps 400000000
start_recovery
start_protected
mode() { status_json protected | jq -r '.vpgs[0].bitmap.mode // "logging"'; }
# run NAME: one fio run; prints "p50 p99 max" in ms.
run() {
    timeout -s KILL 300 fio --name="$1" --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=64k \
        --offset=64m --size=512m --io_size=$((8 * LOG_MIB))m --rate=32m --iodepth=4 --refill_buffers \
        --randrepeat=0 --output-format=json --output="$WORK/$1.json" >"$WORK/$1.out" 2>&1 ||
        fail "fio $1 did not complete: $(tail -5 "$WORK/$1.out")"
    sed -n '/^{/,$p' "$WORK/$1.json" | jq -r '.jobs[0].write.clat_ns |
        "\(.percentile["50.000000"] / 1e6) \(.percentile["99.000000"] / 1e6) \(.max / 1e6)"'
}
# median VALUES...
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

nbdcopy <(head -c 8M /dev/urandom) "$NBD_URI/disk0"
wait_replicated 120
declare -a up50 up99 upmax down50 down99 downmax
for r in $(seq 1 "$ROUNDS"); do
    rm -f "$WORK/cut"
    for _ in $(seq 1 600); do [ "$(mode)" = logging ] && break; sleep 0.5; done
    [ "$(mode)" = logging ] || fail "round $r: the VPG did not return to logging"
    wait_replicated 300
    read -r a b c < <(run "up-$r")
    up50+=("$a") up99+=("$b") upmax+=("$c")
    [ "$(mode)" = logging ] || fail "round $r: the VPG left logging with the link up; the link-up run measured something else"
    echo blackhole >"$WORK/cut"
    read -r a b c < <(run "down-$r")
    down50+=("$a") down99+=("$b") downmax+=("$c")
    [ "$(mode)" = bitmap ] || fail "round $r: the VPG is not in bitmap mode after 8x its log with the link down"
    log "round $r: link up p50/p99/max ${up50[-1]}/${up99[-1]}/${upmax[-1]} ms; link down ${a}/${b}/${c} ms"
done
rm -f "$WORK/cut"

u50=$(median "${up50[@]}") u99=$(median "${up99[@]}") umax=$(median "${upmax[@]}")
d50=$(median "${down50[@]}") d99=$(median "${down99[@]}") dmax=$(median "${downmax[@]}")
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
echo "BENCH outage_write_p99 $d99 ms peer=$u99 ratio=$(ratio "$d99" "$u99")"

cat >"$OUT" <<EOF
# Write latency during a WAN outage (tests/bench/outage_latency.sh)

$(date -u +%Y-%m-%d), this machine's $(nproc) cores, both agents, fio and wanproxy on it.
fio (nbd engine) writes $((8 * LOG_MIB)) MiB, 8x the ${LOG_MIB} MiB protected log, as random 64 KiB
writes at 32 MiB/s, QD 4, through the protected agent; the link is tests/wanproxy at 400 Mbit/s,
10 ms. The peer is the same writes with the link up, in the same run. Median of $ROUNDS rounds.
Ratios are ours (link down) over the peer's (link up): lower is better.

| completion latency | link down (bitmap mode) | link up (logging) | ratio | goal |
|---|---|---|---|---|
| p50 | $d50 ms | $u50 ms | $(ratio "$d50" "$u50")× | |
| p99 | $d99 ms | $u99 ms | $(ratio "$d99" "$u99")× | ≤ 1.2× |
| max | $dmax ms | $umax ms | $(ratio "$dmax" "$umax")× | |

With the link down the log fills to its high-water mark (90 %) and the VPG goes to bitmap mode:
writes then go to the volume and mark their regions, with no wait on the log or the link
(docs/bitmap-mode.md). Back-pressure, as before bitmap mode, would hold a write for the whole
outage.
EOF
log "wrote $OUT"
