#!/usr/bin/env bash
# mkdisk.sh OUT KERNEL ROOT_SQUASHFS [INITRD]: the appliance's bootable
# system disk, for both builders (image/build.sh and Buildroot's
# post-image). An MBR with syslinux's boot code; partition 1 a FAT boot
# partition holding syslinux, the kernel (and the initrd if given);
# partition 2 the squashfs root, byte for byte. SeaBIOS (QEMU) and ESXi's
# BIOS boot it. Without an initrd the kernel mounts the root itself, by the
# partition's PARTUUID, so its disk and squashfs drivers must be built in
# (the Buildroot kernel fragment does that).
#
# Reproducible: every time is SOURCE_DATE_EPOCH, the FAT serial and the
# disk signature are fixed. Tools are taken from $HOST_DIR (Buildroot)
# before PATH; syslinux's MBR from $SYSLINUX_MBR or the usual places.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: mkdisk.sh OUT KERNEL ROOT_SQUASHFS [INITRD]" >&2; exit 2; }
OUT=$1 KERNEL=$2 ROOT_FS=$3 INITRD=${4:-}
[ -n "${HOST_DIR:-}" ] && export PATH=$HOST_DIR/bin:$HOST_DIR/sbin:$PATH
export PATH=$PATH:/usr/sbin:/sbin
: "${SOURCE_DATE_EPOCH:=1767225600}"
DISK_ID=54494445 # "TIDE": the MBR signature, so the root is PARTUUID=54494445-02
BOOT_MIB=32

for tool in mkfs.vfat mcopy syslinux sfdisk; do
    command -v "$tool" >/dev/null || { echo "mkdisk: $tool is missing (Debian: dosfstools mtools syslinux fdisk)" >&2; exit 2; }
done
for f in "$KERNEL" "$ROOT_FS" ${INITRD:+"$INITRD"}; do
    [ -f "$f" ] || { echo "mkdisk: $f does not exist" >&2; exit 2; }
done
mbr=${SYSLINUX_MBR:-}
if [ -z "$mbr" ]; then
    for c in "${BINARIES_DIR:-/nonexistent}/syslinux/mbr.bin" /usr/lib/syslinux/mbr/mbr.bin /usr/share/syslinux/mbr.bin; do
        [ -f "$c" ] && { mbr=$c; break; }
    done
fi
[ -f "$mbr" ] || { echo "mkdisk: syslinux's mbr.bin not found (set SYSLINUX_MBR)" >&2; exit 2; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$KERNEL" "$stage/vmlinuz"
files=("$stage/syslinux.cfg" "$stage/vmlinuz")
if [ -n "$INITRD" ]; then
    cp "$INITRD" "$stage/initrd.img"
    files+=("$stage/initrd.img")
    boot_lines="  INITRD /initrd.img
  APPEND console=tty1 console=ttyS0,115200 quiet panic=-1 nbd.max_part=0"
else
    boot_lines="  APPEND root=PARTUUID=$DISK_ID-02 rootfstype=squashfs ro rootwait console=tty1 console=ttyS0,115200 quiet panic=-1 nbd.max_part=0"
fi
cat >"$stage/syslinux.cfg" <<CFG
DEFAULT tidemark
PROMPT 0
TIMEOUT 0
LABEL tidemark
  KERNEL /vmlinuz
$boot_lines
CFG
touch -d "@$SOURCE_DATE_EPOCH" "${files[@]}"
mkfs.vfat -C -n TIDEMARK -i "$DISK_ID" --invariant "$stage/boot.fat" $((BOOT_MIB * 1024)) >/dev/null
mcopy -m -i "$stage/boot.fat" "${files[@]}" ::/
syslinux --install "$stage/boot.fat"

root_mib=$((($(stat -c %s "$ROOT_FS") + (1 << 20) - 1) >> 20))
rm -f "$OUT"
truncate -s "$((1 + BOOT_MIB + root_mib))M" "$OUT"
sfdisk -q "$OUT" <<PARTS
label: dos
label-id: 0x$DISK_ID
start=1MiB, size=${BOOT_MIB}MiB, type=6, bootable
start=$((1 + BOOT_MIB))MiB, type=83
PARTS
dd if="$mbr" of="$OUT" bs=440 count=1 conv=notrunc status=none
dd if="$stage/boot.fat" of="$OUT" bs=1M seek=1 conv=notrunc status=none
dd if="$ROOT_FS" of="$OUT" bs=1M seek=$((1 + BOOT_MIB)) conv=notrunc status=none
