#!/usr/bin/env bash
# A protected appliance booted from the image (QEMU, -accel tcg) replicates
# a VM disk to a recovery agent on the host, and restores match.
# - The guest has the appliance's three NICs, each on a tap in a network
#   namespace of ours: management (eth0, 10.0.2.15), replication (eth1,
#   10.0.3.15) and storage (eth2, 10.0.4.15). Its OVF environment names the
#   role, the addresses, the peer and its fingerprint, and the VPG: the
#   guest's third disk (/dev/vdc), which already holds 8 MiB of data.
# - The recovery agent runs on the host, in the namespace, pinned to the
#   fingerprint the appliance printed on its console at first boot.
# - The initial copy arrives: its checkpoint restores to the disk as it was.
# - The "hypervisor" (nbdcopy, in the namespace) writes 32 MiB of new data
#   through the appliance's NBD export on the storage network and flushes;
#   the replication link is down meanwhile, and the guest loses power
#   (QEMU gets SIGKILL) the moment the flush returns: the data is only in
#   the appliance's log. Rebooted on the same disks, with the link back, it
#   keeps its key and sends what its log holds: a later checkpoint restores bit-exact to the flushed data, and
#   the guest's disk holds it too.
# - A second power cut, under writes nobody flushed, with the link up: the
#   recovery side has received what the protected log made durable, the
#   guest's page cache (volume writes not yet on the disk) is gone. Rebooted
#   with the link down, 3000 small writes land all over the disk (more
#   records than the cut took from the log) and are flushed; with the link
#   back, a checkpoint restores bit-exact to what the disk holds. (Before:
#   unsynced records were sent, their seqs were reused after the cut and
#   skipped as replays, and the replica kept writes the disk had lost.)
# - The diagnostics bundle from the management station: the protected
#   agent's own audit all PASS, and its resident memory when idle.
# - Bitmap mode under power cuts: with the link down, 224 MiB of flushed
#   writes into the 187 MiB log send the appliance to bitmap mode; the
#   power goes as the flush returns. Rebooted, it finds its dirty regions;
#   with the link back the power goes again as the resync begins;
#   rebooted, a checkpoint restores bit-exact to the disk.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"

appliance_image_check
NS=tmrepl$$
guest_netns "$NS" mgmt repl stor
TOKEN=replicate-test-token-0123456789abcdef
NBD=nbd://10.0.4.15:10809/disk0

mkdir -p "$WORK/b" "$WORK/restored" "$WORK/prot/cfg"
FP_R=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name recovery-host | tail -n1)
truncate -s 32M "$WORK/vmdisk.img"
head -c 8M /dev/urandom | dd of="$WORK/vmdisk.img" conv=notrunc status=none
cp "$WORK/vmdisk.img" "$WORK/before.img"
ovf_env "$WORK/prot/cfg/ovf-env.xml" tidemark.role=protected tidemark.hostname=tm-prot \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
    tidemark.repl.address=10.0.3.15/24 tidemark.storage.address=10.0.4.15/24 \
    tidemark.peer.address=10.0.3.2 tidemark.peer.fingerprint="$FP_R" \
    tidemark.vpgs="vm1:disk0=/dev/vdc" tidemark.diag.token=$TOKEN

log "boot a protected appliance (three NICs, the VM disk as /dev/vdc)"
nics=()
for tap in mgmt repl stor; do # eth0, eth1, eth2 in PCI order
    nics+=(-netdev "tap,id=$tap,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=$tap")
done
protected_guest_with_host_recovery "$NS" -drive "file=$WORK/vmdisk.img,format=raw,if=virtio" "${nics[@]}"
log "protected appliance ready $(guest_seconds_since_start) s after power-on; fingerprint $FP_P"
s=$WORK/prot/serial.log
for iface in "eth0 up with 10.0.2.15/24" "eth1 up with 10.0.3.15/24" "eth2 up with 10.0.4.15/24"; do
    grep -q "$iface" "$s" || fail "not on the console: $iface"
done

