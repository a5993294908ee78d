#!/usr/bin/env bash
# The appliance image beside a minimal Debian 12 system that could run the
# same job, both booted the same way here: QEMU -accel tcg, 512 MiB, one
# virtio disk for the system, a virtio NIC, the serial console read by the
# script. Writes tests/bench/APPLIANCE.md; asserts nothing.
#
# The Debian peer is debootstrap's minbase of bookworm plus what the
# appliance's job needs on a general-purpose system (systemd as init, the
# same cloud kernel, OpenSSH, iptables, e2fsprogs, ifupdown), from the same
# package mirror. It is lighter than Debian's official cloud image (no
# cloud-init, no grub: QEMU loads its kernel directly, which spares it the
# BIOS and boot loader the appliance goes through), so the ratios favour
# Debian. Its root is cached in build/bench-cache/ after the first run.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36500
source tests/lib/common.sh
source tests/lib/appliance.sh
OUT=tests/bench/APPLIANCE.md
CACHE=$ROOT/build/bench-cache
appliance_image_check

log "1/3 a minimal Debian 12 root (debootstrap minbase + systemd, cloud kernel, OpenSSH, iptables)"
mkdir -p "$CACHE"
DEB_TAR=$CACHE/debian-min.tar
if [ ! -f "$DEB_TAR" ]; then
    rm -rf "$CACHE/debian-root"
    debootstrap --variant=minbase \
        --include=systemd-sysv,linux-image-cloud-amd64,initramfs-tools,openssh-server,iptables,e2fsprogs,ifupdown,procps \
        bookworm "$CACHE/debian-root" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 ||
        fail "debootstrap failed: $(tail -5 "$CACHE/debootstrap.log")"
    tar -C "$CACHE/debian-root" -cf "$DEB_TAR" .
    rm -rf "$CACHE/debian-root"
fi
D=$WORK/debian
mkdir -p "$D"
tar -C "$D" -xf "$DEB_TAR"
echo debian-min >"$D/etc/hostname"
echo "/dev/vda / ext4 defaults 0 1" >"$D/etc/fstab"
printf 'auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet static\n    address 10.0.2.15/24\n' \
    >"$D/etc/network/interfaces"
# Reports once the system has settled, as the appliance's bundle does.
cat >"$D/usr/local/bin/bench-report" <<'SH'
#!/bin/sh
exec >/dev/console 2>&1
sleep 10
echo "BENCH-MEM $(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {print t - a}' /proc/meminfo)"
SH
chmod 0755 "$D/usr/local/bin/bench-report"
cat >"$D/etc/systemd/system/bench-report.service" <<'UNIT'
[Unit]
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/bin/bench-report
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/bench-report.service "$D/etc/systemd/system/multi-user.target.wants/bench-report.service"
deb_pkgs=$(chroot "$D" dpkg-query -W -f='${Status}\n' | grep -c "install ok installed")
kernel=$(ls "$D"/boot/vmlinuz-* | head -1)
initrd=$(ls "$D"/boot/initrd.img-* | head -1)
cp "$kernel" "$WORK/deb-vmlinuz"
cp "$initrd" "$WORK/deb-initrd"
deb_root_kib=$(du -sk --apparent-size "$D" | cut -f1)
mksquashfs "$D" "$WORK/deb-root.squashfs" -comp xz -all-root -noappend -no-progress -quiet >/dev/null
truncate -s 2G "$WORK/deb-disk.img"
mke2fs -q -F -t ext4 -d "$D" "$WORK/deb-disk.img"
qemu-img convert -O vmdk -o subformat=streamOptimized "$WORK/deb-disk.img" "$WORK/deb-system.vmdk"

