#!/usr/bin/env bash
# Reverse protection / failback. A 64 MiB volume of random data is
# replicated and failed over to a tagged checkpoint; the old site also
# holds one write after that checkpoint. 1 % of the extents (10 of 1024)
# then change on the recovered side. `tidemark reverse` on the old site
# compares 64 KiB extent hashes and receives only what differs: at most
# 2 % of the volume on the wire, and both sides end identical (the old
# site's unreplicated write is undone). New writes on the recovered side
# keep flowing back, also after the old site's agent is SIGKILLed and
# restarted (it resumes without a new hash pass), and after the recovery
# agent is: the first write it takes when it serves the volume again
# reaches the old site.
source "$(dirname "$0")/../lib/common.sh"

EXPORT_PORT=$((PORT_BASE + 6))
EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
SIZE=$((64 << 20))
mkdir -p "$WORK/src"
head -c "$SIZE" /dev/urandom >"$WORK/src/disk0.img"
setup_pair async 1000 disk0:64M
printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 90
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag failback-base --wait 30s >/dev/null || fail "checkpoint failed"
qio_check "$NBD_URI/disk0" "write -P 0x5a 40M 64k" # after the checkpoint: the old site only
wait_replicated 30

log "failover to 'failback-base'; 1 % of extents change on the recovered side"
failover_to failback-base
# Ten whole extents with distinct random data (nothing for zstd to share).
args=()
for i in $(seq 0 9); do
    head -c 64K /dev/urandom >"$WORK/change-$i"
    args+=("write -s $WORK/change-$i $((i * 97 * 65536)) 64k")
done
qio_check "$EXPORTS/vpg1/disk0" "${args[@]}" "flush"

out=$("$TIDEMARK" reverse --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "reverse from the recovery config ran"
grep -q "runs on the protected appliance" <<<"$out" || fail "unclear error: $out"
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg nosuch 2>&1) && fail "reverse of an unknown VPG ran"
grep -q "no VPG" <<<"$out" || fail "unclear error: $out"

log "reverse"
out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 120s) || fail "reverse failed: $out"
echo "$out"
pct=$(sed -n 's/.*(\([0-9.]*\)%).*/\1/p' <<<"$out")
[ -n "$pct" ] || fail "reverse did not report the bytes sent: $out"
awk -v p="$pct" 'BEGIN {exit !(p <= 2.0)}' || fail "reverse sent ${pct}% of the volume for a 1% change (limit 2%)"
echo "failback bytes: ${pct}% of the volume for 1% of extents changed" >"$WORK/failback-ratio"
cmp=$(qemu-img compare -f raw -F raw "$WORK/src/disk0.img" "$EXPORTS/vpg1/disk0" 2>&1) ||
    fail "after reverse the sites differ: $cmp"
wait_status protected "reverse protection: .*in sync"

log "new writes on the recovered side flow back"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x31 8M 1M" "write -z 12M 256k"
same_within 15 "$EXPORTS/vpg1/disk0"
out=$(qemu-io -f raw -c "write -P 2 0 512" "$NBD_URI/disk0" 2>&1) && fail "the old site took a write under reverse protection"

log "SIGKILL the old site's agent; it resumes without a new hash pass"
kill9 "$PROTECTED_PID"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x32 20M 1M"
start_protected
same_within 30 "$EXPORTS/vpg1/disk0"
qio_check "$EXPORTS/vpg1/disk0" "write -P 0x33 30M 512k"
same_within 15 "$EXPORTS/vpg1/disk0"
grep -q "need_hashes=false" "$WORK/protected.log" || fail "the restarted reverse session hashed the volumes again"

log "SIGKILL the recovery agent 3 times; each time the first write it takes is sent back"
# A client waits for the export to reappear and writes the moment it does:
# the capture that logs writes for the old site must exist before the
# export is served (before, writes in between went to the volume unlogged).
for round in 1 2 3; do
    kill9 "$RECOVERY_PID"
    python3 - "$EXPORT_PORT" "$round" >"$WORK/first-write.out" 2>&1 <<'PY' &
import sys, time
from nbdclient import Client
port, round_ = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 30
while time.time() < deadline:
    try:
        c = Client("127.0.0.1", port, "vpg1/disk0", timeout=2)
    except Exception:
        time.sleep(0.001)
        continue
    c.write(round_ << 20, bytes([0x40 + round_]) * 65536, fua=True)
    print("written", flush=True)
    break
PY
    writer=$!
    start_recovery
    wait "$writer"
    grep -q written "$WORK/first-write.out" || fail "round $round: the first write failed: $(cat "$WORK/first-write.out")"
    same_within 20 "$EXPORTS/vpg1/disk0"
done
log "PASS"