# recovery_checkpoint: the newest complete checkpoint of vm1 on the host (0: none).
recovery_checkpoint() {
    status_json recovery | jq -r '.vpgs[] | select(.name == "vm1" and .state == "protected") | .last_checkpoint.id // 0' 2>/dev/null || true
}
# restore_until_equal FILE SECONDS: restores each new checkpoint until one
# matches FILE byte for byte; leaves the seconds it took in RESTORED_AFTER.
restore_until_equal() {
    local want=$1 limit=$2 start last=0 cp
    start=$(date +%s.%N)
    while python3 -c "import sys, time; sys.exit(time.time() - $start > $limit)"; do
        cp=$(recovery_checkpoint)
        if [ -n "$cp" ] && [ "$cp" != 0 ] && [ "$cp" != "$last" ]; then
            last=$cp
            rm -f "$WORK/restored/disk0.img"
            "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vm1 --checkpoint "$cp" --out "$WORK/restored" \
                >"$WORK/restore.out" 2>&1 || fail "restore of checkpoint $cp failed: $(cat "$WORK/restore.out")"
            if cmp -s "$WORK/restored/disk0.img" "$want"; then
                RESTORED_AFTER=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
                return 0
            fi
        fi
        sleep 0.5
    done
    fail "no checkpoint restored equal to $(basename "$want") within $limit s (last tried: $last)"
}

log "the initial copy: a checkpoint restores to the disk as it was"
restore_until_equal "$WORK/before.img" 180
log "initial copy of 32 MiB restored equal $RESTORED_AFTER s after ready"

log "replication link down; the hypervisor writes 32 MiB through NBD on the storage network, then flushes"
ip netns exec "$NS" ip link set repl down
head -c 32M /dev/urandom >"$WORK/after.img"
ip netns exec "$NS" nbdinfo --list nbd://10.0.4.15:10809 >"$WORK/nbdinfo.out" 2>&1 || fail "nbdinfo: $(cat "$WORK/nbdinfo.out")"
grep -q "export=\"disk0\"\|export=disk0" "$WORK/nbdinfo.out" || fail "the appliance does not export disk0: $(cat "$WORK/nbdinfo.out")"
w0=$(date +%s.%N)
ip netns exec "$NS" nbdcopy --flush "$WORK/after.img" "$NBD" || fail "nbdcopy into the appliance failed"
w=$(python3 -c "import time; print('%.1f' % (time.time() - $w0))")
guest_stop
log "32 MiB written through the appliance in ${w} s; power cut (SIGKILL to QEMU) as the flush returned"
cp=$(recovery_checkpoint)
"$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vm1 --checkpoint "$cp" --out "$WORK/cut" >/dev/null 2>&1 ||
    fail "restore of checkpoint $cp failed"
cmp -s "$WORK/cut/disk0.img" "$WORK/after.img" && fail "the new data reached the recovery side although its link was down"
ip netns exec "$NS" ip link set repl up
mkdir -p "$WORK/prot2"
cp -r "$WORK/prot/cfg" "$WORK/prot2/"
GUEST_DATA=$WORK/prot/data.img guest_start prot2 "$NS" -drive "file=$WORK/vmdisk.img,format=raw,if=virtio" "${nics[@]}"
guest_wait prot2 "tidemark protected ready" 120 || fail "no 'ready' after the power cut: $(tail -20 "$WORK/prot2/serial.log")"
grep -q "fingerprint: $FP_P" "$WORK/prot2/serial.log" || fail "the key on the data disk did not survive the power cut"
restore_until_equal "$WORK/after.img" 180
log "rebooted; a checkpoint restored bit-exact to the flushed data $RESTORED_AFTER s after ready"

log "power cut under 16 MiB of unflushed writes, link up"
head -c 16M /dev/urandom >"$WORK/unflushed.bin"
ip netns exec "$NS" nbdcopy "$WORK/unflushed.bin" "$NBD" || fail "nbdcopy (no flush) into the appliance failed"
# Let the recovery side take what it is sent, then cut the power.
prev=0
for _ in $(seq 1 30); do
    cur=$(status_json recovery | jq -r '.vpgs[] | select(.name == "vm1") | .head_seq')
    [ "$cur" = "$prev" ] && break
    prev=$cur
    sleep 0.3
