# The iSCSI appliance tests' common part (tests/e2e/appliance_iscsi.sh and
# tests/bench/iscsi.sh): a protected appliance booted from the image with
# iSCSI on its storage network (three initiators in its ACLs: one that
# must use mutual CHAP, as ESXi is set up, and two allowed one-way CHAP:
# QEMU's iSCSI driver has no setting for mutual, and libiscsi's suite trips
# on LIO's login-response pad with it, docs/iscsi.md),
# the recovery agent on the host, and a plain LIO fileio LUN beside it as
# the reference. Source after common.sh and appliance.sh.

NS=tmiscsi$$
PASSWORD='iscsi console'
# An initiator set up as the runbook says for ESXi: mutual CHAP.
ESX=iqn.2026-12.io.tidemark.test:esx1
# QEMU's iSCSI driver and libiscsi's tools: one-way CHAP.
INITIATOR=iqn.2026-12.io.tidemark.test:host1
# iscsi-test-cu's second I_T nexus (reservations, multipath).
INITIATOR2=iqn.2026-12.io.tidemark.test:host2
CHAP_USER=esxi
CHAP_SECRET=initiator-secret-0123
MUTUAL_USER=tidemark
MUTUAL_SECRET=target-secret-456789
PORTAL=10.0.4.15
IQN=iqn.2026-12.io.tidemark:tidemark:tm-iscsi:vm1
REF_IQN=iqn.2026-12.io.tidemark:reference
in_ns() { ip netns exec "$NS" "$@"; }
url() { echo "iscsi://$1@$PORTAL/$2/0"; }
GOOD="$CHAP_USER%$CHAP_SECRET"
MUTUAL="?target_user=$MUTUAL_USER&target_password=$MUTUAL_SECRET"
# The appliance's OVF properties for all of the above.
ISCSI_PROPERTIES=(tidemark.iscsi.initiators=$ESX,$INITIATOR,$INITIATOR2
    tidemark.iscsi.one_way_chap_initiators=$INITIATOR,$INITIATOR2 tidemark.iscsi.chap_user=$CHAP_USER
    tidemark.iscsi.chap_secret=$CHAP_SECRET tidemark.iscsi.mutual_chap_user=$MUTUAL_USER
    tidemark.iscsi.mutual_chap_secret=$MUTUAL_SECRET)
# storage_nics: QEMU NIC arguments in $nics for the taps mgmt, repl and
# stor of guest_netns (eth0, eth1, eth2: 10.0.2.15, 10.0.3.15, $PORTAL).
storage_nics() {
    nics=()
    for tap in mgmt repl stor; do
        nics+=(-netdev "tap,id=$tap,ifname=$tap,script=no,downscript=no" -device "virtio-net-pci,netdev=$tap")
    done
}
# lun_opts IQN: QEMU's iSCSI driver options for LUN 0 of IQN, one-way CHAP.
lun_opts() {
    echo "driver=iscsi,transport=tcp,portal=$PORTAL:3260,target=$1,lun=0,user=$CHAP_USER,password=$CHAP_SECRET,initiator-name=$INITIATOR"
}

# iscsi_boot_protected [QEMU_ARGS...]: boots the appliance ("prot") with
# the VM disk $WORK/vmdisk.img (64 MiB) as /dev/vdc and QEMU_ARGS (more
# disks), starts the recovery agent, and waits for the iSCSI target. Sets
# nics (for a second boot), PROT_PID and FP_P.
iscsi_boot_protected() {
    appliance_image_check
    guest_netns "$NS" mgmt repl stor
    mkdir -p "$WORK/b" "$WORK/prot/cfg"
    local fp_r
    fp_r=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name recovery-host | tail -n1)
    truncate -s 64M "$WORK/vmdisk.img"
    ovf_env "$WORK/prot/cfg/ovf-env.xml" tidemark.role=protected tidemark.hostname=tm-iscsi \
        tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 \
        tidemark.repl.address=10.0.3.15/24 tidemark.storage.address=$PORTAL/24 \
        tidemark.peer.address=10.0.3.2 tidemark.peer.fingerprint="$fp_r" \
        tidemark.vpgs="vm1:disk0=/dev/vdc" \
        "${ISCSI_PROPERTIES[@]}" tidemark.admin.password_hash="$(openssl passwd -6 -salt iscsisalt "$PASSWORD")"
    storage_nics
    GUEST_MEM=768 protected_guest_with_host_recovery "$NS" -drive "file=$WORK/vmdisk.img,format=raw,if=virtio" \
        "${nics[@]}" "$@"
    for _ in $(seq 1 100); do
        grep -q "iSCSI target configured\|starting the iSCSI front-end\|is not served" "$WORK/prot/serial.log" && break
        sleep 0.2
    done
    grep -q "iSCSI target configured" "$WORK/prot/serial.log" || fail "no iSCSI target: $(tail -30 "$WORK/prot/serial.log")"
}

# iscsi_reference_lun GUEST BACKING: a plain LIO fileio LUN ($REF_IQN) on
# BACKING in GUEST (a file it creates, 64 MiB, or a block device), with the
# same portal and CHAP as Tidemark's for the one-way initiators (no mutual
# credentials on their ACLs), write-through (no buffered I/O: O_DSYNC, WCE=0).
iscsi_reference_lun() {
    local setup out
    setup="T=/sys/kernel/config/target; B=\$T/core/fileio_0/ref; G=\$T/iscsi/$REF_IQN/tpgt_1
[ -b $2 ] || truncate -s 64M $2; mkdir -p \$B && echo fd_dev_name=$2,fd_dev_size=67108864 >\$B/control
echo 1 >\$B/enable && echo 1 >\$B/attrib/emulate_tpu && echo 1 >\$B/attrib/emulate_tpws
mkdir -p \$G/lun/lun_0 && ln -s \$B \$G/lun/lun_0/ref
echo 1 >\$G/attrib/authentication && echo 0 >\$G/attrib/generate_node_acls
for i in $INITIATOR $INITIATOR2; do A=\$G/acls/\$i; mkdir -p \$A/lun_0 && ln -s \$G/lun/lun_0 \$A/lun_0/lun
printf %s $CHAP_USER >\$A/auth/userid; printf %s $CHAP_SECRET >\$A/auth/password; done
mkdir \$G/np/$PORTAL:3260 && echo 1 >\$G/enable && echo reference-ready"
    out=$(guest_console "$1" root "$PASSWORD" "$setup" | tr -d '\r')
    grep -q reference-ready <<<"$out" || fail "the reference LUN could not be set up: $out"
}
