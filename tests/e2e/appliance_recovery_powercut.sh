#!/usr/bin/env bash
# The core promise under a real power cut on the recovery side: what the
# recovery appliance acknowledged is never lost (the protected side drops
# its log up to that acknowledgement, so nobody else holds it any more).
# - A recovery appliance booted from the image (QEMU, -accel tcg), its NIC a
#   tap in a namespace of ours; the protected agent runs on the host in
#   that namespace, as its peer 10.0.2.2, pinned to the fingerprint the
#   guest printed on its console.
# - The hypervisor writes 32 MiB of random data through the protected
#   agent's NBD export and flushes; `tidemark checkpoint --tag before-cut`
#   returns once the recovery journal holds that checkpoint, and the
#   protected side's status shows everything acknowledged.
# - The recovery guest loses power (QEMU gets SIGKILL) the moment the
#   checkpoint command returns: whatever the guest kernel had not written to
#   its data disk is gone. Rebooted on the same data disk, it keeps its key;
#   the protected agent, which never stopped, reconnects and goes on.
# - On the guest's serial console root restores `before-cut`: its SHA-256
#   is the data's. Then 8 MiB more arrive, and a later tagged checkpoint
#   restores as well: replication goes on from where the journal was.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"

appliance_image_check
NS=tmrcut$$
guest_netns "$NS" tap0
NBD_PORT=10809
PASSWORD='recovery console'
NBD=nbd://127.0.0.1:$NBD_PORT/disk0

mkdir -p "$WORK/a" "$WORK/src" "$WORK/rec/cfg"
FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name protected-host | tail -n1)
ovf_env "$WORK/rec/cfg/ovf-env.xml" tidemark.role=recovery tidemark.hostname=tm-rec \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
    tidemark.peer.address=10.0.2.2 tidemark.peer.fingerprint="$FP_A" \
    tidemark.admin.password_hash="$(openssl passwd -6 -salt cutsalt "$PASSWORD")"
boot() {
    guest_start "$1" "$NS" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0
}

log "boot a recovery appliance"
boot rec
guest_wait rec "tidemark recovery ready" 120 || fail "no 'ready' within 120 s: $(tail -20 "$WORK/rec/serial.log")"
FP_R=$(grep -o 'fingerprint: sha256:[0-9a-f]*' "$WORK/rec/serial.log" | head -1 | cut -d' ' -f2)
log "recovery appliance ready $(guest_seconds_since_start) s after power-on; fingerprint $FP_R"

truncate -s 32M "$WORK/src/disk0.img"
host_protected_vm1 "$NS" 10.0.2.15 "$FP_R" "$(printf '[log]\ncapacity_bytes = 268435456')"

log "the hypervisor writes 32 MiB through the protected agent and flushes; checkpoint 'before-cut'"
head -c 32M /dev/urandom >"$WORK/data.img"
ip netns exec "$NS" nbdcopy --flush "$WORK/data.img" "$NBD" || fail "nbdcopy into the protected agent failed"
host_checkpoint "$NS" before-cut
guest_stop
log "power cut of the recovery appliance as the checkpoint was acknowledged"
st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
# The tagged checkpoint (and so every write before it) was acknowledged
# before the cut. Not the log's head: an automatic checkpoint may be
# appended between the tag's acknowledgement and the cut.
tag_seq=$(sed -n 's/^checkpoint \([0-9]*\) "before-cut".*/\1/p' "$WORK/checkpoint.out")
acked_seq=$(jq -r '.vpgs[0].acked_seq' <<<"$st")
[ -n "$tag_seq" ] && [ "$acked_seq" -ge "$tag_seq" ] 2>/dev/null ||
    fail "the protected side had not 'before-cut' acknowledged before the cut (checkpoint $tag_seq, acked $acked_seq)"

mkdir -p "$WORK/rec2"
cp -r "$WORK/rec/cfg" "$WORK/rec2/"
GUEST_DATA=$WORK/rec/data.img boot rec2
guest_wait rec2 "tidemark recovery ready" 120 || fail "no 'ready' after the power cut: $(tail -20 "$WORK/rec2/serial.log")"
grep -q "fingerprint: $FP_R" "$WORK/rec2/serial.log" || fail "the recovery appliance's key did not survive the power cut"
want=$(sha256sum <"$WORK/data.img" | cut -d' ' -f1)
guest_restore_sha rec2 before-cut
[ "$RESTORED_SHA" = "$want" ] || fail "after the power cut, 'before-cut' restores to sha256 $RESTORED_SHA, not the data's $want"
log "rebooted; 'before-cut' restored in the guest equals the 32 MiB written (sha256 ${want:0:16}…)"

log "replication goes on: 8 MiB more, checkpoint 'after-cut'"
head -c 8M /dev/urandom | dd of="$WORK/data.img" bs=1M seek=12 conv=notrunc status=none
ip netns exec "$NS" nbdcopy --flush "$WORK/data.img" "$NBD" || fail "nbdcopy after the reboot failed"
host_checkpoint "$NS" after-cut
want=$(sha256sum <"$WORK/data.img" | cut -d' ' -f1)
guest_restore_sha rec2 after-cut
[ "$RESTORED_SHA" = "$want" ] || fail "'after-cut' restores to sha256 $RESTORED_SHA, not the data's $want"
log "'after-cut' restored in the guest equals the data"
guest_stop
log "PASS"
