#!/bin/sh
# Buildroot post-build: the same fix-ups image/build.sh makes to the
# overlay. $1 is the target directory.
set -eu
TARGET=$1
ln -sf /run/tidemark/securetty "$TARGET/etc/securetty"
ln -sfn /run/root "$TARGET/root"
chmod 0600 "$TARGET/etc/shadow"
mkdir -p "$TARGET/var/lib/tidemark" "$TARGET/mnt/config"
{
    echo "NAME=Tidemark appliance"
    echo "VERSION=$("$TARGET/usr/bin/tidemark" --version 2>/dev/null | awk '{print $2}' || echo unknown)"
    echo "BUILT_BY=buildroot"
} >"$TARGET/etc/tidemark-release"
