#!/usr/bin/env bash
# The recovery site's ESXi data path: a recovery appliance booted from the
# image (QEMU, -accel tcg) with iSCSI on its storage network serves what it
# recovers as LUNs, each set behind its own target; the protected agent runs
# on the host; the initiators are libiscsi's tools and QEMU's iSCSI driver
# in the storage network's namespace.
# - A point-in-time export (`tidemark export`) is a read-only LUN: it reads
#   back as the checkpoint, and libiscsi's ReadOnly suite gets DATA PROTECT
#   for every write it sends (WRITE 10/12/16, WRITE VERIFY, ORWRITE,
#   COMPARE AND WRITE; no thin provisioning is offered, so no UNMAP or
#   WRITE SAME); the LUN is unchanged after it.
# - A test failover's LUN takes writes and reads them back; after the stop
#   its target and device are gone, and the next test failover shows the
#   checkpoint again. Each set, and each test failover, has its own LUN
#   identity (VPD 0x80 serial).
# - `tidemark audit` passes the LIO configuration with targets up and once
#   they are withdrawn; `tidemark status` lists the targets served.
# - An export whose agent is killed leaves no target or device behind once
#   the agent is back; a failover's LUN keeps its writes and its identity
#   across a SIGKILL of the agent.
# - The audit trail survives that power cut: it verifies, and holds the
#   operations run on the console before it.
# - Switch-back under a power cut: the old site (the host's agent) takes
#   reverse protection of the failed-over LUN, then `move-back`; it stops
#   (failpoint) as the recovery appliance has finished its part, and the
#   appliance loses power at once. Rebooted, the appliance is no longer
#   failed over and serves no LUN; the restarted old site finishes by itself
#   and replicates forward again; the switch-back's checkpoint and a later
#   one restore in the guest equal to the old site's volume.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"
source "$ROOT/tests/lib/iscsi.sh"

appliance_image_check
guest_netns "$NS" mgmt repl stor
NBD_PORT=10809
PASSWORD='recovery console'
CFG=/run/tidemark/tidemark.toml
BASE_IQN=iqn.2026-12.io.tidemark:tidemark:tm-rec:vm1

mkdir -p "$WORK/a" "$WORK/src" "$WORK/rec/cfg"
FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name protected-host | tail -n1)
ovf_env "$WORK/rec/cfg/ovf-env.xml" tidemark.role=recovery tidemark.hostname=tm-rec \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
    tidemark.repl.address=10.0.3.15/24 tidemark.storage.address=$PORTAL/24 \
    tidemark.peer.address=10.0.3.2 tidemark.peer.fingerprint="$FP_A" "${ISCSI_PROPERTIES[@]}" \
    tidemark.admin.password_hash="$(openssl passwd -6 -salt recsalt "$PASSWORD")"
storage_nics

log "boot a recovery appliance with iSCSI on its storage network"
GUEST_MEM=768 guest_start rec "$NS" "${nics[@]}"
guest_wait rec "tidemark recovery ready" 120 || fail "no 'ready' within 120 s: $(tail -20 "$WORK/rec/serial.log")"
FP_R=$(grep -o 'fingerprint: sha256:[0-9a-f]*' "$WORK/rec/serial.log" | head -1 | cut -d' ' -f2)
log "recovery appliance ready $(guest_seconds_since_start) s after power-on"

truncate -s 16M "$WORK/src/disk0.img"
host_protected_vm1 "$NS" 10.0.3.15 "$FP_R"
P_PID=$AGENT_PID
head -c 16M /dev/urandom >"$WORK/data.img"
in_ns nbdcopy --flush "$WORK/data.img" "nbd://127.0.0.1:$NBD_PORT/disk0" || fail "nbdcopy into the protected agent failed"
host_checkpoint "$NS" cp1
WANT=$(sha256sum <"$WORK/data.img" | cut -d' ' -f1)
log "16 MiB written through the protected agent; checkpoint 'cp1' in the recovery journal"

