#!/usr/bin/env bash
# NBD conformance with stock clients against the inline capture export:
# qemu-img info, qemu-io patterns, nbdinfo --list, fio's nbd engine with
# crc32c verification at iodepth 32. Replication runs the whole time.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:64M disk1:16M
start_recovery
start_protected

size=$(qemu-img info --output=json "$NBD_URI/disk0" | jq -r '."virtual-size"')
[ "$size" = 67108864 ] || fail "qemu-img info reports size $size, want 67108864"
log "qemu-img info: size $size"

list=$(nbdinfo --list "$NBD_URI")
grep -q 'export="disk0"' <<<"$list" || fail "nbdinfo --list does not list disk0"
grep -q 'export="disk1"' <<<"$list" || fail "nbdinfo --list does not list disk1"
grep -q 'export-size: 16777216' <<<"$list" || fail "nbdinfo --list has the wrong size for disk1"
log "nbdinfo --list: both exports"

qio_check "$NBD_URI/disk0" "write -P 0x5a 0 1M" "write -P 0xa5 -f 4M 64k" "write -z 8M 1M" flush
qio_check "$NBD_URI/disk0" "read -P 0x5a 0 1M" "read -P 0xa5 4M 64k" "read -P 0 8M 1M"
# A wrong pattern must be caught (the check above can fail).
bad=$(qemu-io -f raw -c "read -P 0x77 0 4k" "$NBD_URI/disk0" 2>&1 || true)
grep -qi "pattern verification failed" <<<"$bad" || fail "qemu-io did not notice a wrong pattern"
log "qemu-io: write/read patterns verified (FUA, zeroes, flush)"

# Trim reads back as zeros.
qio_check "$NBD_URI/disk0" "write -P 0x33 2M 128k" "discard 2M 64k"
qio_check "$NBD_URI/disk0" "read -P 0 2M 64k" "read -P 0x33 2112k 64k"
log "trim reads back as zeros"

fio --name=verify --verify_state_save=0 --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=4k --iodepth=32 \
    --size=32M --offset=16M --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
    --output="$WORK/fio.out" >/dev/null 2>&1 || { cat "$WORK/fio.out" >&2; fail "fio nbd verify run failed"; }
grep -q "err= 0" "$WORK/fio.out" || fail "fio reported errors: $(cat "$WORK/fio.out")"
log "fio nbd engine: randwrite 4k iodepth 32, crc32c verify passed"

# Several connections to one export (multi-conn) see each other's writes.
qio_check "$NBD_URI/disk0" "write -P 0x42 60M 64k"
qio_check "$NBD_URI/disk0" "read -P 0x42 60M 64k"

kill -0 "$PROTECTED_PID" || fail "protected agent died"
wait_replicated 120
restore_to latest "$WORK/out"
cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "restored disk0 differs from the source"
cmp "$WORK/out/disk1.img" "$WORK/src/disk1.img" || fail "restored disk1 differs from the source"
log "restore after conformance run matches the source byte for byte"
