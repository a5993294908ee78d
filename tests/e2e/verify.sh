#!/usr/bin/env bash
# Online verify (issue 13, item 4): `tidemark verify` compares the volumes
# with the recovery site's image at a fresh checkpoint while fio keeps
# writing. A clean pair reports nothing; one byte flipped in the replica
# (in a region the journal no longer covers) is found, its offset reported,
# and `--repair` resends it: the next verify is clean and the newest
# checkpoint restores equal to the source.
source "$(dirname "$0")/../lib/common.sh"

EXTENT=65536
setup_pair async 1000 disk0:256M
# A journal over 64 MiB applies its oldest history to the replica early.
printf '[[vpg]]\nname = "vpg1"\njournal_limit = "64MiB"\n' >>"$WORK/recovery.toml"
start_recovery
start_protected

verify() { "$TIDEMARK" verify --config "$WORK/protected.toml" --vpg vpg1 "$@"; }
# writer SECONDS: random 64 KiB writes to 128-192 MiB while a verify runs.
writer() {
    timeout -s KILL 120 fio --name=busy --ioengine=nbd --uri="$NBD_URI/disk0" --rw=randwrite --bs=64k \
        --offset=128m --size=64m --time_based --runtime="$1" --rate=8m --iodepth=2 --refill_buffers \
        --randrepeat=0 --output="$WORK/busy.out" >/dev/null 2>&1 &
    WRITER=$!
}

# 1 MiB at 4 MiB, then 160 MiB elsewhere so the applier moves past it.
qemu-io -f raw -c "write -s /dev/urandom 4M 1M" -c flush "$NBD_URI/disk0" >/dev/null 2>&1 ||
    { head -c 1M /dev/urandom >"$WORK/x.bin"; qemu-io -f raw -c "write -s $WORK/x.bin 4M 1M" -c flush "$NBD_URI/disk0" >/dev/null; }
x=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag x --wait 60s | grep -o '[0-9]\{6,\}' | head -1)
[ -n "$x" ] || fail "no checkpoint id for x"
fio --name=fill --ioengine=nbd --uri="$NBD_URI/disk0" --rw=write --bs=1M --iodepth=8 --offset=16m --size=160m \
    --refill_buffers --fsync_on_close=1 --output="$WORK/fill.out" >/dev/null 2>&1 || fail "fio fill failed"
wait_replicated 120
for _ in $(seq 1 300); do [ "$(applied_seq)" -ge "$x" ] && break; sleep 0.2; done
[ "$(applied_seq)" -ge "$x" ] || fail "the replica did not move past checkpoint x ($x): applied $(applied_seq)"
log "the replica holds the 1 MiB at 4 MiB (applied seq $(applied_seq))"

writer 10
out=$(verify 2>&1) || fail "verify of a clean pair failed: $out"
grep -q "0 extents differ" <<<"$out" || fail "a clean pair: $out"
log "clean pair: $(tail -1 <<<"$out")"

# One byte flipped in the replica, inside the region it alone holds now.
flip=$((4 * 1024 * 1024 + 123457))
old=$(od -An -tu1 -j "$flip" -N1 "$JDIR/replica/disk0.img" | tr -d ' ')
printf "\\$(printf '%03o' $(((old + 1) % 256)))" | dd of="$JDIR/replica/disk0.img" bs=1 seek="$flip" conv=notrunc status=none
rc=0
out=$(verify 2>&1) || rc=$?
[ "$rc" = 65 ] || fail "verify with a flipped byte exited $rc (want 65): $out"
want=$((flip / EXTENT * EXTENT))
grep -q "differs: volume disk0 offset $want ($EXTENT bytes)" <<<"$out" || fail "the flipped byte's extent ($want) is not reported: $out"
grep -q "1 extents differ" <<<"$out" || fail "more or less than the one extent reported: $out"
log "flipped byte found: $(grep differs: <<<"$out")"
wait_status protected "last verify: .*1 extents differ"

out=$(verify --repair 2>&1) || fail "verify --repair failed: $out"
grep -q "resent: the recovery site holds these extents from seq" <<<"$out" || fail "repair: $out"
out=$(verify --json 2>&1) || fail "verify after the repair: $out"
[ "$(jq -r .differing_extents <<<"$out")" = 0 ] || fail "after the repair: $out"
[ "$(jq -r .compared_bytes <<<"$out")" -gt $((200 << 20)) ] || fail "compared too little: $out"
log "repaired: the next verify is clean ($(jq -r .changed_extents <<<"$out") extents written meanwhile)"
wait "$WRITER" 2>/dev/null || true

wait_replicated 120
restore_to latest "$WORK/out"
cmp -s "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "the newest checkpoint differs from the source"
log "the newest checkpoint restores equal to the source"

out=$("$TIDEMARK" verify --config "$WORK/protected.toml" --vpg nosuch 2>&1) && fail "verify of an unknown VPG passed"
grep -q 'no VPG "nosuch"' <<<"$out" || fail "unknown VPG: $out"
out=$("$TIDEMARK" verify --config "$WORK/recovery.toml" --vpg vpg1 2>&1) && fail "verify on the recovery side passed"
grep -q "recovery-side config\|protected appliance\|role" <<<"$out" || fail "verify with the recovery config: $out"

# A scheduled verify (verify_interval): its result shows in status.
kill9 "$PROTECTED_PID"
sed -i 's/^checkpoint_interval_ms = 1000$/checkpoint_interval_ms = 1000\nverify_interval = "10s"/' "$WORK/protected.toml"
grep -q '^verify_interval = "10s"' "$WORK/protected.toml" || fail "verify_interval not set in the config"
start_protected
for _ in $(seq 1 150); do
    "$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "last verify: .*0 extents differ" && break
    sleep 0.2
done
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "last verify: .*0 extents differ" ||
    fail "no scheduled verify in status within 30 s: $("$TIDEMARK" status --config "$WORK/protected.toml")"
log "a scheduled verify ran: $("$TIDEMARK" status --config "$WORK/protected.toml" | grep 'last verify')"