rec() { guest_console rec root "$PASSWORD" "$1" | tr -d '\r'; }
# target_of TEXT: the IQN of the first iscsi:// URI in TEXT.
target_of() { grep -o "iscsi://$PORTAL:3260/[^ ]*/0" <<<"$1" | head -1 | sed "s|iscsi://$PORTAL:3260/||; s|/0$||"; }
# lun_sha IQN: the SHA-256 of LUN 0 of IQN, read whole. (QEMU's driver
# asks LIO for GET LBA STATUS, which LIO refuses for its request; QEMU
# then reads everything, which is what is wanted here.)
lun_sha() {
    in_ns qemu-img convert --image-opts "$(lun_opts "$1")" -O raw "$WORK/lun.img" 2>"$WORK/qemu-img.err" ||
        fail "reading $1: $(cat "$WORK/qemu-img.err")"
    sha256sum <"$WORK/lun.img" | cut -d' ' -f1
}
serial_of() { in_ns iscsi-inq -i "$INITIATOR" -e 1 -c 128 "$(url "$GOOD" "$1")" 2>&1 | grep -io "[0-9a-f]\{32\}" | head -1; }
# in_guest: what the appliance holds: its LIO targets and the backend
# identifiers of its kernel NBD devices, one per line.
in_guest() {
    rec "ls /sys/kernel/config/target/iscsi | grep '^iqn'; cat /sys/block/nbd*/backend 2>/dev/null | grep tidemark" |
        grep -a "^iqn\|^tidemark:" || true
}
audit_iscsi() {
    local out
    out=$(rec "tidemark audit --config $CFG | grep 'iscsi targets'")
    grep -q "PASS *iscsi targets *$1 target" <<<"$out" || fail "the audit does not pass $1 target(s): $out"
}

