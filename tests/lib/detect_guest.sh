# The guest of the detection tests: the appliance's kernel and initramfs
# (busybox, the disk drivers) with tests/guest/attack-init.sh as its /init,
# its disk the protected agent's NBD export disk0. Source after
# appliance.sh.

# detect_guest_start NAME KERNEL_ARGS [VOLUME...]: boots it with the
# protected agent's exports VOLUME... (default disk0) as vda, vdb, ...
# (serial log in $WORK/NAME/serial.log).
detect_guest_start() {
    local name=$1 args=$2 g=$WORK/guest-root volume drives=()
    shift 2
    for volume in "${@:-disk0}"; do
        drives+=(-drive "file=$NBD_URI/$volume,format=raw,if=virtio,cache=none")
    done
    [ -f "$IMAGE/vmlinuz" ] && [ -f "$IMAGE/initrd.img" ] || fail "no image: run make image"
    if [ ! -f "$WORK/guest-initrd.img" ]; then
        mkdir -p "$g"
        (cd "$g" && gzip -dc "$IMAGE/initrd.img" | cpio -idm --quiet)
        cp "$ROOT/tests/guest/attack-init.sh" "$g/init"
        chmod +x "$g/init"
        (cd "$g" && find . | sort | cpio -o -H newc --quiet | gzip -1) >"$WORK/guest-initrd.img"
    fi
    GUEST_MEM=256 qemu_guest "$name" "" -kernel "$IMAGE/vmlinuz" -initrd "$WORK/guest-initrd.img" \
        -append "console=ttyS0 panic=-1 quiet $args" "${drives[@]}"
}

# detector_alert [VPG]: the protected side's alert (on VPG, default the
# first), empty if none.
detector_alert() {
    status_json protected | jq -r --arg v "${1:-}" '[.vpgs[] | select($v == "" or .name == $v)][0].alert // empty'
}

# wait_alert SECONDS [VPG]: true once the protected side shows an alert
# (on VPG).
wait_alert() {
    for _ in $(seq 1 $(($1 * 5))); do
        [ -n "$(detector_alert "${2:-}")" ] && return 0
        sleep 0.2
    done
    return 1
}
