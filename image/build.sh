#!/usr/bin/env bash
# `make image`: the appliance, built offline from Debian 12 packages and the
# static build/tidemark, with the overlay in buildroot-overlay/rootfs-overlay.
#
# Output in build/image/:
#   vmlinuz       the Debian cloud kernel
#   initrd.img    busybox + the disk modules; mounts the root, switch_root
#   root.squashfs the read-only root: busybox, iptables (legacy), dropbear,
#                 tidemark, the modules in image/modules.txt, the overlay
#   disk.img      the bootable system disk: MBR + syslinux, a FAT boot
#                 partition (kernel, initrd), the squashfs root as
#                 partition 2 (BIOS boot: SeaBIOS in QEMU, ESXi's BIOS)
#   data.img      an empty ext4 data disk (LABEL=tidemark-data)
#   SHA256SUMS
# QEMU can also boot the pieces directly (-kernel/-initrd, root=/dev/vda).
#
# Reproducible: packages are pinned by what apt resolves (recorded in
# build/image/packages.lock), every timestamp is SOURCE_DATE_EPOCH, file
# lists are sorted, squashfs and cpio are written without time or owner
# variation. Two builds from the same inputs give the same SHA256SUMS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${IMAGE_OUT:-$ROOT/build/image}
CACHE=$ROOT/build/image-cache
TIDEMARK=$ROOT/build/tidemark
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1767225600)}
export LC_ALL=C TZ=UTC

[ -x "$TIDEMARK" ] || { echo "image: build/tidemark is missing (make build)" >&2; exit 2; }
for tool in mksquashfs cpio dpkg-deb apt-get mke2fs mkfs.vfat mcopy syslinux sfdisk; do
    command -v "$tool" >/dev/null || { echo "image: $tool is missing (make deps)" >&2; exit 2; }
done
step() { echo "image: $*"; }

