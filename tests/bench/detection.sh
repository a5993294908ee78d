#!/usr/bin/env bash
# `make bench` (detection): what the encryption detector costs and what it
# sees, written to tests/bench/DETECTION.md. Nothing here asserts.
# 1. Write-path cost: one protected agent (capture only) with two VPGs on
#    equal volumes, the detector on for one and off for the other; fio 4k
#    random writes at QD32 and 1 MiB sequential writes on each, alternated,
#    twice. Ratio on/off (goal ≥ 0.95).
# 2. Memory: the class maps of the volumes, per TiB.
# 3. The guest of detect_attack encrypting its files in place, fully and
#    every Nth 4 KiB block: alert or not, and how long after the start.
# 4. Benign work in the same guest, BENCH_BENIGN_SECONDS each (default
#    120): anomalous windows and alerts per workload (goal 0), and a
#    LUKS-like volume that is random from the start (the blind spot).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36500
source tests/lib/common.sh
source tests/lib/appliance.sh
source tests/lib/detect_guest.sh
source tests/bench/lib.sh
RESULTS=${DETECTION_RESULTS:-tests/bench/DETECTION.md}
# Which guest runs (all by default).
ATTACKS=${DETECTION_ATTACKS-full 2 4 8 16}
WORKLOADS=${DETECTION_BENIGN-archive randcopy dbwrites mkfs luks}
RUNTIME=${BENCH_RUNTIME:-10}
BENIGN=${BENCH_BENIGN_SECONDS:-120}
ROWS=()

row() { ROWS+=("| $* |"); echo "BENCH $*"; }

# fresh_pair [RECOVERY]: stops the agents, starts over with a 64 MiB ext4
# volume disk0, and starts the protected agent (and the recovery one).
fresh_pair() {
    [ -n "${PROTECTED_PID:-}" ] && kill9 "$PROTECTED_PID"
    [ -n "${RECOVERY_PID:-}" ] && kill9 "$RECOVERY_PID"
    PROTECTED_PID= RECOVERY_PID=
    rm -rf "$WORK/a" "$WORK/b" "$WORK/src" "$WORK/attack"
    mkdir -p "$WORK/src"
    truncate -s 64M "$WORK/src/disk0.img"
    if [ "${1:-}" = luks ]; then
        head -c 64M /dev/urandom >"$WORK/src/disk0.img"
    else
        mkfs.ext4 -q -F "$WORK/src/disk0.img"
    fi
    setup_pair async 1000 disk0:64M
    printf '[vpg.detection]\ninterval = "5s"\n' >>"$WORK/protected.toml"
    start_recovery
    start_protected
    wait_replicated 120
}

# guest_run ARGS MARKER: boots the guest, waits for the files, then for
# MARKER; prints the seconds from MARKER to the first alert (or "none"
# within 60 s of the work's end) and the anomalous windows logged.
guest_run() {
    detect_guest_start attack "$1"
    guest_wait attack "FILES-WRITTEN" 300 || fail "guest: no files: $(tail -3 "$WORK/attack/serial.log")"
    local before
    before=$(grep -c "anomalous window" "$WORK/protected.log" || true)
    guest_wait attack "$2" 120 || fail "guest: no $2"
    local start alert_s=none
    start=$(date +%s.%N)
    for _ in $(seq 1 $(((BENIGN + 200) * 5))); do
        if [ -n "$(detector_alert)" ]; then
            alert_s=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
            break
        fi
        grep -q -E "ATTACK-DONE|BENIGN-DONE" "$WORK/attack/serial.log" && [ -z "${done_at:-}" ] && done_at=$(date +%s)
        [ -n "${done_at:-}" ] && [ $(($(date +%s) - done_at)) -gt 60 ] && break
        sleep 0.2
    done
    done_at=
    guest_stop 2>/dev/null || true
    local windows
    windows=$(($(grep -c "anomalous window" "$WORK/protected.log" || true) - before))
    echo "$alert_s $windows"
}

log "1/3 write-path cost: detector on vs off, same agent, same disk"
rm -rf "$WORK/a" "$WORK/b" "$WORK/src"
mkdir -p "$WORK/src"
fallocate -l 1G "$WORK/src/on.img"
fallocate -l 1G "$WORK/src/off.img"
LOG_CAPACITY=$((8 << 30)) setup_pair async 5000 on:1G
cat >>"$WORK/protected.toml" <<TOML
[[vpg]]
name = "vpg2"
[vpg.detection]
enabled = false
[[vpg.volume]]
name = "off"
path = "$WORK/src/off.img"
TOML
start_protected
declare -A sum=()
for round in 1 2; do
    for side in on off; do
        read -r iops _ < <(fio_iops "$NBD_URI/$side" randwrite 4k 32 1G)
        sum[rand_$side]=$(python3 -c "print(${sum[rand_$side]:-0} + $iops)")
        read -r _ bw < <(fio_iops "$NBD_URI/$side" write 1M 8 1G)
        sum[seq_$side]=$(python3 -c "print(${sum[seq_$side]:-0} + $bw)")
    done
done
ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
row "4k random write QD32, detector on / off | $(printf %.0f "$(python3 -c "print(${sum[rand_on]} / 2)")") / $(printf %.0f "$(python3 -c "print(${sum[rand_off]} / 2)")") IOPS | $(ratio "${sum[rand_on]}" "${sum[rand_off]}") | ≥ 0.95"
row "1 MiB sequential write QD8, detector on / off | $(printf %.0f "$(python3 -c "print(${sum[seq_on]} / 2)")") / $(printf %.0f "$(python3 -c "print(${sum[seq_off]} / 2)")") MiB/s | $(ratio "${sum[seq_on]}" "${sum[seq_off]}") | ≥ 0.95"
maps=$(sed -n 's/.*encryption detector on: .* class maps of \([0-9.]* [KMG]*i*B\).*/\1/p' "$WORK/protected.log" | head -1)
row "class map of a 1 GiB volume (2 bits per 64 KiB) | $maps | 4 MiB per TiB | -"
kill9 "$PROTECTED_PID"
PROTECTED_PID=
# `detection.sh --cost-only`: the figures above, printed, nothing written.
[ "${1:-}" = --cost-only ] && exit 0

log "2/3 in-place encryption in a guest: fully, and every Nth 4 KiB block"
for every in $ATTACKS; do
    fresh_pair
    read -r took windows < <(guest_run "tm_every=$every" ATTACK-START)
    row "encryption of 480 files, $([ "$every" = full ] && echo "every block" || echo "every ${every}th block") | alert after $took s | $windows anomalous windows | ≤ 30 s"
done

log "3/3 benign work in the same guest, ${BENIGN} s each, and a LUKS-like volume"
for work in $WORKLOADS; do
    if [ "$work" = luks ]; then
        # A volume random from the start (LUKS-like: the blind spot).
        fresh_pair luks
        read -r took windows < <(guest_run "tm_work=luks tm_secs=$BENIGN" BENIGN-START)
        row "LUKS-like volume, random rewrites (${BENIGN} s) | alert: $took | $windows anomalous windows | blind: reported, not judged"
        continue
    fi
    fresh_pair
    read -r took windows < <(guest_run "tm_work=$work tm_secs=$BENIGN" BENIGN-START)
    row "benign: $work (${BENIGN} s) | alert: $took | $windows anomalous windows | 0"
done

{
    echo "# Detection bench ($(date -u +%Y-%m-%d), \`make bench\`)"
    echo
    echo "Produced by tests/bench/detection.sh; see docs/detection.md for the method."
    echo
    echo "| figure | value | ratio / detail | goal |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$RESULTS"
log "wrote $RESULTS"
