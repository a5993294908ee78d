# Helpers for tests that boot the appliance image (`make image`) under QEMU
# with -accel tcg. Source after common.sh. Each guest has a work dir
# $WORK/NAME holding its configuration CD (cfg/ → cfg.iso), its data disk
# and its serial console log.

IMAGE=${IMAGE:-$ROOT/build/image}

appliance_image_check() {
    [ -f "$IMAGE/SHA256SUMS" ] || fail "no image: run make image"
    (cd "$IMAGE" && sha256sum -c --quiet SHA256SUMS) || fail "image files do not match SHA256SUMS"
}

# guest_netns NS TAP...: network namespace NS (removed at exit) with one
# tap per guest NIC, in NIC order: the i-th (from 0) is 10.0.(2+i).2/24,
# the peer's side of the guest's 10.0.(2+i).15; the first also holds
# 10.0.2.9, the management station.
guest_netns() {
    local ns=$1 net=2 tap
    shift
    ip netns add "$ns"
    CLEANUP_HOOKS+=("ip netns del $ns")
    ip netns exec "$ns" ip link set lo up
    for tap in "$@"; do
        ip netns exec "$ns" ip tuntap add "$tap" mode tap
        ip netns exec "$ns" ip addr add "10.0.$net.2/24" dev "$tap"
        ip netns exec "$ns" ip link set "$tap" up
        net=$((net + 1))
    done
    ip netns exec "$ns" ip addr add 10.0.2.9/24 dev "$1"
}

# ovf_env FILE KEY=VALUE...: the OVF environment ESXi attaches on the
# CD-ROM (ISO transport), with these properties.
ovf_env() {
    local file=$1 kv
    shift
    mkdir -p "$(dirname "$file")"
    {
        echo '<?xml version="1.0" encoding="UTF-8"?>'
        echo '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="">'
        echo '  <PlatformSection><Kind>QEMU</Kind></PlatformSection>'
        echo '  <PropertySection>'
        for kv in "$@"; do
            printf '    <Property oe:key="%s" oe:value="%s"/>\n' "${kv%%=*}" "${kv#*=}"
        done
        echo '  </PropertySection>'
        echo '</Environment>'
    } >"$file"
}

# guest_start NAME NETNS [QEMU_ARGS...]: boots a guest (in network
# namespace NETNS unless it is empty) from $GUEST_SYSTEM (default: the
# image's disk.img, read-only) with $GUEST_DATA as its data disk (default:
# a fresh copy of the image's empty one), $WORK/NAME/cfg (or the ISO
# $GUEST_CFG_ISO) as its CD-ROM,
# and QEMU_ARGS (NICs, more disks). Sets GUEST_PID and GUEST_START.
guest_start() {
    local name=$1 netns=$2 dir=$WORK/$1
    shift 2
    local system=${GUEST_SYSTEM:-file=$IMAGE/disk.img,format=raw} data=${GUEST_DATA:-$dir/data.img}
    local iso=${GUEST_CFG_ISO:-$dir/cfg.iso}
    if [ -z "${GUEST_CFG_ISO:-}" ]; then
        xorriso -as mkisofs -quiet -V TIDEMARK-CFG -o "$iso" "$dir/cfg" 2>/dev/null || fail "xorriso failed"
    fi
    [ -f "$data" ] || cp --sparse=always "$IMAGE/data.img" "$data"
    qemu_guest "$name" "$netns" \
        -drive "$system,if=virtio,readonly=on" \
        -drive "file=$data,format=raw,if=virtio" \
        -drive "file=$iso,media=cdrom,if=ide" \
        "$@"
}

