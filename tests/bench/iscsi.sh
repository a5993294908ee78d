#!/usr/bin/env bash
# The iSCSI front-end's cost, in the booted appliance (QEMU -accel tcg):
# the same writes through Tidemark's LUN (replication on: the recovery agent
# runs on the host) and through a plain LIO fileio LUN on a file (as
# targetcli makes one: sparse) in an ext4 file system on a disk of the same
# kind in the same guest, without replication and with the same durability
# (fileio without buffered I/O writes O_DSYNC; both LUNs report WCE=0).
# The protected log is files in ext4 too. With REF_RAW=1 the reference is
# the raw disk instead (no file system: the bench's reference until
# 2026-12-06). With CAPTURE_ALONE=1 the host's recovery agent is killed
# before the runs: the protected agent captures and logs, and sends
# nothing (what the capture path alone costs).
# The client is `qemu-img bench` with QEMU's iSCSI driver, from the storage
# network's namespace. qemu-img bench has no random mode: the 4 KiB writes
# step 64 KiB apart over the LUN (no two adjacent, none merged). Writes
# tests/bench/ISCSI.md; asserts nothing (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36600
source tests/lib/common.sh
source tests/lib/appliance.sh
source tests/lib/iscsi.sh
source tests/bench/lib.sh
OUT=tests/bench/ISCSI.md
ROWS=()

log "boot the protected appliance (the OVA's 2 vCPUs) with a second disk for the reference LUN"
if [ "${REF_RAW:-0}" = 1 ]; then
    truncate -s 64M "$WORK/refdisk.img"
    REF_WHAT="the raw virtio disk"
else
    truncate -s 96M "$WORK/refdisk.img"
    mke2fs -q -t ext4 -F "$WORK/refdisk.img"
    REF_WHAT="a sparse 64 MiB file in ext4 on a virtio disk"
fi
iscsi_boot_protected -smp 2 -drive "file=$WORK/refdisk.img,format=raw,if=virtio"
if [ "${REF_RAW:-0}" = 1 ]; then
    iscsi_reference_lun prot /dev/vdd
else
    out=$(guest_console prot root "$PASSWORD" "mkdir -p /tmp/ref && mount -t ext4 /dev/vdd /tmp/ref && echo mounted" | tr -d '\r')
    grep -q mounted <<<"$out" || fail "cannot mount the reference disk: $out"
    iscsi_reference_lun prot /tmp/ref/ref.img
fi

CAPTURED="replication on: the recovery agent runs on the host"
RECOVERY_PIDS=("$AGENT_PID")
if [ "${CAPTURE_ALONE:-0}" = 1 ]; then
    kill9 "$AGENT_PID"
    RECOVERY_PIDS=()
    CAPTURED="capture alone: the host's recovery agent killed before the runs"
fi

# The log claims its capacity in its first seconds (zero-filled spares):
# the steady state an appliance runs in, measured after it.
PREP="no preallocation line (a build without it)"
for _ in $(seq 1 600); do
    grep -q "zero-filled ahead of need" "$WORK/prot/serial.log" && break
    sleep 0.2
done
PREP=$(grep -m1 -o "[0-9]* spare segment(s) of [0-9]* MiB zero-filled ahead of need in [0-9.]* s" "$WORK/prot/serial.log") ||
    PREP="no preallocation line (a build without it)"
log "protected log: $PREP"

