#!/usr/bin/env bash
# End to end: a VPG of two volumes that already hold data (initial copy),
# written by fio and qemu-io, flushed, replicated; restore --checkpoint
# latest equals the source byte for byte. Also checks status and the CLI's
# errors for bad input.
source "$(dirname "$0")/../lib/common.sh"

mkdir -p "$WORK/src"
truncate -s 96M "$WORK/src/sys.img"
head -c 8M /dev/urandom | dd of="$WORK/src/sys.img" bs=1M seek=40 conv=notrunc status=none
truncate -s 48M "$WORK/src/data.img"
setup_pair async 1000 sys:96M data:48M
start_recovery
start_protected

fio --name=seq --ioengine=nbd --uri="$NBD_URI/sys" --rw=write --bs=1M --iodepth=8 --size=16M --offset=0 \
    --fsync_on_close=1 --output="$WORK/fio1.out" >/dev/null 2>&1 || fail "fio seq write failed"
fio --name=rand --ioengine=nbd --uri="$NBD_URI/data" --rw=randwrite --bs=4k --iodepth=32 --size=24M \
    --fsync_on_close=1 --randrepeat=0 --output="$WORK/fio2.out" >/dev/null 2>&1 || fail "fio rand write failed"
qemu-io -f raw -c "write -P 0xee 90M 2M" -c flush "$NBD_URI/sys" >/dev/null
log "fio + qemu-io writes done"

wait_replicated 120
restore_to latest "$WORK/out"
cmp "$WORK/out/sys.img" "$WORK/src/sys.img" || fail "restored sys.img differs"
cmp "$WORK/out/data.img" "$WORK/src/data.img" || fail "restored data.img differs"
log "restore latest == source (cmp) for both volumes"

st=$("$TIDEMARK" status --config "$WORK/protected.toml")
grep -q "VPG vpg1" <<<"$st" || fail "status does not show the VPG: $st"
grep -Eq "state: +(in sync|replicating)" <<<"$st" || fail "status state unexpected: $st"
grep -q "last checkpoint: [0-9]" <<<"$st" || fail "status has no last checkpoint: $st"
grep -q "state: *protected" <<<"$("$TIDEMARK" status --config "$WORK/recovery.toml")" || fail "recovery status not protected"
kill9 "$PROTECTED_PID"
grep -q "NOT RUNNING" <<<"$("$TIDEMARK" status --config "$WORK/protected.toml")" || fail "status calls a killed agent running"
start_protected
log "status on both sides reports the VPG, and a killed agent as not running"

# Bad input: clear errors, nothing written.
expect_error() {
    local want=$1
    shift
    local out
    if out=$("$@" 2>&1); then fail "expected failure from: $*"; fi
    grep -q -- "$want" <<<"$out" || fail "error for '$*' does not mention '$want': $out"
}
expect_error "no checkpoint" "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint 12345 --out "$WORK/x1"
[ ! -e "$WORK/x1/sys.img" ] || fail "a failed restore left files behind"
expect_error "no journal for VPG" "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg nosuch --out "$WORK/x2"
expect_error "already exists\|File exists\|remove it" "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --out "$WORK/out"
expect_error "protected-side config" "$TIDEMARK" restore --config "$WORK/protected.toml" --vpg vpg1 --out "$WORK/x3"
sed 's/^name = "site-a"/name = "site-a"\ncolour = "blue"/' "$WORK/protected.toml" >"$WORK/bad.toml"
expect_error "colour" "$TIDEMARK" protected --config "$WORK/bad.toml"
expect_error "bad.toml" "$TIDEMARK" protected --config "$WORK/bad.toml"
sed 's/^checkpoint_interval_ms = .*/checkpoint_interval_ms = 10/' "$WORK/protected.toml" >"$WORK/bad2.toml"
expect_error "checkpoint_interval_ms" "$TIDEMARK" protected --config "$WORK/bad2.toml"
expect_error "unexpected argument\|Usage" "$TIDEMARK" restore --colour
expect_error "no checkpoint" "$TIDEMARK" verify-checkpoint --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint 12345
# This host's kernel has no NBD client: verification says so and stores nothing.
if [ ! -e /sys/module/nbd ]; then
    expect_error "kernel NBD device.*modprobe nbd" "$TIDEMARK" verify-checkpoint --config "$WORK/recovery.toml" --vpg vpg1
    [ ! -e "$JDIR/verified.json" ] || fail "a verification that could not run stored a verdict"
fi
log "bad input gives clear errors"