# qemu_guest NAME NETNS QEMU_ARGS...: any guest (the appliance through
# guest_start, or a peer OS for comparison) under TCG with $GUEST_MEM MiB,
# its serial console logged to $WORK/NAME/serial.log and on a socket to
# type on (tests/lib/console.py). Sets GUEST_PID and GUEST_START.
qemu_guest() {
    local name=$1 netns=$2 dir=$WORK/$1
    shift 2
    mkdir -p "$dir"
    local run=()
    [ -n "$netns" ] && run=(ip netns exec "$netns")
    GUEST_START=$(date +%s.%N)
    # debug-threads: the vCPU threads are named ("CPU 0/TCG"), so a bench can
    # tell the guest's CPU from QEMU's device emulation (tests/bench/lib.sh).
    "${run[@]}" qemu-system-x86_64 -accel tcg -m "${GUEST_MEM:-512}" -nodefaults -display none -no-reboot \
        -name "$name,debug-threads=on" \
        -chardev "socket,id=con,path=$dir/console.sock,server=on,wait=off,logfile=$dir/serial.log" -serial chardev:con \
        "$@" >"$dir/qemu.log" 2>&1 &
    GUEST_PID=$!
    disown "$GUEST_PID"
    PIDS+=("$GUEST_PID")
}

# guest_console NAME USER PASSWORD COMMAND: logs in on the guest's serial
# console and prints what COMMAND printed; status 3 if the login is refused.
guest_console() {
    python3 "$ROOT/tests/lib/console.py" "$WORK/$1/console.sock" login "$2" "$3" "$4"
}

# guest_wait NAME REGEX SECONDS: true once the serial console shows REGEX;
# fails the test at once if QEMU exits.
guest_wait() {
    local dir=$WORK/$1
    for _ in $(seq 1 $(($3 * 5))); do
        grep -q "$2" "$dir/serial.log" 2>/dev/null && return 0
        kill -0 "$GUEST_PID" 2>/dev/null || fail "QEMU exited: $(cat "$dir/qemu.log")"
        sleep 0.2
    done
    return 1
}

# guest_seconds_since_start: wall time since guest_start, one decimal.
guest_seconds_since_start() {
    python3 -c "import time; print('%.1f' % (time.time() - $GUEST_START))"
}

guest_stop() { kill9 "$GUEST_PID"; }

# guest_bundle NETNS SOURCE_IP GUEST_IP TOKEN DIR: fetches the diagnostics
# bundle over HTTPS from SOURCE_IP and unpacks it into DIR.
guest_bundle() {
    local netns=$1 src=$2 ip=$3 token=$4 dir=$5
    mkdir -p "$dir"
    ip netns exec "$netns" curl -sk --max-time 60 --interface "$src" -o "$dir.tar.zst" \
        -H "Authorization: Bearer $token" "https://$ip:4005/bundle" ||
        fail "the diagnostics bundle could not be fetched from the guest"
    tar --zstd -xf "$dir.tar.zst" -C "$dir" || fail "the bundle does not unpack"
}

# bundle_audit_passes DIR WHO: fails the test unless the unpacked bundle in
# DIR holds the guest's `tidemark audit` with no FAIL; prints the number
# of PASS items.
bundle_audit_passes() {
    local audit
    audit=$(find "$1" -name audit.txt | head -1)
    [ -n "$audit" ] || fail "the bundle of $2 holds no audit: $(find "$1" -type f)"
    if grep -q "^FAIL" "$audit"; then
        fail "tidemark audit in $2: $(grep "^FAIL" "$audit")"
    fi
    grep -c "^PASS" "$audit" || true
}

# bundle_agent_rss_kib DIR: the agent's resident set when the bundle was
# asked for, from the unpacked bundle's system.txt.
bundle_agent_rss_kib() {
    local facts
    facts=$(find "$1" -name system.txt | head -1)
    [ -n "$facts" ] || fail "the bundle holds no system.txt"
    awk '/^VmRSS:/ {print $2; exit}' "$facts"
}

