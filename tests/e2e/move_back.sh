#!/usr/bin/env bash
# Switch-back (`tidemark move-back`, docs/switch-back.md): failover →
# reverse → move-back ends with the VPG running at the old site, protected
# forward again, without a full copy. Through tests/wanproxy, so the bytes
# of the forward resync are counted. Checked, with real agents:
# - a VM writing at the recovery site while the switch-back runs: every
#   write acknowledged there is on the old site's volume; after the begin
#   every write there is refused (EPERM);
# - the agent killed (failpoint abort, as SIGKILL) at each step, on either
#   side: before the old site asks to finish, and right after the recovery
#   site refuses writes, the VPG stays failed over with reverse protection
#   in sync (`--cancel`, at either site, takes writes there again); after the recovery site
#   recorded that the old site applied everything, after it moved the
#   history aside, and after the old site started its new stream, the
#   restarted agent finishes the switch-back by itself;
# - the recovery site's journal failing to reopen at the very end (a
#   failpoint): `move-back` says to run it again, and run again it reopens
#   the journal and the switch-back ends (no restart needed);
# - after each switch-back: the recovery replica is offered as a checkpoint
#   tagged move-back that restores equal to the old site's volume (no
#   recovery point is lost while the new stream's copy runs); the old site
#   takes writes, the forward resync
#   sends under 1 MiB for a 64 MiB volume of random data (hashes only), and
#   the newest checkpoint restores equal to the old site's volume.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
exported_pair

