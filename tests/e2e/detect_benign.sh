#!/usr/bin/env bash
# No alarm on benign work, and intermittent encryption, in one guest at
# one guest. A Linux guest under QEMU (TCG) has six disks, each the export of
# its own VPG on one protected agent (so each has its own detector and
# alert): four ext4 volumes with 480 ordinary files each (logs, CSV
# tables), a volume random from the start (LUKS-like) and one more ext4
# volume for the attack. The files are written through the export before
# the guest boots, so the detector knows their extents as low-entropy.
# After 20 quiet seconds the guest runs, all at the same time, for 120 s:
# - archive: new gzip archives of the logs into free space;
# - randcopy: an 8 MiB file of random data copied into a new file;
# - dbwrites: small in-place overwrites of compressible pages, fsync each;
# - mkfs: a new file system over a scratch file's blocks, then fstrim;
# - luks: random rewrites of a random volume (the known blind spot:
#   reported, not judged);
# then, alone (six at once on one vCPU slowed it to the detector's
# floor), every16: every 16th 4 KiB block of each file encrypted in
# place. The four benign VPGs raise no alert; the attacked one alerts
# within 30 s of its start. The anomalous windows per workload are printed.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"
source "$ROOT/tests/lib/detect_guest.sh"

BENIGN=(archive randcopy dbwrites mkfs)
ATTACK=every16
WORKLOADS=("${BENIGN[@]}" luks "$ATTACK")
SECS=120
SIZE=64M

# The files the guest of detect_attack writes, made on the host.
python3 - "$WORK/files" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(f"{root}/logs"); os.makedirs(f"{root}/data")
for i in range(1, 241):
    with open(f"{root}/logs/app-{i}.log", "w") as f:
        for n in range(i, i * 40 + 4001, 3):
            f.write(f"2026-12-03 09:41:07 INFO request {i} served status=200 bytes={n}\n")
    with open(f"{root}/data/table-{i}.csv", "w") as f:
        for n in range(1, 701):
            f.write(f"{n},customer-{(n * i) % 977},{n % 90}.{i % 100:02d},paid\n")
PY
mkdir -p "$WORK/src" "$WORK/prep"
for w in "${WORKLOADS[@]}"; do
    if [ "$w" = luks ]; then
        head -c "$SIZE" /dev/urandom >"$WORK/prep/$w.img"
    else
        mkfs.ext4 -q -F -d "$WORK/files" "$WORK/prep/$w.img" "$SIZE" || fail "mkfs.ext4 -d failed"
    fi
done

# vpg1 holds the first workload's volume; every other workload has a VPG
# of its own (g-NAME).
setup_pair async 1000 "${WORKLOADS[0]}:$SIZE"
printf '[vpg.detection]\ninterval = "5s"\n' >>"$WORK/protected.toml"
vpg_of() { [ "$1" = "${WORKLOADS[0]}" ] && echo vpg1 || echo "g-$1"; }
for w in "${WORKLOADS[@]:1}"; do
    truncate -s "$SIZE" "$WORK/src/$w.img"
    cat >>"$WORK/protected.toml" <<TOML
[[vpg]]
name = "g-$w"
checkpoint_interval_ms = 1000
[vpg.detection]
interval = "5s"
[[vpg.volume]]
name = "$w"
path = "$WORK/src/$w.img"
TOML
done
start_recovery
start_protected

# all_in_sync SECONDS: every VPG past its initial copy, and everything it
# had appended then acknowledged by the recovery site since. (Not head ==
# acked at one status write: a checkpoint is appended every second, the
# status written every second, and under load the two can stay in step,
# each write showing the newest checkpoint not yet acknowledged.)
all_in_sync() {
    local _ st heads=
    for _ in $(seq 1 $(($1 * 5))); do
        st=$(status_json protected || true)
        if [ -z "$heads" ]; then
            jq -e '.vpgs | length == 6 and all(.state == "in sync" or .state == "replicating")' <<<"$st" >/dev/null &&
                heads=$(jq -c '[.vpgs[] | {(.name): .head_seq}] | add' <<<"$st")
        elif jq -e --argjson h "$heads" '.vpgs | all(.acked_seq >= $h[.name])' <<<"$st" >/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    fail "not every VPG is in sync after $1 s (heads then: ${heads:-none}): $(jq -c '[.vpgs[] | {name, state, acked_seq, head_seq}]' <<<"$st")"
}
all_in_sync 120
for w in "${WORKLOADS[@]}"; do
    nbdcopy --flush "$WORK/prep/$w.img" "$NBD_URI/$w" || fail "nbdcopy to $w failed"
done
all_in_sync 120
log "six volumes written through their exports and replicated; the guest starts"

list=$(IFS=,; echo "${WORKLOADS[*]}")
detect_guest_start work "tm_disks=$list tm_secs=$SECS" "${WORKLOADS[@]}"
SERIAL=$WORK/work/serial.log
guest_wait work "DISKS-READY" 120 || fail "the guest did not mount its disks: $(tail -5 "$SERIAL")"
grep -q "GUEST-FAIL" "$SERIAL" && fail "guest: $(grep GUEST-FAIL "$SERIAL")"
log "the benign workloads start (${SECS} s each, all at once)"
guest_wait work "BENIGN-ALL-DONE" $((SECS + 180)) || fail "the workloads did not finish: $(tail -5 "$SERIAL")"
for w in "${BENIGN[@]}" luks; do
    grep -q "BENIGN-DONE $w" "$SERIAL" || fail "workload $w did not finish"
done
log "the benign workloads are done; after 20 quiet seconds the intermittent attack starts"
guest_wait work "ATTACK-START" 60 || fail "the attack did not start"
start=$(date +%s.%N)
wait_alert 30 "$(vpg_of "$ATTACK")" || fail "no alert within 30 s of the intermittent attack's start"
took=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
log "$ATTACK: alert after ${took} s"
guest_stop
alarms=0
for w in "${WORKLOADS[@]}"; do
    vpg=$(vpg_of "$w")
    windows=$(grep "anomalous window" "$WORK/protected.log" | grep -c -E "vpg=\"?$vpg\"?([ ,]|$)" || true)
    alert=$(detector_alert "$vpg")
    log "$w: $windows anomalous windows, alert: ${alert:-none}"
    case $w in
    luks | "$ATTACK") ;;
    *) [ -z "$alert" ] || { alarms=$((alarms + 1)); log "FALSE ALARM on benign work $w"; } ;;
    esac
done
[ "$alarms" -eq 0 ] || fail "$alarms benign workloads raised an alarm"
log "PASS"