# protected_guest_with_host_recovery NETNS QEMU_ARGS...: boots the
# protected appliance "prot" (its OVF environment in $WORK/prot/cfg, its
# peer at 10.0.3.2) in NETNS with QEMU_ARGS, then the recovery agent on the
# host (keys in $WORK/b, $WORK/recovery.toml) pinned to the fingerprint the
# guest prints, and waits for the guest's "ready". Sets PROT_PID and FP_P.
protected_guest_with_host_recovery() {
    local netns=$1
    shift
    guest_start prot "$netns" "$@"
    PROT_PID=$GUEST_PID
    guest_wait prot "fingerprint: sha256:" 120 || fail "no fingerprint on the console: $(tail -20 "$WORK/prot/serial.log")"
    FP_P=$(grep -o 'fingerprint: sha256:[0-9a-f]*' "$WORK/prot/serial.log" | head -1 | cut -d' ' -f2)
    cat >"$WORK/recovery.toml" <<TOML
$(recovery_head recovery-host "$WORK/b" 10.0.3.2 "$FP_P")
[logging]
dir = "$WORK/b/logs"
TOML
    start_agent recovery 4007 "$netns"
    guest_wait prot "tidemark protected ready" 120 || fail "no 'ready' within 120 s: $(tail -30 "$WORK/prot/serial.log")"
}

# host_protected_vm1 NETNS PEER FINGERPRINT [TOML]: the protected agent on
# the host in NETNS (keys in $WORK/a, config $WORK/protected.toml, NBD on
# 127.0.0.1:$NBD_PORT) protecting VPG vm1, volume disk0 =
# $WORK/src/disk0.img, for the recovery appliance at PEER; TOML (tables)
# goes before the VPG.
host_protected_vm1() {
    cat >"$WORK/protected.toml" <<TOML
$(protected_head protected-host "$WORK/a" "127.0.0.1:$NBD_PORT" "$2" "$3")
${4:-}
[logging]
dir = "$WORK/a/logs"
[[vpg]]
name = "vm1"
[[vpg.volume]]
name = "disk0"
path = "$WORK/src/disk0.img"
TOML
    start_agent protected "$NBD_PORT" "$1"
}

# guest_restore_sha NAME TAG: restores vm1 at TAG inside guest NAME (root,
# password $PASSWORD, on its serial console) and leaves disk0's SHA-256 in
# RESTORED_SHA.
guest_restore_sha() {
    local out
    out=$(guest_console "$1" root "$PASSWORD" "rm -rf /tmp/r; tidemark restore --config /run/tidemark/tidemark.toml --vpg vm1 --checkpoint '$2' --out /tmp/r >/tmp/restore.out 2>&1 && sha256sum /tmp/r/disk0.img || cat /tmp/restore.out; rm -rf /tmp/r" | tr -d '\r')
    RESTORED_SHA=$(awk '/disk0.img$/ {print $1}' <<<"$out")
    [ -n "$RESTORED_SHA" ] || fail "restore of '$2' in the guest failed: $out"
}

# host_checkpoint NETNS TAG: a checkpoint of vm1 tagged TAG, taken on the
# host's protected agent once its initial copy is in the stream (a
# checkpoint before that is partial), that the recovery journal holds.
host_checkpoint() {
    local state
    for _ in $(seq 1 600); do
        state=$("$TIDEMARK" status --json --config "$WORK/protected.toml" 2>/dev/null | jq -r '.vpgs[0].state // ""')
        grep -Eq '^(in sync|replicating|bitmap|resync)' <<<"$state" && break
        sleep 0.2
    done
    grep -Eq '^(in sync|replicating|bitmap|resync)' <<<"$state" ||
        fail "the host's protected agent did not finish its initial copy within 120 s: $state"
    ip netns exec "$1" "$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vm1 --tag "$2" --wait 120s \
        >"$WORK/checkpoint.out" 2>&1 || fail "checkpoint '$2': $(cat "$WORK/checkpoint.out")"
    grep -q "in the recovery journal" "$WORK/checkpoint.out" ||
        fail "checkpoint '$2' was not acknowledged: $(cat "$WORK/checkpoint.out")"
}
