#!/usr/bin/env bash
# `make demo`: two agents on this machine. The protected one serves two VM
# disks over NBD (one holding an ext4 file system with files already on
# it); both are copied to the recovery side, more writes follow, and a
# checkpoint is restored and compared bit for bit with the source.
set -euo pipefail
cd "$(dirname "$0")/.."
T=$PWD/build/tidemark
DEMO=/var/lib/tidemark-demo
if [ -t 1 ]; then
    step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    step() { printf '\n== %s\n' "$*"; }
fi
cleanup() {
    [ -n "${PPID_A:-}" ] && kill "$PPID_A" 2>/dev/null || true
    [ -n "${PPID_B:-}" ] && kill "$PPID_B" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

for port in 4007 4008 10809 10810; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "demo: port $port is already in use (another demo running?)" >&2
        exit 1
    fi
done

step "1. Fresh demo directory $DEMO"
rm -rf "$DEMO"
mkdir -p "$DEMO/disks" "$DEMO/restored"

step "2. Keys: each appliance gets a key pair; the fingerprints are pinned by the peer"
FP_P=$("$T" keygen --dir "$DEMO/protected/keys" --name protected-site | tail -n1)
FP_R=$("$T" keygen --dir "$DEMO/recovery/keys" --name recovery-site | tail -n1)
echo "protected: $FP_P"
echo "recovery:  $FP_R"
sed "s|PROTECTED_FINGERPRINT|$FP_P|" examples/recovery.toml >"$DEMO/recovery.toml"
sed "s|RECOVERY_FINGERPRINT|$FP_R|" examples/protected.toml >"$DEMO/protected.toml"

step "3. VM disks that already hold data: an ext4 file system and a data disk"
mkdir -p "$DEMO/seed/etc" "$DEMO/seed/www"
echo "hello from the protected site" >"$DEMO/seed/www/index.html"
head -c 3M /dev/urandom >"$DEMO/seed/www/blob.bin"
cp /etc/os-release "$DEMO/seed/etc/"
truncate -s 128M "$DEMO/disks/webapp-os.img"
mke2fs -q -t ext4 -d "$DEMO/seed" "$DEMO/disks/webapp-os.img"
truncate -s 64M "$DEMO/disks/webapp-data.img"
ls -l "$DEMO/disks"

step "4. Start the recovery agent (TLS 1.3, mutual auth, ports 4007/4008)"
"$T" recovery --config "$DEMO/recovery.toml" >"$DEMO/recovery.log" 2>&1 &
PPID_B=$!
sleep 0.5
step "5. Start the protected agent (NBD on 127.0.0.1:10809; initial copy starts)"
"$T" protected --config "$DEMO/protected.toml" >"$DEMO/protected.log" 2>&1 &
PPID_A=$!
for i in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/10809) 2>/dev/null && break; sleep 0.1; done
nbdinfo --list nbd://127.0.0.1:10809 | grep -E "^export=|export-size"

step "6. The 'VM' writes through NBD: fio random 4k writes, then qemu-io, with flushes"
fio --name=vm --ioengine=nbd --uri=nbd://127.0.0.1:10809/webapp-data --rw=randwrite --bs=4k --iodepth=32 \
    --size=16M --fsync_on_close=1 --randrepeat=0 --output="$DEMO/fio.out" >/dev/null
grep -E "write: IOPS" "$DEMO/fio.out" | sed 's/^ */fio: /'
qemu-io -f raw -c "write -P 0x5a 40M 4M" -c flush nbd://127.0.0.1:10809/webapp-data | head -1

step "7. Status on both sides"
sleep 6
"$T" status --config "$DEMO/protected.toml"
"$T" status --config "$DEMO/recovery.toml"

step "8. A tagged checkpoint, then the checkpoints on the recovery side (automatic ones every 5 s)"
"$T" checkpoint --config "$DEMO/protected.toml" --vpg webapp --tag "after the fio run"
"$T" checkpoints --config "$DEMO/recovery.toml" --vpg webapp | tail -n 5

step "9. Restore the tagged checkpoint and compare with the source, bit for bit"
"$T" restore --config "$DEMO/recovery.toml" --vpg webapp --checkpoint "after the fio run" --out "$DEMO/restored"
kill "$PPID_A"; wait "$PPID_A" 2>/dev/null || true; PPID_A=
for v in webapp-os webapp-data; do
    cmp "$DEMO/restored/$v.img" "$DEMO/disks/$v.img" && echo "$v: identical ($(sha256sum <"$DEMO/restored/$v.img" | cut -c1-16)...)"
done
e2fsck -fn "$DEMO/restored/webapp-os.img" >/dev/null 2>&1 && echo "webapp-os: e2fsck clean"
debugfs -R "cat /www/index.html" "$DEMO/restored/webapp-os.img" 2>/dev/null | sed 's/^/restored file: /'

step "10. The same checkpoint as a read-only NBD export (replica + journal, nothing copied)"
"$T" export --config "$DEMO/recovery.toml" --vpg webapp --checkpoint "after the fio run" >"$DEMO/export.out" 2>/dev/null &
EXPORT_PID=$!
for _ in $(seq 1 100); do [ "$(grep -c nbd:// "$DEMO/export.out")" = 2 ] && break; sleep 0.1; done
cat "$DEMO/export.out"
for v in webapp-os webapp-data; do
    qemu-img compare -f raw -F raw "$DEMO/restored/$v.img" "nbd://127.0.0.1:10810/webapp/$v/$(awk '/serving checkpoint/ {print $3}' "$DEMO/export.out")" |
        sed "s/^/$v: export vs restore: /"
done
kill "$EXPORT_PID"; wait "$EXPORT_PID" 2>/dev/null || true

"$T" status --config "$DEMO/protected.toml" | head -n 1
step "Done. Files are in $DEMO (configs, logs, restored images)."
