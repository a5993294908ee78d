#!/bin/sh
# Buildroot post-image: the same system disk as the offline builder
# (image/mkdisk.sh: MBR + syslinux, FAT boot partition with bzImage, the
# squashfs root as partition 2, mounted by PARTUUID since this kernel has
# its disk drivers built in), the empty data disk (image/mkdata.sh), then
# the OVA packager.
# $BINARIES_DIR holds bzImage and rootfs.squashfs.
set -eu
: "${BINARIES_DIR:?run from Buildroot}"
TOP=$BR2_EXTERNAL_TIDEMARK_PATH/..
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$TOP" log -1 --format=%ct 2>/dev/null || echo 1767225600)}
export SOURCE_DATE_EPOCH
cp "$BINARIES_DIR/bzImage" "$BINARIES_DIR/vmlinuz"
cp "$BINARIES_DIR/rootfs.squashfs" "$BINARIES_DIR/root.squashfs"
"$TOP/image/mkdisk.sh" "$BINARIES_DIR/disk.img" "$BINARIES_DIR/vmlinuz" "$BINARIES_DIR/root.squashfs"
"$TOP/image/mkdata.sh" "$BINARIES_DIR/data.img"
(cd "$BINARIES_DIR" && sha256sum vmlinuz root.squashfs disk.img data.img >SHA256SUMS)
TIDEMARK=$TARGET_DIR/usr/bin/tidemark OVA_OUT=$BINARIES_DIR "$TOP/ova/package.sh" "$BINARIES_DIR"