# count_commands ROOT: "ELF-files commands" in the root's bin and sbin
# directories, each directory once (Debian's /bin is a link to /usr/bin).
count_commands() {
    local root=$1 elf=0 all=0 f d
    for d in $(for d in bin sbin usr/bin usr/sbin; do [ -d "$root/$d" ] && realpath "$root/$d"; done | sort -u); do
        for f in "$d"/*; do
            [ -e "$f" ] || [ -L "$f" ] || continue
            all=$((all + 1))
            [ -f "$f" ] && [ ! -L "$f" ] && [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] && elf=$((elf + 1))
        done
    done
    echo "$elf $all"
}
read -r deb_elf deb_cmds < <(count_commands "$D")

log "2/3 boot both under TCG: seconds to the login prompt, memory in use once settled"
qemu_guest deb-guest "" \
    -kernel "$WORK/deb-vmlinuz" -initrd "$WORK/deb-initrd" -append "root=/dev/vda rw console=ttyS0 net.ifnames=0" \
    -drive "file=$WORK/deb-disk.img,format=raw,if=virtio" \
    -netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0
guest_wait deb-guest "debian-min login:" 300 || fail "Debian did not reach a login prompt: $(tail -5 "$WORK/deb-guest/serial.log")"
deb_login=$(guest_seconds_since_start)
guest_wait deb-guest "BENCH-MEM" 120 || fail "Debian did not report its memory"
deb_mem_kib=$(sed -n 's/.*BENCH-MEM \([0-9]*\).*/\1/p' "$WORK/deb-guest/serial.log" | head -1)
guest_stop

NS=tmbench$$
guest_netns "$NS" tap0
TOKEN=bench-token-0123456789abcdef0123
ovf_env "$WORK/app/cfg/ovf-env.xml" tidemark.role=recovery tidemark.hostname=tm-bench \
    tidemark.mgmt.address=10.0.2.15/24 tidemark.mgmt.networks=10.0.2.9/32 tidemark.diag.token=$TOKEN \
    tidemark.peer.address=10.0.2.2 \
    tidemark.peer.fingerprint=sha256:0000000000000000000000000000000000000000000000000000000000000000
guest_start app "$NS" -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0
guest_wait app "tm-bench login:" 300 || fail "the appliance did not reach a login prompt"
app_login=$(guest_seconds_since_start)
guest_wait app "tidemark recovery ready" 60 || fail "the appliance did not get ready"
app_ready=$(guest_seconds_since_start)
sleep 10
guest_bundle "$NS" 10.0.2.9 10.0.2.15 "$TOKEN" "$WORK/bundle"
facts=$(find "$WORK/bundle" -name system.txt | head -1)
app_mem_kib=$(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} END {print t - a}' "$facts")
app_rss_kib=$(bundle_agent_rss_kib "$WORK/bundle")
guest_stop

log "3/3 sizes and counts"
mkdir -p "$WORK/app-root"
unsquashfs -q -f -d "$WORK/app-root" "$IMAGE/root.squashfs" >/dev/null
app_root_kib=$(du -sk --apparent-size "$WORK/app-root" | cut -f1)
read -r app_elf app_cmds < <(count_commands "$WORK/app-root")
app_pkgs=$(grep -cv '^#\|^$' image/packages.txt)
# The OVA `make ova` made from this image (packed again only if older).
OVA=$ROOT/build/ova/tidemark.ova
[ "$OVA" -nt "$IMAGE/disk.img" ] || ova/package.sh >/dev/null
app_ova=$(stat -c %s "$OVA")
app_vmdk=$(tar -tvf "$OVA" system.vmdk | awk '{print $3}')
deb_vmdk=$(stat -c %s "$WORK/deb-system.vmdk")
app_sq=$(stat -c %s "$IMAGE/root.squashfs")
deb_sq=$(stat -c %s "$WORK/deb-root.squashfs")

mib() { python3 -c "print('%.1f' % ($1 / 1048576))"; }
ROWS=()
row() { # figure appliance debian unit
    local ratio
    ratio=$(python3 -c "print('%.2f' % ($2 / $3) if $3 else 'n/a')")
    echo "BENCH appliance_$1 $2 $4 peer=$3 ratio=$ratio"
    ROWS+=("| $1 | $2 $4 | $3 $4 | $ratio |")
}
row system_vmdk_streamoptimized "$(mib "$app_vmdk")" "$(mib "$deb_vmdk")" MiB
row root_filesystem_unpacked "$(mib $((app_root_kib * 1024)))" "$(mib $((deb_root_kib * 1024)))" MiB
row root_squashfs_xz "$(mib "$app_sq")" "$(mib "$deb_sq")" MiB
row boot_to_login_tcg "$app_login" "$deb_login" s
row memory_in_use_settled "$(mib $((app_mem_kib * 1024)))" "$(mib $((deb_mem_kib * 1024)))" MiB
row packages "$app_pkgs" "$deb_pkgs" ""
row elf_executables "$app_elf" "$deb_elf" ""
row commands_in_path "$app_cmds" "$deb_cmds" ""
{
    echo "# The appliance beside a minimal Debian 12"
    echo
    echo "Written by \`make bench\` (tests/bench/appliance.sh) on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores."
    echo "Both boot under QEMU -accel tcg with 512 MiB and a virtio disk and NIC. Debian is debootstrap's"
    echo "minbase of bookworm + systemd, the same cloud kernel, OpenSSH, iptables, e2fsprogs, ifupdown, with"
    echo "its kernel loaded directly by QEMU (no BIOS or boot loader; the appliance boots through both)."
    echo "Memory in use: MemTotal - MemAvailable about 10 s after the system settled. Packages: Debian"
    echo "packages installed, or for the appliance the packages its files are taken from."
    echo
    echo "Appliance alone: OVA $(mib "$app_ova") MiB; boot to \"tidemark ready\" ${app_ready} s;"
    echo "idle \`tidemark\` (recovery role) VmRSS $(mib $((app_rss_kib * 1024))) MiB."
    echo
    echo "| figure | appliance | minimal Debian 12 | ratio |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"
log "wrote $OUT"