wire_bytes() { jq -r '.forward_bytes' "$WORK/proxy.json"; }
move_back() { "$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg vpg1 --wait 60s "$@" 2>&1; }
recovery_refuses() {
    local out
    out=$(qemu-io -f raw -c "write -P 9 0 4k" "$EXPORTS/vpg1/disk0" 2>&1) && fail "the recovery site took a write during a switch-back"
    grep -q "Operation not permitted" <<<"$out" || fail "a refused write at the recovery site says: $out"
}
# failover_and_reverse PATTERN: fail over to the newest checkpoint, change
# 1 MiB at the recovery site, and reverse until the old site is in sync.
failover_and_reverse() {
    wait_replicated 90
    out=$("$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest) || fail "failover failed: $out"
    FAILOVER_CP=$(sed -n 's/.* at checkpoint \([0-9]*\) .*/\1/p' <<<"$out" | head -1)
    [ -n "$FAILOVER_CP" ] || fail "the failover's output names no checkpoint: $out"
    for _ in $(seq 1 50); do
        qemu-io -f raw -c "write -P 1 0 512" "$NBD_URI/disk0" >/dev/null 2>&1 || break
        sleep 0.2
    done
    qio_check "$EXPORTS/vpg1/disk0" "write -P $1 $(($1 % 32))M 1M" "flush"
    "$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 120s >/dev/null || fail "reverse failed"
    same_within 20 "$EXPORTS/vpg1/disk0"
}
# switched_back WHAT WIRE_BEFORE: the VPG runs at the old site again,
# protected forward, and the resync sent hashes only.
switched_back() {
    local what=$1 wire
    for _ in $(seq 1 150); do
        grep -q "reverse protection" <<<"$("$TIDEMARK" status --config "$WORK/protected.toml")" || break
        sleep 0.2
    done
    qemu-io -f raw -c "read 0 512" "$EXPORTS/vpg1/disk0" >/dev/null 2>&1 && fail "$what: the recovery site still serves the volume"
    cmp -s "$WORK/src/disk0.img" "$JDIR/replica/disk0.img" || fail "$what: the recovery replica differs from the old site's volume"
    [ -z "$(ls "$JDIR/failover.json" 2>/dev/null)" ] || fail "$what: failover.json is still there"
    # The replica holds what was written after the failover: it is offered
    # as the switch-back's image (tag move-back), not the failover's, and
    # restores equal to the old site's volume.
    out=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 2>&1) || true
    grep "^$FAILOVER_CP " <<<"$out" | grep -q "move-back" ||
        fail "$what: the replica is not offered as the switch-back's checkpoint: $out"
    rm -rf "$WORK/out"
    restore_to "$FAILOVER_CP" "$WORK/out"
    cmp -s "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "$what: the switch-back's checkpoint differs from the old site's volume"
    ls -d "$JDIR"/history-*/reverse-log >/dev/null || fail "$what: the reverse log was not kept in history-*/"
    qio_check "$NBD_URI/disk0" "write -P 0x7e 60M 64k" "flush"
    wait_replicated 90
    wire=$(($(wire_bytes) - $2))
    rm -rf "$WORK/out"
    restore_to latest "$WORK/out"
    cmp -s "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "$what: the newest checkpoint differs from the old site's volume"
    log "$what: switched back; forward resync sent $wire bytes for a 64 MiB volume"
    [ "$wire" -lt $((1 << 20)) ] || fail "$what: the forward resync sent $wire bytes (a full copy?)"
}

# crash_at ROLE FAILPOINT: a switch-back whose ROLE agent (restarted with
# FAILPOINT) dies there; the agent is left stopped, and WIRE0 holds the
# wire bytes from before the switch-back.
crash_at() {
    local role=$1 pid
    if [ "$role" = recovery ]; then kill9 "$RECOVERY_PID"; else kill9 "$PROTECTED_PID"; fi
    AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="$2=return" "start_$role"
    pid=$AGENT_PID
    wait_status protected "reverse protection: .*in sync"
    WIRE0=$(wire_bytes)
    out=$(move_back) && fail "move-back ran through the $role agent's failpoint $2: $out"
    gone "$pid"
}
# crashed_switch_back ROLE FAILPOINT WHAT: crash_at, then the agent restarted
# without the failpoint finishes the switch-back by itself.
crashed_switch_back() {
    crash_at "$1" "$2"
    "start_$1"
    switched_back "$3" "$WIRE0"
}

failover_and_reverse 33
log "refusals"
out=$("$TIDEMARK" move-back --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "move-back ran from the recovery config"
grep -q "runs on the protected appliance" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" move-back --config "$WORK/protected.toml" --vpg nosuch 2>&1) && fail "move-back of an unknown VPG ran"
grep -q "no VPG" <<<"$out" || fail "unclear error: $out"

log "old site killed before it asks the recovery site to finish: still failed over; cancel"
crash_at protected move-back-before-finish
recovery_refuses
wait_status recovery "switching back to the old site"
start_protected
wait_status protected "reverse protection: .*in sync"
out=$(move_back --cancel) || fail "cancel failed: $out"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x41 3M 64k" "flush"
same_within 20 "$EXPORTS/vpg1/disk0"

log "recovery agent killed right after it refused writes: still failed over; cancel"
crash_at recovery move-back-after-refusal
start_recovery
recovery_refuses
# Cancelled at the recovery site this time (as when the old site is gone).
out=$("$TIDEMARK" move-back --cancel --config "$WORK/recovery.toml" --vpg vpg1 2>&1) || fail "cancel at the recovery site failed: $out"
grep -q "take writes again" <<<"$out" || fail "cancel at the recovery site says: $out"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x42 5M 64k" "flush"
same_within 20 "$EXPORTS/vpg1/disk0"

log "a VM writes at the recovery site during the switch-back; the recovery agent is killed after the old site applied everything"
kill9 "$RECOVERY_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="move-back-after-applied=return" start_recovery
wait_status protected "reverse protection: .*in sync"
python3 - "$EXPORT_PORT" >"$WORK/writer.out" 2>&1 <<'PY' &
import sys
from nbdclient import Client
c = Client("127.0.0.1", int(sys.argv[1]), "vpg1/disk0", timeout=10)
for i in range(100000):
    try:
        c.write((48 << 20) + (i % 2048) * 4096, bytes([i % 251 + 1]) * 4096, fua=True)
    except Exception as e:
        print("refused", i, e, flush=True)
        break
    print("acked", i, flush=True)
PY
writer=$!
sleep 1
wire0=$(wire_bytes)
out=$(move_back) && fail "move-back ran through the recovery agent's failpoint: $out"
gone "$RECOVERY_PID"
wait "$writer" || true
grep -q "refused" "$WORK/writer.out" || fail "the writer at the recovery site was never refused: $(tail -3 "$WORK/writer.out")"
grep -q "not permitted\|errno 1\b" "$WORK/writer.out" || fail "the writer's refusal was not EPERM: $(tail -1 "$WORK/writer.out")"
acked=$(grep -c "^acked" "$WORK/writer.out")
[ "$acked" -gt 0 ] || fail "no write was acknowledged before the switch-back began"
start_recovery
python3 - "$WORK/src/disk0.img" "$WORK/writer.out" <<'PY' || fail "a write acknowledged at the recovery site is not on the old site's volume"
import sys
last = {}
for line in open(sys.argv[2]):
    if line.startswith("acked"):
        i = int(line.split()[1])
        last[i % 2048] = i
with open(sys.argv[1], "rb") as f:
    for slot, i in last.items():
        f.seek((48 << 20) + slot * 4096)
        if f.read(4096) != bytes([i % 251 + 1]) * 4096:
            sys.exit("write %d (block %d) is missing" % (i, slot))
PY
switched_back "recovery killed after the old site applied everything ($acked writes acked there)" "$wire0"


failover_and_reverse 34
log "recovery agent killed after it moved the history aside"
crashed_switch_back recovery move-back-after-history "recovery killed after moving the history aside"

failover_and_reverse 35
log "old site killed after its new stream began, before it takes writes"
crashed_switch_back protected move-back-after-new-stream "old site killed after its new stream began"

failover_and_reverse 37
log "the recovery site's journal fails to reopen at the end of a switch-back: asked again, it reopens"
kill9 "$RECOVERY_PID"
AGENT_BIN=$TIDEMARK_TEST FAILPOINTS="move-back-reopen=1*return" start_recovery
wait_status protected "reverse protection: .*in sync"
wire0=$(wire_bytes)
out=$(move_back) && fail "move-back ran through a failed reopening: $out"
grep -q "run \`tidemark move-back\` again" <<<"$out" || fail "unclear error after a failed reopening: $out"
out=$(move_back) || fail "move-back asked again after a failed reopening: $out"
switched_back "the journal reopened when asked again" "$wire0"

failover_and_reverse 36
log "plain switch-back"
wire0=$(wire_bytes)
out=$(move_back) || fail "move-back failed: $out"
echo "$out"
grep -q "switched back VPG \"vpg1\"" <<<"$out" || fail "move-back's output: $out"
out=$(move_back) && fail "a second move-back ran: $out"
grep -q "protected from this site already" <<<"$out" || fail "unclear error: $out"
switched_back "plain switch-back" "$wire0"
log "PASS"
