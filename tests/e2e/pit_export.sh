#!/usr/bin/env bash
# Point-in-time export: `tidemark export` serves every volume of the VPG as
# it was at a checkpoint, read-only over NBD, from replica + journal. For
# checkpoints before and after the applier moved the replica (1-minute
# window), `qemu-img compare` against `tidemark restore` of the same
# checkpoint finds them identical, while writes keep replicating. Writes to
# the export are refused (EPERM); the export holds the applier back while
# it is open; bad requests are clear errors that change nothing.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
setup_pair async 1000 disk0:64M disk1:16M
printf '[exports]\nlisten = "127.0.0.1:%s"\n[[vpg]]\nname = "vpg1"\nhistory = "1min"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60

# Writes with checkpoints between: random 1 MiB chunks on both volumes.
write_round() {
    local n=$1 v off
    for v in disk0 disk1; do
        off=$(( (RANDOM % 15) * 1048576 ))
        head -c 1M /dev/urandom >"$WORK/chunk"
        qemu-io -f raw -c "write -s $WORK/chunk $off 1M" "$NBD_URI/$v" >/dev/null || fail "write failed"
    done
    qemu-io -f raw -c "write -z $(( (n % 8) * 4096 * 3 )) 8k" "$NBD_URI/disk0" >/dev/null || fail "zero write failed"
    "$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "pit-$n" --wait 30s >/dev/null ||
        fail "checkpoint pit-$n failed"
}
for n in 1 2 3; do write_round "$n"; done

# compare_export CHECKPOINT: export and restore agree, volume by volume.
compare_export() {
    local cp=$1 out uris i=0
    rm -rf "$WORK/r"
    restore_to "$cp" "$WORK/r"
    "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$cp" >"$WORK/export.out" 2>>"$WORK/export.err" &
    local export_pid=$!
    PIDS+=("$export_pid")
    for _ in $(seq 1 100); do grep -q "nbd://" "$WORK/export.out" && [ "$(grep -c nbd:// "$WORK/export.out")" = 2 ] && break; sleep 0.1; done
    mapfile -t uris < <(grep -o 'nbd://[^ ]*' "$WORK/export.out")
    [ "${#uris[@]}" = 2 ] || fail "export of $cp printed no URIs: $(cat "$WORK/export.out" "$WORK/export.err")"
    for v in disk0 disk1; do
        uri=$(printf '%s\n' "${uris[@]}" | grep "/vpg1/$v/")
        out=$(qemu-img compare -f raw -F raw "$WORK/r/$v.img" "$uri" 2>&1) ||
            fail "export of $cp differs from its restore on $v: $out"
    done
    EXPORT_PID=$export_pid
    EXPORT_URI=$(printf '%s\n' "${uris[@]}" | grep "/vpg1/disk0/")
}
stop_export() {
    kill "$EXPORT_PID"
    wait "$EXPORT_PID" 2>/dev/null || true
}

log "export = restore for tagged checkpoints and latest, before any apply"
for cp in pit-1 pit-3 latest; do compare_export "$cp"; stop_export; done

log "the export is read-only"
compare_export pit-2
out=$(qemu-io -f raw -c "write -P 0x55 0 4k" "$EXPORT_URI" 2>&1) && grep -qv "error\|failed\|Permission\|read-only\|Operation not permitted" <<<"$out" &&
    fail "a write to a point-in-time export succeeded: $out"
grep -qi "permission\|read-only\|not permitted" <<<"$out" || fail "unclear refusal of a write to the export: $out"
compare_export_again() { out=$(qemu-img compare -f raw -F raw "$WORK/r/disk0.img" "$EXPORT_URI" 2>&1) || fail "export changed after a refused write: $out"; }
compare_export_again
info=$(nbdinfo "$EXPORT_URI" 2>&1) || fail "nbdinfo failed: $info"
grep -q "is_read_only: true" <<<"$info" || fail "the export is not advertised read-only: $info"

log "an open export holds the applier at its checkpoint while writes go on (window 1 min)"
pinned=$(awk '/serving checkpoint/ {print $3}' "$WORK/export.out")
# Past the window: the pinned checkpoint is over a minute old.
started=$(date +%s)
n=4
while [ $(($(date +%s) - started)) -lt 68 ]; do write_round "$n"; n=$((n + 1)); sleep 1; done
last=$((n - 1))
applied=$(jq -r '.applied_seq' "$JDIR/apply.json" 2>/dev/null || echo 0)
[ "$applied" -le "$pinned" ] || fail "the applier moved the replica to $applied past the open export's checkpoint $pinned"
grep -q "held past the window by an open export" <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" ||
    fail "status does not say an export holds the history"
compare_export_again
stop_export
for _ in $(seq 1 50); do
    applied=$(jq -r '.applied_seq' "$JDIR/apply.json" 2>/dev/null || echo 0)
    [ "$applied" -gt "$pinned" ] && break
    sleep 0.2
done
[ "$applied" -gt "$pinned" ] || fail "the applier did not move on after the export closed"
log "replica moved to seq $applied once the export closed"

log "after the apply: export = restore for the oldest and newest checkpoints in the window"
oldest=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json | jq -r '.[0].id')
for cp in "$oldest" "pit-$last"; do compare_export "$cp"; stop_export; done

log "bad requests"
expect_error() {
    local what=$1 pattern=$2
    shift 2
    out=$(timeout 20 "$@" 2>&1) && fail "$what was accepted: $out"
    grep -q "$pattern" <<<"$out" || fail "$what: unclear error: $out"
}
expect_error "unknown VPG" "no journal for VPG" "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg nosuch --checkpoint latest
expect_error "unknown checkpoint" "has no checkpoint" "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint no-such-tag
expect_error "expired checkpoint" "older than the history window" "$TIDEMARK" export --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint 1
expect_error "export from the protected side" "runs on the recovery appliance" "$TIDEMARK" export --config "$WORK/protected.toml" --vpg vpg1
[ -z "$(ls "$JDIR/leases" 2>/dev/null)" ] || fail "refused exports left leases behind: $(ls "$JDIR/leases")"
log "PASS"