# export_cp1: starts `tidemark export` of cp1 in the guest, in a session of
# its own (the export lasts as long as the command runs); sets out to what
# it printed.
export_cp1() {
    out=$(rec "setsid tidemark export --config $CFG --vpg vm1 --checkpoint cp1 >/tmp/export.out 2>&1 </dev/null &
for i in \$(seq 1 60); do grep -q iscsi:// /tmp/export.out && break; sleep 0.5; done; cat /tmp/export.out")
}

log "export of 'cp1': a read-only LUN"
export_cp1
CP_IQN=$(target_of "$out")
[[ "$CP_IQN" == "$BASE_IQN:cp"* ]] || fail "the export names no iSCSI LUN of its own: $out"
[ "$(lun_sha "$CP_IQN")" = "$WANT" ] || fail "the export LUN does not read back as 'cp1'"
mkdir -p "$WORK/ro"
(cd "$WORK/ro" && in_ns timeout 300 iscsi-test-cu -d -x -i "$INITIATOR" -t ALL.ReadOnly "$(url "$GOOD" "$CP_IQN")" >run.out 2>&1) ||
    fail "iscsi-test-cu ReadOnly: $(tail -20 "$WORK/ro/run.out")"
! grep -q "not write-protected" "$WORK/ro/run.out" || fail "the LUN does not say it is write-protected: $(cat "$WORK/ro/run.out")"
python3 "$ROOT/tests/lib/cunit_results.py" "$WORK/ro/CUnitAutomated-Results.xml" >"$WORK/ro/verdicts"
grep -q "ReadOnly.ReadOnlySBC PASS" "$WORK/ro/verdicts" || fail "writes to the export LUN were not refused: $(cat "$WORK/ro/verdicts")"
[ "$(lun_sha "$CP_IQN")" = "$WANT" ] || fail "the export LUN changed under the refused writes"
log "$CP_IQN reads back as 'cp1'; every write libiscsi sent got DATA PROTECT; unchanged"

log "test failover: a writable LUN whose writes vanish at stop"
out=$(rec "tidemark test-failover start --config $CFG --vpg vm1 --checkpoint cp1")
TEST_IQN=$(target_of "$out")
[ "$TEST_IQN" = "$BASE_IQN:test" ] || fail "the test failover names no iSCSI LUN of its own: $out"
in_ns qemu-io --image-opts "$(lun_opts "$TEST_IQN")" -c "write -P 0x5a 1M 1M" -c "read -P 0x5a 1M 1M" >"$WORK/qio.out" 2>&1 ||
    fail "test failover LUN write/read: $(cat "$WORK/qio.out")"
grep -q "read 1048576/1048576" "$WORK/qio.out" || fail "the test write did not read back: $(cat "$WORK/qio.out")"
cp_serial=$(serial_of "$CP_IQN")
test_serial=$(serial_of "$TEST_IQN")
[ -n "$cp_serial" ] && [ -n "$test_serial" ] && [ "$cp_serial" != "$test_serial" ] ||
    fail "the export and the test failover share a LUN identity: '$cp_serial' '$test_serial'"
audit_iscsi 2
out=$(rec "tidemark status --config $CFG")
grep -q "iSCSI target: *$CP_IQN" <<<"$out" && grep -q "iSCSI target: *$TEST_IQN" <<<"$out" ||
    fail "status does not show both targets: $out"
log "1 MiB written and read back on $TEST_IQN; serials ${cp_serial:0:12}… and ${test_serial:0:12}… differ; audit passes; status shows both targets"

rec "ps | grep '[t]idemark export' | awk '{print \$1}' | xargs kill; tidemark test-failover stop --config $CFG --vpg vm1" >"$WORK/stop.out"
grep -q "discarded" "$WORK/stop.out" || fail "test-failover stop: $(cat "$WORK/stop.out")"
for _ in $(seq 1 25); do [ -z "$(in_guest)" ] && break; sleep 0.2; done
[ -z "$(in_guest)" ] || fail "targets or devices remain after the export ended and the test stopped: $(in_guest)"
audit_iscsi 0
out=$(rec "tidemark test-failover start --config $CFG --vpg vm1 --checkpoint cp1")
[ "$(target_of "$out")" = "$TEST_IQN" ] || fail "the second test failover: $out"
[ "$(lun_sha "$TEST_IQN")" = "$WANT" ] || fail "the test writes survived the stop"
[ "$(serial_of "$TEST_IQN")" != "$test_serial" ] || fail "the second test failover has the first one's LUN identity"
rec "tidemark test-failover stop --config $CFG --vpg vm1" >/dev/null
log "after the stop: no target or device left, audit passes; the next test failover reads as 'cp1' again, with a LUN identity of its own"

log "an export whose agent is killed does not outlive it in LIO"
export_cp1
[ -n "$(target_of "$out")" ] || fail "the second export: $out"
ready=$(grep -c "tidemark recovery ready" "$WORK/rec/serial.log")
rec "kill -9 \$(pidof tidemark); echo killed" | grep -q killed || fail "the agent was not killed"
for _ in $(seq 1 300); do
    [ "$(grep -c "tidemark recovery ready" "$WORK/rec/serial.log")" -gt "$ready" ] && break
    sleep 0.2
done
[ "$(grep -c "tidemark recovery ready" "$WORK/rec/serial.log")" -gt "$ready" ] ||
    fail "the agent did not start again: $(tail -20 "$WORK/rec/serial.log")"
[ -z "$(in_guest)" ] || fail "the dead agent's export is still there: $(in_guest)"
audit_iscsi 0
log "restarted: the export's target and device are gone, audit passes"

log "verify-checkpoint: the file systems at a checkpoint, checked in place"
# A GPT disk with one ext4 partition (1 MiB to 15 MiB) holding 40 files,
# made without mounting anything.
mkdir -p "$WORK/tree"
for i in $(seq 1 40); do head -c $((i * 997)) /dev/urandom | base64 >"$WORK/tree/file$i"; done
truncate -s 14M "$WORK/part.img"
mkfs.ext4 -q -F -d "$WORK/tree" "$WORK/part.img" >/dev/null 2>&1 || fail "mkfs.ext4 -d failed"
truncate -s 16M "$WORK/fs.img"
printf 'label: gpt\nstart=2048, size=28672, type=linux\n' | sfdisk -q "$WORK/fs.img" || fail "sfdisk failed"
dd if="$WORK/part.img" of="$WORK/fs.img" bs=1M seek=1 conv=notrunc status=none
in_ns nbdcopy --flush "$WORK/fs.img" "nbd://127.0.0.1:$NBD_PORT/disk0" || fail "nbdcopy of the ext4 disk failed"
host_checkpoint "$NS" fs-clean
# Then group 0's inode table overwritten, as a bad disk or a bug would.
block=$(dumpe2fs -h "$WORK/part.img" 2>/dev/null | sed -n 's/^Block size: *//p')
itable=$(dumpe2fs "$WORK/part.img" 2>/dev/null | sed -n 's/.*Inode table at \([0-9]*\)-.*/\1/p' | head -1)
[ -n "$block" ] && [ -n "$itable" ] || fail "dumpe2fs does not say where the inode table is"
in_ns qemu-io -f raw "nbd://127.0.0.1:$NBD_PORT/disk0" -c "write -P 0xa5 $((1048576 + itable * block)) 32k" -c flush \
    >"$WORK/qio.out" 2>&1 || fail "corrupting the inode table: $(cat "$WORK/qio.out")"
host_checkpoint "$NS" fs-bad
verify() { rec "tidemark verify-checkpoint --config $CFG --vpg vm1 --checkpoint $1; echo exit=\$?"; }
out=$(verify fs-clean)
grep -q "exit=0" <<<"$out" && grep -q "disk0 partition 1 (ext4, 14.0 MiB): clean" <<<"$out" &&
    grep -q "\"fs-clean\": verified" <<<"$out" || fail "the clean ext4 checkpoint is not verified: $out"
out=$(verify fs-bad)
grep -q "exit=65" <<<"$out" && grep -q "partition 1 (ext4, 14.0 MiB): FAILED" <<<"$out" &&
    grep -Eq "e2fsck -fn exit (4|12):" <<<"$out" && grep -qi "inode\|corrupt" <<<"$out" ||
    fail "the damaged inode table was not reported with e2fsck's findings: $out"
out=$(verify cp1)
grep -q "exit=69" <<<"$out" && grep -q "whole volume (unknown contents, 16.0 MiB): not checked" <<<"$out" ||
    fail "a volume of random bytes is not reported as unverifiable: $out"
list=$(rec "tidemark checkpoints --config $CFG --vpg vm1")
grep -Eq "complete +verified +fs-clean" <<<"$list" && grep -Eq "complete +failed +fs-bad" <<<"$list" &&
    grep -Eq "complete +unverifiable +cp1" <<<"$list" || fail "the list does not show the verdicts: $list"
grep -q "^checkers=0" <<<"$(rec "echo checkers=\$(cat /sys/block/nbd*/backend 2>/dev/null | grep -c tidemark-check)")" ||
    fail "a checker's device is still attached"
log "fs-clean verified; fs-bad failed with e2fsck's findings (exit 65); cp1 unverifiable (exit 69); the list shows all three; no device left"
# A verify-checkpoint killed while its checker reads may leave its device
# (nothing is left to detach it): the audit names it, and the next verify
# detaches it.
checker_audit() { rec "tidemark audit --config $CFG | grep 'checker devices'"; }
left=$(rec "tidemark verify-checkpoint --config $CFG --vpg vm1 --checkpoint fs-clean >/dev/null 2>&1 </dev/null & p=\$!; \
for i in \$(seq 1 200); do grep -qs tidemark-check /sys/block/nbd*/backend && break; sleep 0.05; done; \
kill -9 \$p; sleep 2; echo left=\$(cat /sys/block/nbd*/backend 2>/dev/null | grep -c tidemark-check)" | sed -n 's/^left=//p')
if [ "${left:-0}" -gt 0 ]; then
    grep -q "FAIL *checker devices.*tidemark-check:" <<<"$(checker_audit)" ||
        fail "the audit does not name the killed checker's device: $(checker_audit)"
    out=$(verify fs-clean)
    grep -q "exit=0" <<<"$out" || fail "the verify after a killed one failed: $out"
    log "a killed verify left $left device(s): the audit named them, the next verify detached them"
else
    log "a killed verify left no device (the kernel dropped it)"
fi
grep -q "PASS *checker devices" <<<"$(checker_audit)" || fail "the audit does not pass the checker devices: $(checker_audit)"
grep -q "^checkers=0" <<<"$(rec "echo checkers=\$(cat /sys/block/nbd*/backend 2>/dev/null | grep -c tidemark-check)")" ||
    fail "a checker's device is still attached after the next verify"

log "failover: the LUN keeps its writes and identity across a SIGKILL of the agent"
out=$(rec "tidemark failover --config $CFG --vpg vm1 --checkpoint cp1")
[ "$(target_of "$out")" = "$BASE_IQN" ] || fail "the failover names no iSCSI LUN: $out"
in_ns qemu-io --image-opts "$(lun_opts "$BASE_IQN")" -c "write -P 0x77 2M 1M" >"$WORK/qio.out" 2>&1 ||
    fail "failover LUN write: $(cat "$WORK/qio.out")"
printf '\x77%.0s' $(seq 1 1048576) | dd of="$WORK/data.img" bs=1M seek=2 conv=notrunc status=none
WANT=$(sha256sum <"$WORK/data.img" | cut -d' ' -f1)
fo_serial=$(serial_of "$BASE_IQN")
[ -n "$fo_serial" ] && [ "$fo_serial" != "$test_serial" ] && [ "$fo_serial" != "$cp_serial" ] ||
    fail "the failover LUN's identity is not its own: '$fo_serial'"
served=$(grep -c "failed-over volumes served again" "$WORK/rec/serial.log" || true)
rec "kill -9 \$(pidof tidemark); echo killed" | grep -q killed || fail "the agent was not killed"
for _ in $(seq 1 300); do
    [ "$(grep -c "failed-over volumes served again" "$WORK/rec/serial.log" || true)" -gt "$served" ] && break
    sleep 0.2
done
[ "$(grep -c "failed-over volumes served again" "$WORK/rec/serial.log" || true)" -gt "$served" ] ||
    fail "the agent did not serve the failover again: $(tail -20 "$WORK/rec/serial.log")"
[ "$(lun_sha "$BASE_IQN")" = "$WANT" ] || fail "the failover LUN lost its write across the restart"
[ "$(serial_of "$BASE_IQN")" = "$fo_serial" ] || fail "the failover LUN's identity changed across the restart"
[ "$(in_guest)" = "$(printf '%s\ntidemark:vm1/disk0' "$BASE_IQN")" ] ||
    fail "after the restart the appliance holds more than the failover's target and device: $(in_guest)"
audit_iscsi 1
log "after the restart: same identity (${fo_serial:0:12}…), the write is there, audit passes"

log "switch-back: the old site takes reverse protection of the failed-over LUN"
# host_state REGEX SECONDS WHAT: waits until the old site's status matches.
host_state() {
    for _ in $(seq 1 $(($2 * 5))); do
        grep -q "$1" <<<"$("$TIDEMARK" status --config "$WORK/protected.toml" 2>&1)" && return 0
        sleep 0.2
    done
    fail "$3: $("$TIDEMARK" status --config "$WORK/protected.toml" 2>&1)"
}
in_ns "$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vm1 >"$WORK/reverse.out" 2>&1 ||
    fail "reverse: $(cat "$WORK/reverse.out")"
host_state "reverse protection: .*in sync" 120 "reverse protection did not reach sync"
[ "$(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)" = "$WANT" ] ||
    fail "in sync, the old site's volume is not the failed-over LUN's data"
log "old site in sync with the LUN; restarted with a failpoint before its take-back"
kill9 "$P_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="move-back-before-take-back=return" start_agent protected "$NBD_PORT" "$NS"
P_PID=$AGENT_PID
fresh_status_json protected >/dev/null || fail "the restarted old site writes no status"
host_state "reverse protection: .*in sync" 120 "reverse protection did not resume after the restart"
# An operation on the appliance's console a moment before the cut: its
# audit entries must be on the disk, not in the page cache.
rec "tidemark restore --config $CFG --vpg vm1 --checkpoint just-before-the-cut --out /tmp/none" >/dev/null
if in_ns "$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vm1 --wait 120s >"$WORK/move-back.out" 2>&1; then
    fail "move-back ran through the old site's failpoint: $(cat "$WORK/move-back.out")"
fi
guest_stop
gone "$P_PID"
grep -q "switched back" "$WORK/protected.log" && fail "the old site took the VPG back before its failpoint"
log "power cut of the recovery appliance as it finished its part of the switch-back"

mkdir -p "$WORK/rec2"
cp -r "$WORK/rec/cfg" "$WORK/rec2/"
GUEST_DATA=$WORK/rec/data.img GUEST_MEM=768 guest_start rec2 "$NS" "${nics[@]}"
guest_wait rec2 "tidemark recovery ready" 120 || fail "no 'ready' after the power cut: $(tail -20 "$WORK/rec2/serial.log")"
rec2() { guest_console rec2 root "$PASSWORD" "$1" | tr -d '\r'; }
out=$(rec2 "tidemark status --config $CFG")
grep -qi "failed over\|switching back" <<<"$out" && fail "after the power cut the appliance is still failed over: $out"
held=$(rec2 "ls /sys/kernel/config/target/iscsi | grep -c '^iqn'; cat /sys/block/nbd*/backend 2>/dev/null | grep -c tidemark")
[ "$(grep -Ec '^0$' <<<"$held")" -eq 2 ] || fail "after the power cut the appliance still serves the failover: $held"
grep -Eq "complete +[a-z-]+ +move-back" <<<"$(rec2 "tidemark checkpoints --config $CFG --vpg vm1")" ||
    fail "the switch-back's checkpoint is not listed complete: $(rec2 "tidemark checkpoints --config $CFG --vpg vm1")"
guest_restore_sha rec2 move-back
[ "$RESTORED_SHA" = "$WANT" ] || fail "after the power cut, 'move-back' restores to $RESTORED_SHA, not the LUN's data $WANT"
log "rebooted: not failed over, no LUN served, 'move-back' restores equal to the LUN's data"
out=$(rec2 "tidemark audit-log --config $CFG --verify; echo exit=\$?")
grep -q "exit=0" <<<"$out" && grep -q "audit trail intact" <<<"$out" ||
    fail "after the power cut the audit trail does not verify: $out"
trail=$(rec2 "tidemark audit-log --config $CFG")
for op in "failover" "test-failover start" "export"; do
    grep -Eq "root \[admin \(console\)\] from [^:]*: $op \{.* -> ok" <<<"$trail" ||
        fail "after the power cut the audit trail has no finished $op by root: $trail"
done
grep -Eq ": restore \{.*just-before-the-cut.* -> failed" <<<"$trail" ||
    fail "the restore tried a moment before the power cut is not in the audit trail: $trail"
log "the audit trail survived the power cut: intact, with the failover, test failover and export before it"

start_agent protected "$NBD_PORT" "$NS"
for _ in $(seq 1 600); do
    grep -q "switched back VPG" "$WORK/protected.log" && break
    sleep 0.2
done
grep -q "finishing it here" "$WORK/protected.log" && grep -q "switched back VPG" "$WORK/protected.log" ||
    fail "the restarted old site did not finish the switch-back: $(tail -20 "$WORK/protected.log")"
in_ns qemu-io -f raw "nbd://127.0.0.1:$NBD_PORT/disk0" -c "write -P 0x5a 4M 1M" -c flush >"$WORK/qio.out" 2>&1 ||
    fail "the old site takes no writes after the switch-back: $(cat "$WORK/qio.out")"
host_checkpoint "$NS" after-switch-back
guest_restore_sha rec2 after-switch-back
[ "$RESTORED_SHA" = "$(sha256sum <"$WORK/src/disk0.img" | cut -d' ' -f1)" ] ||
    fail "'after-switch-back' does not restore equal to the old site's volume"
log "the old site finished the switch-back by itself, takes writes and replicates forward: 'after-switch-back' restores equal"
guest_stop
log "PASS"