done
guest_stop
ip netns exec "$NS" ip link set repl down
mkdir -p "$WORK/prot3"
cp -r "$WORK/prot/cfg" "$WORK/prot3/"
GUEST_DATA=$WORK/prot/data.img guest_start prot3 "$NS" -drive "file=$WORK/vmdisk.img,format=raw,if=virtio" "${nics[@]}"
guest_wait prot3 "tidemark protected ready" 120 || fail "no 'ready' after the second power cut: $(tail -20 "$WORK/prot3/serial.log")"
log "rebooted with the link down; 3000 writes of 4 KiB all over the disk, flushed"
ip netns exec "$NS" fio --name=after-cut --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=4k --size=32M \
    --number_ios=3000 --end_fsync=1 --randseed=7 >"$WORK/fio.out" 2>&1 || fail "fio after the cut: $(tail -5 "$WORK/fio.out")"
cp "$WORK/vmdisk.img" "$WORK/after-cut.img"
ip netns exec "$NS" ip link set repl up
restore_until_equal "$WORK/after-cut.img" 180
log "a checkpoint restored bit-exact to the disk after the cut $RESTORED_AFTER s after the link came back"

log "the diagnostics bundle, from the management station"
sleep 5
guest_bundle "$NS" 10.0.2.9 10.0.2.15 "$TOKEN" "$WORK/bundle"
bundle_audit_passes "$WORK/bundle" "the protected guest" >"$WORK/audit-pass"
rss=$(bundle_agent_rss_kib "$WORK/bundle")
[ -n "$rss" ] || fail "the bundle does not give the agent's VmRSS"
grep -q "Command: tidemark protected" "$(find "$WORK/bundle" -name system.txt | head -1)" ||
    fail "the bundle was not made by the protected agent"
log "protected appliance: audit $(cat "$WORK/audit-pass") items PASS, none FAIL; idle agent VmRSS $((rss / 1024)) MiB ($rss KiB)"

guest_stop
cmp "$WORK/vmdisk.img" "$WORK/after-cut.img" || fail "the guest's disk changed after the last flush"

# boot_prot NAME: the protected appliance again, on its data disk.
boot_prot() {
    mkdir -p "$WORK/$1"
    cp -r "$WORK/prot/cfg" "$WORK/$1/"
    GUEST_DATA=$WORK/prot/data.img guest_start "$1" "$NS" -drive "file=$WORK/vmdisk.img,format=raw,if=virtio" "${nics[@]}"
    guest_wait "$1" "tidemark protected ready" 120 || fail "no 'ready' ($1): $(tail -20 "$WORK/$1/serial.log")"
}
log "bitmap mode: link down, 224 MiB of flushed writes into the appliance's 187 MiB log"
boot_prot prot4
ip netns exec "$NS" ip link set repl down
ip netns exec "$NS" fio --name=bitmap --ioengine=nbd --uri="$NBD" --rw=randwrite --bs=64k --size=32M --io_size=224M \
    --refill_buffers --end_fsync=1 --randseed=11 >"$WORK/fio-bitmap.out" 2>&1 ||
    fail "fio into the appliance with the link down: $(tail -5 "$WORK/fio-bitmap.out")"
guest_stop
grep -q "bitmap mode: the protected log holds" "$WORK/prot4/serial.log" ||
    fail "the appliance did not go to bitmap mode: $(grep -i "bitmap\|error" "$WORK/prot4/serial.log" | tail -5)"
cp "$WORK/vmdisk.img" "$WORK/bitmap.img"
log "power cut in bitmap mode as the flush returned; rebooted, link up, power cut again once the resync began"
boot_prot prot5
grep -q "dirty map names regions\|volume data are read again" "$WORK/prot5/serial.log" ||
    fail "after the power cut the appliance did not find its dirty regions: $(tail -20 "$WORK/prot5/serial.log")"
ip netns exec "$NS" ip link set repl up
guest_wait prot5 "resync: " 120 || fail "no resync began: $(tail -20 "$WORK/prot5/serial.log")"
guest_stop
if grep -q "resync done" "$WORK/prot5/serial.log"; then
    log "(the resync had already finished when the power went)"
fi
boot_prot prot6
restore_until_equal "$WORK/bitmap.img" 240
log "a checkpoint restored bit-exact to the disk written in bitmap mode $RESTORED_AFTER s after ready"
guest_stop
log "PASS"
