#!/usr/bin/env bash
# Installs what `make demo`, `make test` and `make bench` need on a fresh
# Debian 12 root shell: the NBD clients and tools the tests drive, and the
# musl toolchain pieces for the static binary. Idempotent and quiet when
# everything is already there.
set -euo pipefail

packages=(qemu-utils libnbd-bin nbdkit fio zstd musl-tools python3 jq e2fsprogs iproute2 file procps psmisc gcc make curl ca-certificates iptables nmap dropbear-bin openssh-client tar rsync
    qemu-system-x86 xorriso squashfs-tools cpio binutils
    syslinux syslinux-common mtools dosfstools fdisk debootstrap patch xz-utils
    libiscsi-bin qemu-block-extra
    chromium chromium-driver python3-selenium)
# Two passes: installing one package can remove another that conflicts
# with it (a backported qemu-utils goes when Debian's qemu-system-x86
# comes); the second pass puts back Debian's matching version.
for pass in 1 2; do
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || break
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    [ "$pass" = 1 ] && apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: no Rust toolchain found; installing rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi
