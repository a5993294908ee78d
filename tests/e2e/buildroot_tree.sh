#!/usr/bin/env bash
# The Buildroot external tree, checked statically (Buildroot itself cannot
# be downloaded here): every file it names exists, the defconfig uses the
# tree's package, overlay and board scripts and the pieces the appliance
# needs, Config.in sources the package, the package builds the agent crate
# with the cargo infrastructure, the kernel fragment has the virtual
# hardware, and the overlay's init only runs what exists, with logins on
# the console lines only. Then board/tidemark/post-image.sh, run the way
# Buildroot runs it (on the offline image's kernel and root), writes the
# system disk through image/mkdisk.sh, the data disk and the OVA.
source "$(dirname "$0")/../lib/common.sh"

T=$ROOT/buildroot-overlay
cd "$T"
grep -qx "name: TIDEMARK" external.desc || fail "external.desc must name the tree TIDEMARK"
grep -q 'include $(sort $(wildcard $(BR2_EXTERNAL_TIDEMARK_PATH)/package/\*/\*.mk))' external.mk ||
    fail "external.mk does not include the packages"
# Every path the tree names through BR2_EXTERNAL_TIDEMARK_PATH exists.
checked=0
while read -r rel; do
    [[ $rel == ../* ]] && continue # outside the tree (the OVA packager, optional)
    [ -e "$T/$rel" ] || fail "the tree names $rel, which does not exist"
    checked=$((checked + 1))
done < <(grep -rhoE '\$\(?BR2_EXTERNAL_TIDEMARK_PATH\)?/[A-Za-z0-9_./-]+' Config.in external.mk configs package board |
    sed -E 's#^\$\(?BR2_EXTERNAL_TIDEMARK_PATH\)?/##; s#/\*.*##' | sort -u)
log "$checked paths named by the tree exist"
grep -q 'source "$BR2_EXTERNAL_TIDEMARK_PATH/package/tidemark/Config.in"' Config.in || fail "Config.in does not source the package"
grep -q '^config BR2_PACKAGE_TIDEMARK$' package/tidemark/Config.in || fail "the package does not define BR2_PACKAGE_TIDEMARK"
grep -q 'select BR2_PACKAGE_HOST_RUSTC' package/tidemark/Config.in || fail "the package does not select the Rust compiler"
grep -q '^\$(eval \$(cargo-package))$' package/tidemark/tidemark.mk || fail "the package does not use cargo-package"
sub=$(sed -n 's/^TIDEMARK_SUBDIR = //p' package/tidemark/tidemark.mk)
grep -q '^name = "tidemark"' "$ROOT/$sub/Cargo.toml" || fail "TIDEMARK_SUBDIR=$sub is not the agent crate"
version=$(sed -n 's/^TIDEMARK_VERSION = //p' package/tidemark/tidemark.mk)
grep -q "^version = \"$version\"" "$ROOT/Cargo.toml" || fail "TIDEMARK_VERSION $version differs from the workspace's"
D=configs/tidemark_defconfig
for want in BR2_x86_64=y BR2_TOOLCHAIN_BUILDROOT_MUSL=y BR2_INIT_BUSYBOX=y BR2_PACKAGE_BUSYBOX=y \
    BR2_PACKAGE_IPTABLES=y BR2_PACKAGE_DROPBEAR=y BR2_PACKAGE_E2FSPROGS=y BR2_PACKAGE_TIDEMARK=y \
    BR2_LINUX_KERNEL=y BR2_TARGET_ROOTFS_SQUASHFS=y \
    'BR2_ROOTFS_OVERLAY="$(BR2_EXTERNAL_TIDEMARK_PATH)/rootfs-overlay"' \
    'BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES="$(BR2_EXTERNAL_TIDEMARK_PATH)/board/tidemark/linux.fragment"'; do
    grep -qxF "$want" "$D" || fail "$D lacks $want"
done
for s in board/tidemark/post-build.sh board/tidemark/post-image.sh rootfs-overlay/etc/init.d/rcS rootfs-overlay/etc/init.d/agent; do
    [ -x "$s" ] || fail "$s is not executable"
    sh -n "$s" || fail "$s does not parse"
done
for opt in VIRTIO_BLK VIRTIO_NET VMXNET3 SCSI_VMW_PVSCSI EXT4_FS SQUASHFS ISO9660_FS IP_NF_FILTER IP6_NF_FILTER \
    CONFIGFS_FS TARGET_CORE TCM_IBLOCK ISCSI_TARGET BLK_DEV_NBD; do
    grep -qx "CONFIG_$opt=y" board/tidemark/linux.fragment || fail "linux.fragment lacks CONFIG_$opt"
done
# The overlay: init runs only scripts that exist; logins on tty1/ttyS0 only.
I=rootfs-overlay/etc/inittab
while IFS=: read -r tty _ action cmd; do
    prog=${cmd%% *}
    case $prog in /etc/*) [ -x "rootfs-overlay$prog" ] || fail "inittab runs $prog, which is not in the overlay" ;; esac
    if [[ $cmd == *getty* ]]; then
        [[ $tty == tty1 || $tty == ttyS0 ]] || fail "inittab starts a getty on $tty"
    fi
done < <(grep -v '^#' "$I" | sed '/^$/d')
grep -q '^root:!' rootfs-overlay/etc/shadow || fail "root must be locked (no default password)"

# post-image.sh as Buildroot runs it, on the offline image's kernel and
# root: the system disk, the data disk and the OVA come out, and the disk
# is laid out for a kernel without initrd (root by PARTUUID).
[ -f "$ROOT/build/image/root.squashfs" ] || fail "no image: run make image"
B=$WORK/br
mkdir -p "$B/images" "$B/target/usr/bin" "$B/host/sbin"
cp "$ROOT/build/image/vmlinuz" "$B/images/bzImage"
cp "$ROOT/build/image/root.squashfs" "$B/images/rootfs.squashfs"
ln -s "$TIDEMARK" "$B/target/usr/bin/tidemark"
ln -s "$(command -v mke2fs)" "$B/host/sbin/mke2fs"
BINARIES_DIR=$B/images TARGET_DIR=$B/target HOST_DIR=$B/host BR2_EXTERNAL_TIDEMARK_PATH=$T \
    board/tidemark/post-image.sh "$B/images" >"$WORK/post-image.log" 2>&1 || fail "post-image.sh failed: $(tail -5 "$WORK/post-image.log")"
for f in disk.img data.img tidemark.ova SHA256SUMS; do
    [ -s "$B/images/$f" ] || fail "post-image.sh did not write $f"
done
disk=$B/images/disk.img
grep -q "label-id: 0x54494445" <<<"$(sfdisk -d "$disk")" || fail "the disk signature is not 54494445 (PARTUUID)"
cmp -s -n 440 "$disk" /usr/lib/syslinux/mbr/mbr.bin || fail "the MBR does not hold syslinux's boot code"
cmp -s -n "$(stat -c %s "$B/images/rootfs.squashfs")" "$B/images/rootfs.squashfs" <(tail -c +$((33 * 1048576 + 1)) "$disk") ||
    fail "partition 2 is not the squashfs root"
cfg=$(mtype -i "$disk@@1M" ::/syslinux.cfg) || fail "no syslinux.cfg on the boot partition"
grep -q "root=PARTUUID=54494445-02 rootfstype=squashfs" <<<"$cfg" || fail "syslinux.cfg does not mount the root by PARTUUID: $cfg"
grep -qi "ldlinux.sys" <<<"$(mdir -a -b -i "$disk@@1M" ::/)" || fail "syslinux is not installed on the boot partition"
log "post-image.sh: system disk (MBR, syslinux, root by PARTUUID), data disk and OVA written"
log "PASS"
