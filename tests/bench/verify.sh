#!/usr/bin/env bash
# What `tidemark verify-checkpoint` costs, in the booted recovery appliance
# (QEMU -accel tcg): a 1 GiB ext4 volume (the file system on the whole
# volume, a few hundred MiB of files) is replicated from the host's protected agent; in the same
# guest, verify-checkpoint (e2fsck -fn through the journal's point-in-time
# view and a read-only kernel NBD device) is timed against e2fsck -fn on a
# plain copy of the same checkpoint (`tidemark restore` to the guest's data
# disk, not timed). Writes tests/bench/VERIFY.md; asserts nothing (the
# machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36700
source tests/lib/common.sh
source tests/lib/appliance.sh
OUT=tests/bench/VERIFY.md
ROUNDS=${VERIFY_ROUNDS:-2}

appliance_image_check
NS=tmverify$$
guest_netns "$NS" mgmt repl
NBD_PORT=10809
PASSWORD='recovery console'
CFG=/run/tidemark/tidemark.toml

mkdir -p "$WORK/a" "$WORK/src" "$WORK/rec/cfg"
FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name protected-host | tail -n1)
ovf_env "$WORK/rec/cfg/ovf-env.xml" tidemark.role=recovery tidemark.hostname=tm-verify \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
    tidemark.repl.address=10.0.3.15/24 tidemark.peer.address=10.0.3.2 tidemark.peer.fingerprint="$FP_A" \
    tidemark.admin.password_hash="$(openssl passwd -6 -salt verifysalt "$PASSWORD")"
# A data disk with room for the journal and a restored copy.
cp --sparse=always "$IMAGE/data.img" "$WORK/rec/data.img"
truncate -s 4G "$WORK/rec/data.img"
resize2fs -f "$WORK/rec/data.img" >/dev/null 2>&1 || fail "resize2fs of the data disk failed"

log "a 1 GiB ext4 volume full of files"
mkdir -p "$WORK/tree"
for d in $(seq 1 12); do
    mkdir -p "$WORK/tree/d$d"
    for f in $(seq 1 40); do head -c $((f * 12000)) /dev/urandom | base64 >"$WORK/tree/d$d/f$f"; done
done
truncate -s 1G "$WORK/fs.img"
mkfs.ext4 -q -F -d "$WORK/tree" "$WORK/fs.img" >/dev/null 2>&1 || fail "mkfs.ext4 -d failed"
truncate -s 1G "$WORK/src/disk0.img"
used=$(du -sm "$WORK/tree" | cut -f1)

log "boot the recovery appliance"
GUEST_MEM=768 GUEST_DATA=$WORK/rec/data.img guest_start rec "$NS" \
    -netdev tap,id=n0,ifname=mgmt,script=no,downscript=no -device virtio-net-pci,netdev=n0 \
    -netdev tap,id=n1,ifname=repl,script=no,downscript=no -device virtio-net-pci,netdev=n1
guest_wait rec "tidemark recovery ready" 120 || fail "no 'ready' within 120 s: $(tail -20 "$WORK/rec/serial.log")"
FP_R=$(grep -o 'fingerprint: sha256:[0-9a-f]*' "$WORK/rec/serial.log" | head -1 | cut -d' ' -f2)
host_protected_vm1 "$NS" 10.0.3.15 "$FP_R"
ip netns exec "$NS" nbdcopy --flush "$WORK/fs.img" "nbd://127.0.0.1:$NBD_PORT/disk0" ||
    fail "writing the volume through NBD failed"
host_checkpoint "$NS" bench
log "replicated; checkpoint 'bench' in the recovery journal"

rec() { guest_console rec root "$PASSWORD" "$1" | tr -d '\r'; }
# seconds COMMAND: how long COMMAND took in the guest (from /proc/uptime).
seconds() {
    rec "sync; echo 3 >/proc/sys/vm/drop_caches; a=\$(cut -d' ' -f1 /proc/uptime); $1 >/tmp/bench.out 2>&1; echo rc=\$? \$a \$(cut -d' ' -f1 /proc/uptime)" |
        sed -n 's/^rc=\([0-9]*\) \([0-9.]*\) \([0-9.]*\)$/\1 \2 \3/p' | awk '{ if ($1 != 0) exit 1; printf "%.1f\n", $3 - $2 }'
}
rec "tidemark restore --config $CFG --vpg vm1 --checkpoint bench --out /var/lib/tidemark/plain >/tmp/restore.out 2>&1; echo restored=\$?" |
    grep -q "restored=0" || fail "restore in the guest failed: $(rec 'cat /tmp/restore.out')"
ROWS=()
for i in $(seq 1 "$ROUNDS"); do
    log "round $i/$ROUNDS"
    v=$(seconds "tidemark verify-checkpoint --config $CFG --vpg vm1 --checkpoint bench") ||
        fail "verify-checkpoint failed: $(rec 'cat /tmp/bench.out')"
    e=$(rec "cat /tmp/bench.out" | sed -n 's/.*e2fsck -fn .*: exit status: 0 in \(.*\)$/\1/p' | head -1)
    p=$(seconds "e2fsck -fn /var/lib/tidemark/plain/disk0.img") || fail "e2fsck on the plain copy failed: $(rec 'cat /tmp/bench.out')"
    ROWS+=("| round $i | $v s (e2fsck itself: $e) | $p s | $(awk -v v="$v" -v p="$p" 'BEGIN { printf "%.2f", p / v }')× |")
    log "verify-checkpoint $v s (e2fsck itself: $e), e2fsck -fn on the plain copy $p s"
done
guest_stop
{
    echo "# verify-checkpoint bench (tests/bench/verify.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), the recovery appliance under QEMU -accel tcg (768 MiB), this machine's 2 cores."
    echo "A 1 GiB volume, ext4 on the whole volume, holding $used MiB of files."
    echo "verify-checkpoint reads the checkpoint through its point-in-time view and a read-only kernel NBD"
    echo "device; the peer is e2fsck -fn on a plain copy of the same checkpoint (restored to a file)"
    echo "in the same guest, each with the guest's page cache dropped first. verify-checkpoint's time includes"
    echo "opening the view, attaching the device and storing the verdict. Ratio: the peer's time over ours"
    echo "(1.00× = as fast as a plain copy)."
    echo
    echo "| | verify-checkpoint | e2fsck -fn, plain copy | ratio |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"
cat "$OUT"