step "fetching packages (apt-get download, cached in $CACHE)"
# Package lists may be missing on a fresh machine.
apt-cache policy linux-image-cloud-amd64 | grep -q 'Candidate: [0-9]' || apt-get update -qq
mkdir -p "$CACHE" "$OUT"
mapfile -t wanted < <(grep -v '^#' image/packages.txt | sed '/^$/d')
# The kernel metapackage names the versioned image package.
kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
[ -n "$kernel_pkg" ] || { echo "image: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
wanted=("${wanted[@]/linux-image-cloud-amd64/$kernel_pkg}")
: >"$OUT/packages.lock"
for p in "${wanted[@]}"; do
    v=$(apt-cache policy "$p" | sed -n 's/^ *Candidate: //p')
    echo "$p=$v" >>"$OUT/packages.lock"
done
(cd "$CACHE" && chown _apt . 2>/dev/null || true; apt-get download -q $(sed 's/=/=/' "$OUT/packages.lock") >/dev/null)

STAGE=$(mktemp -d /tmp/tidemark-image.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
X=$STAGE/extracted
R=$STAGE/root
I=$STAGE/initrd
mkdir -p "$X" "$R" "$I"
while IFS== read -r p v; do
    deb=$(ls "$CACHE"/"${p}"_*.deb | grep -F "_$(sed 's/:/%3a/' <<<"$v")_" | head -1)
    dpkg-deb -x "$deb" "$X"
done <"$OUT/packages.lock"
KVER=$(ls "$X/lib/modules")

step "root file system"
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,etc,proc,sys,dev,run,tmp,var/lib/tidemark,var/log,mnt/config}
cp "$X/bin/busybox" "$R/bin/busybox"
# Busybox's applets, less what an appliance must not have (`tidemark audit`
# checks): package managers, cron, and network daemons of its own.
NO_APPLETS=" rpm rpm2cpio dpkg dpkg-deb crontab crond httpd ftpd tftpd telnetd inetd udhcpd dnsd ntpd tcpsvd udpsvd nc ssl_client "
for applet in $("$X/bin/busybox" --list-full | sort); do
    [[ $NO_APPLETS == *" $(basename "$applet") "* ]] && continue
    [ -e "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done
cp "$TIDEMARK" "$R/usr/bin/tidemark"
# iptables, legacy backend: one multi-call binary, IPv4 and IPv6.
cp "$X/usr/sbin/xtables-legacy-multi" "$R/usr/sbin/"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-legacy-multi "$R/usr/sbin/$n"
done
mkdir -p "$R/usr/lib/x86_64-linux-gnu/xtables"
for ext in libxt_conntrack libxt_tcp libxt_udp libxt_state libxt_standard libip6t_icmp6 libipt_icmp libxt_comment; do
    cp "$X/usr/lib/x86_64-linux-gnu/xtables/$ext.so" "$R/usr/lib/x86_64-linux-gnu/xtables/"
done
# Protocol and service names for iptables (netbase).
cp "$X/etc/protocols" "$X/etc/services" "$R/etc/"
cp "$X/usr/sbin/dropbear" "$R/usr/sbin/"
cp "$X/usr/bin/dropbearkey" "$R/usr/bin/"
# The file system checkers `tidemark verify-checkpoint` runs (in place of
# any busybox applet of the same name).
rm -f "$R/usr/sbin/e2fsck" "$R/usr/sbin/xfs_repair"
cp "$X/sbin/e2fsck" "$X/sbin/xfs_repair" "$R/usr/sbin/"
# The shared libraries those need, found through their NEEDED entries.
needed() { objdump -p "$1" 2>/dev/null | awk '/NEEDED/ {print $2}'; }
queue=("$R/usr/sbin/xtables-legacy-multi" "$R/usr/sbin/dropbear" "$R/usr/bin/dropbearkey" "$R/usr/sbin/e2fsck" "$R/usr/sbin/xfs_repair" "$R"/usr/lib/x86_64-linux-gnu/xtables/*.so)
declare -A seen=()
while ((${#queue[@]})); do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    for lib in $(needed "$f"); do
        [ -n "${seen[$lib]:-}" ] && continue
        seen[$lib]=1
        src=$(find "$X/lib/x86_64-linux-gnu" "$X/usr/lib/x86_64-linux-gnu" -maxdepth 1 -name "$lib" | head -1)
        [ -n "$src" ] || { echo "image: $lib (needed by $(basename "$f")) is not in the packages" >&2; exit 1; }
        cp -L "$src" "$R/lib/x86_64-linux-gnu/$lib"
        queue+=("$R/lib/x86_64-linux-gnu/$lib")
    done
done
cp -L "$X/lib64/ld-linux-x86-64.so.2" "$R/lib64/"
# The iSCSI target module in place of the stock one: patched to refuse
# one-way CHAP where mutual CHAP is configured (image/lio-module.sh).
image/lio-module.sh "$KVER" "$(sed -n "s/^$kernel_pkg=//p" "$OUT/packages.lock")" \
    "$X/lib/modules/$KVER/kernel/drivers/target/iscsi/iscsi_target_mod.ko"
# Kernel modules: those listed and what they depend on.
"$X/bin/busybox" depmod -b "$X" "$KVER"
M=lib/modules/$KVER
mkdir -p "$R/$M"
resolve_modules() { # names... -> module paths (relative to $M), deps first
    local name path
    for name in "$@"; do
        path=$(grep -E "(^|/)${name}\.ko:" "$X/$M/modules.dep" | cut -d: -f1)
        [ -n "$path" ] || { grep -q "/${name}.ko$" "$X/$M/modules.builtin" && continue; echo "image: no module $name" >&2; exit 1; }
        for dep in $(grep -E "^${path}:" "$X/$M/modules.dep" | cut -d: -f2); do echo "$dep"; done
        echo "$path"
    done
}
# install_modules ROOT NAMES...: the modules and what they depend on into
# ROOT, with modules.dep for busybox modprobe, and NAMES in ROOT/etc/modules
# (loaded at start).
install_modules() {
    local root=$1 m
    shift
    resolve_modules "$@" >"$STAGE/modules.all"
    mkdir -p "$root/$M" "$root/etc"
    awk '!seen[$0]++' "$STAGE/modules.all" | while read -r m; do
        mkdir -p "$root/$M/$(dirname "$m")"
        cp "$X/$M/$m" "$root/$M/$m"
    done
    cp "$X/$M/modules.builtin" "$X/$M/modules.order" "$root/$M/"
    "$X/bin/busybox" depmod -b "$root" "$KVER"
    printf '%s\n' "$@" >"$root/etc/modules"
}
mapfile -t modules < <(grep -v '^#' image/modules.txt | sed '/^$/d')
install_modules "$R" "${modules[@]}"
# The overlay, then what the build knows.
cp -a buildroot-overlay/rootfs-overlay/. "$R/"
TIDEMARK_BUILT_BY=offline-builder buildroot-overlay/board/tidemark/post-build.sh "$R"
{
    echo "COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "KERNEL=$KVER"
} >>"$R/etc/tidemark-release"

step "initramfs (busybox, disk modules)"
mkdir -p "$I"/{bin,dev,proc,sys,newroot,etc,$M}
cp "$X/bin/busybox" "$I/bin/busybox"
cp image/initramfs-init "$I/init"
chmod 0755 "$I/init"
install_modules "$I" virtio_pci virtio_blk vmw_pvscsi sd_mod ata_piix squashfs

step "writing $OUT"
find "$R" "$I" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
rm -f "$OUT/root.squashfs"
mksquashfs "$R" "$OUT/root.squashfs" -comp xz -all-root -noappend -no-progress -quiet \
    >/dev/null # mkfs and file times come from SOURCE_DATE_EPOCH
(cd "$I" && find . | sort | cpio -o -H newc --reproducible -R 0:0 --quiet | gzip -n -9) >"$OUT/initrd.img"
cp "$X/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
image/mkdata.sh "$OUT/data.img"
step "bootable disk (MBR, syslinux on a FAT boot partition, the squashfs root as partition 2)"
image/mkdisk.sh "$OUT/disk.img" "$OUT/vmlinuz" "$OUT/root.squashfs" "$OUT/initrd.img"
(cd "$OUT" && sha256sum vmlinuz initrd.img root.squashfs disk.img data.img >SHA256SUMS)
step "root $(du -h --apparent-size "$OUT/root.squashfs" | cut -f1), initrd $(du -h --apparent-size "$OUT/initrd.img" | cut -f1), kernel $(du -h --apparent-size "$OUT/vmlinuz" | cut -f1); $(find "$R" -type f | wc -l) files, $(find "$R" -type f -perm -u+x | wc -l) executables"
cat "$OUT/SHA256SUMS"