# run IQN COUNT DEPTH SIZE STEP: seconds for COUNT writes of SIZE bytes.
# (qemu-img bench takes no --image-opts: the iSCSI options go in a json:
# file name. The pattern is not zero, so nothing can skip the data.)
run() {
    local file="json:{\"driver\":\"raw\",\"file\":{\"driver\":\"iscsi\",\"transport\":\"tcp\",\"portal\":\"$PORTAL:3260\","
    file+="\"target\":\"$1\",\"lun\":0,\"user\":\"$CHAP_USER\",\"password\":\"$CHAP_SECRET\",\"initiator-name\":\"$INITIATOR\"}}"
    local out
    out=$(in_ns qemu-img bench -w -t none -c "$2" -d "$3" -s "$4" -S "$5" --pattern=165 "$file" 2>&1) ||
        fail "qemu-img bench on $1 failed: $out"
    sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p' <<<"$out"
}
# timed_run NAME IQN COUNT DEPTH SIZE STEP: run, its seconds in RUN_S, and
# what it cost in CPU_NOTES (not in a subshell, which would lose them): the
# host CPU of the recovery agent and of the guest's QEMU (and of that its
# vCPU threads: the rest is QEMU's device emulation and I/O), and in the
# guest its user, system (with interrupts) and idle (with I/O wait) time, the protected
# agent's user and system time and its minor page faults.
CPU_NOTES=()
timed_run() {
    local name=$1 rec0 guest0 vcpu0 t g0
    shift
    g0=$(guest_snapshot)
    rec0=$(cpu_ticks "${RECOVERY_PIDS[@]}") guest0=$(cpu_ticks "$PROT_PID") vcpu0=$(vcpu_ticks "$PROT_PID")
    t=$(run "$@")
    CPU_NOTES+=("$(python3 - "$name" "$t" "$(($(cpu_ticks "${RECOVERY_PIDS[@]}") - rec0))" \
        "$(($(cpu_ticks "$PROT_PID") - guest0))" "$(($(vcpu_ticks "$PROT_PID") - vcpu0))" "$g0" "$(guest_snapshot)" <<'PY'
import sys
name, t, rec, guest, vcpu = sys.argv[1], float(sys.argv[2]), *(int(x) / 100 for x in sys.argv[3:6])
# guest_snapshot: faults, agent user, agent sys; guest user nice system idle iowait irq softirq (ticks of 1/100 s)
a, b = ([int(x) for x in s.split()] for s in sys.argv[6:8])
d = [y - x for x, y in zip(a, b)]
print(f"| {name} | {t:.2f} s | {rec:.2f} s | {guest:.2f} s | {vcpu:.2f} s | "
      f"{(d[3] + d[4]) / 100:.2f} / {(d[5] + d[8] + d[9]) / 100:.2f} / {(d[6] + d[7]) / 100:.2f} s | "
      f"{d[1] / 100:.2f} / {d[2] / 100:.2f} s | {d[0]} |")
PY
)")
    RUN_S=$t
}
# guest_snapshot: the protected agent's minor page faults (a buffer the
# allocator gave back and took again is faulted in and zeroed anew), user
# and system ticks, then the guest's CPU ticks (user nice system idle
# iowait irq softirq), on one line.
guest_snapshot() {
    local out
    out=$(guest_console prot root "$PASSWORD" \
        'set -- $(head -1 /proc/stat); echo SNAP $(awk "{print \$10, \$14, \$15}" /proc/$(pidof tidemark)/stat) $2 $3 $4 $5 $6 $7 $8' |
        tr -d '\r')
    sed -n 's/^SNAP \([0-9 ]*\)$/\1/p' <<<"$out" | tail -1
}
row() { # name count size tidemark_s reference_s goal
    python3 - "$@" <<'PY'
import sys
name, count, size, t, r, goal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
if size >= 1 << 20:
    unit, tv, rv = "MiB/s", count * size / t / 2**20, count * size / r / 2**20
else:
    unit, tv, rv = "IOPS", count / t, count / r
print(f"| {name} | {tv:.0f} {unit} | fileio O_DSYNC: {rv:.0f} {unit} | {tv / rv:.2f} | {goal} |")
PY
}
for i in 1 2; do
    log "round $i/2: 4 KiB writes at queue depth 32"
    t=$(run "$IQN" 4000 32 4096 65536)
    r=$(run "$REF_IQN" 4000 32 4096 65536)
    ROWS+=("$(row "4k write QD32, round $i" 4000 4096 "$t" "$r" "≥ 0.8×")")
    log "round $i/2: 1 MiB sequential writes at queue depth 8"
    timed_run "Tidemark, round $i" "$IQN" 128 8 1048576 1048576
    t=$RUN_S
    timed_run "reference, round $i" "$REF_IQN" 128 8 1048576 1048576
    r=$RUN_S
    ROWS+=("$(row "1 MiB seq write QD8, round $i" 128 1048576 "$t" "$r" "≥ 0.7×")")
done
rss=$(guest_console prot root "$PASSWORD" "grep -E 'VmHWM|VmRSS' /proc/\$(pidof tidemark)/status" | tr -d '\r' | tr -s ' \n' ' ')
{
    echo "# iSCSI bench (tests/bench/iscsi.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), QEMU -accel tcg, the guest with the OVA's 2 vCPUs on 2 host cores. Tidemark's LUN (kernel NBD device under an"
    echo "iblock backstore, write-through into the protected log; $CAPTURED) against a plain LIO"
    echo "fileio LUN on $REF_WHAT in the same guest (O_DSYNC, no replication)."
    echo "Client: qemu-img bench (QEMU's iSCSI driver) from the storage namespace; 4 KiB writes step 64 KiB."
    echo
    echo "| run | Tidemark | reference | ratio | goal |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "CPU during each 1 MiB run: on the host (2 cores; the recovery agent's replication of Tidemark's"
    echo "writes may go on into the reference's run), QEMU's and of that its vCPU threads'; in the guest (from"
    echo "its /proc, so also the console logins around the run), its CPU time and the protected agent's, and"
    echo "that agent's minor page faults (128 MiB is 32768 pages: a buffer faulted in anew for each write"
    echo "would add as many):"
    echo
    echo "| 1 MiB run | wall | recovery agent (host) | guest (QEMU, 2 vCPUs) | of which the vCPU threads | in the guest: user / system / idle | protected agent: user / system | its page faults |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s\n' "${CPU_NOTES[@]}"
    echo
    echo "Agent memory after the runs: $rss (goal: ≤ 64 MiB)."
    echo "Protected log before the runs: $PREP."
} >"$OUT"
cat "$OUT"
