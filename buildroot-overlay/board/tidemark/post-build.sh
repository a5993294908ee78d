#!/bin/sh
# Buildroot post-build: the same fix-ups image/build.sh makes to the
# overlay. $1 is the target directory.
set -eu
TARGET=$1
for f in securetty shadow resolv.conf hosts; do
    rm -f "$TARGET/etc/$f"
    ln -s "/run/tidemark/$f" "$TARGET/etc/$f"
done
ln -sfn /run/root "$TARGET/root"
mkdir -p "$TARGET/var/lib/tidemark" "$TARGET/mnt/config"
{
    echo "NAME=Tidemark appliance"
    echo "VERSION=$("$TARGET/usr/bin/tidemark" --version 2>/dev/null | awk '{print $2}' || echo unknown)"
    echo "BUILT_BY=buildroot"
} >"$TARGET/etc/tidemark-release"
