#!/usr/bin/env bash
# Encryption-attack detection with a real guest. A Linux guest under QEMU
# (TCG; the appliance's kernel and busybox) has an ext4 disk on the
# protected agent's NBD export. It writes 480 ordinary files (logs and
# CSV tables, ~4.5 MiB), prints their MD5 sums, waits 20 s, then encrypts
# every file in place (random bytes over its data, fsync per file) as
# ransomware does. The detector must alert within 30 s of the first
# encrypted write; the recovery site pins the checkpoint before the
# attack as last-clean-<time>; `restore --checkpoint last-clean` gives an
# image that passes `e2fsck -fn` with every file's original checksum; the
# checkpoints after it are listed as suspect. Writing the files raises no
# alarm (they go into free space). With a 64 MiB journal_limit and writes
# going on past it, the pin holds (last-clean still restores); after
# `unpin` the applier moves on; `clear-alert` then clears the alert.
source "$(dirname "$0")/../lib/common.sh"
source "$ROOT/tests/lib/appliance.sh"
source "$ROOT/tests/lib/detect_guest.sh"

SIZE=64M
mkdir -p "$WORK/src"
truncate -s "$SIZE" "$WORK/src/disk0.img"
mkfs.ext4 -q -F -L attacked "$WORK/src/disk0.img"
setup_pair async 1000 disk0:$SIZE
# Short intervals so the test's quiet phase is long enough to learn in.
cat >>"$WORK/protected.toml" <<TOML
[vpg.detection]
interval = "5s"
TOML
printf '[[vpg]]\nname = "vpg1"\njournal_limit = "64MiB"\n' >>"$WORK/recovery.toml"
start_recovery
start_protected
wait_replicated 60

detect_guest_start attack ""
SERIAL=$WORK/attack/serial.log
guest_wait attack "FILES-WRITTEN" 240 || fail "the guest did not write its files: $(tail -5 "$SERIAL")"
grep -q "GUEST-FAIL" "$SERIAL" && fail "guest: $(grep GUEST-FAIL "$SERIAL")"
sed -n '/SUMS-BEGIN/,/SUMS-END/p' "$SERIAL" | tr -d '\r' | grep -E '^[0-9a-f]{32}  ' >"$WORK/sums"
files=$(wc -l <"$WORK/sums")
[ "$files" -eq 480 ] || fail "the guest printed $files checksums, not 480"
log "the guest wrote $files files"
[ -z "$(detector_alert)" ] || fail "an alert while the guest wrote ordinary files: $(detector_alert)"

guest_wait attack "ATTACK-START" 60 || fail "the attack did not start"
start=$(date +%s.%N)
log "the attack starts"
wait_alert 30 || fail "no alert within 30 s of the attack's start"
alert=$(detector_alert)
took=$(python3 -c "import time; print('%.1f' % (time.time() - $start))")
log "alert after ${took} s: $alert"
echo "detection: alert ${took} s after the attack started" >"$WORK/detect-latency"
guest_wait attack "ATTACK-DONE" 240 || fail "the attack did not finish"

# The recovery site pins the checkpoint before the attack.
for _ in $(seq 1 100); do
    grep -q "is pinned at the recovery site" <<<"$(detector_alert)" && break
    sleep 0.2
done
grep -q "is pinned at the recovery site" <<<"$(detector_alert)" || fail "the last clean checkpoint was not pinned: $(detector_alert)"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag after-attack --wait 60s >/dev/null ||
    fail "checkpoint after the attack failed"
list=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 2>"$WORK/list.err")
grep -q "pinned: checkpoint .*(last-clean-" "$WORK/list.err" || fail "the list shows no last-clean pin: $(cat "$WORK/list.err")"
grep -E "suspect +[a-z-]+ +after-attack" <<<"$list" >/dev/null || fail "the checkpoint after the attack is not suspect: $list"
log "checkpoints after the attack are listed as suspect"

restore_to last-clean "$WORK/clean"
e2fsck -fn "$WORK/clean/disk0.img" >"$WORK/fsck.out" 2>&1 || fail "e2fsck of last-clean: $(tail -5 "$WORK/fsck.out")"
mkdir -p "$WORK/out"
while read -r sum path; do
    got=$(debugfs -R "cat /$path" "$WORK/clean/disk0.img" 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$sum" ] || fail "$path at last-clean: md5 $got, the guest wrote $sum"
done <"$WORK/sums"
log "last-clean: e2fsck clean, all $files files as the guest wrote them"
label=$(sed -n 's/.*pinned at the recovery site as "\(last-clean-[^"]*\)".*/\1/p' <<<"$(detector_alert)")
[ -n "$label" ] || fail "the alert names no label: $(detector_alert)"
restore_to "$label" "$WORK/by-label"
cmp -s "$WORK/clean/disk0.img" "$WORK/by-label/disk0.img" || fail "restore of $label differs from last-clean"
log "restore of $label == restore of last-clean"
# And the attack is real: at the newest checkpoint the files are random.
restore_to after-attack "$WORK/after"
path=$(awk 'NR==1 {print $2}' "$WORK/sums")
debugfs -R "cat /$path" "$WORK/after/disk0.img" 2>/dev/null | head -c 4096 | grep -q "INFO request" &&
    fail "the attack did not change $path"
log "the pin holds past the 64 MiB journal limit while writes go on"
pinned=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json | jq -r '[.[] | select(.pinned)][0].id')
qio_check "$NBD_URI/disk0" "write -P 0x61 0 60M" "flush"
qio_check "$NBD_URI/disk0" "write -P 0x62 0 60M" "flush"
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag past-limit --wait 60s >/dev/null ||
    fail "checkpoint past the limit failed"
sleep 3
[ "$(journal_bytes)" -gt $((64 << 20)) ] || fail "the journal ($(journal_bytes) bytes) did not grow past the limit"
[ "$(applied_seq)" -le "$pinned" ] || fail "the replica moved past the pinned checkpoint $pinned: $(applied_seq)"
rm -rf "$WORK/clean"
restore_to last-clean "$WORK/clean"
e2fsck -fn "$WORK/clean/disk0.img" >"$WORK/fsck.out" 2>&1 || fail "e2fsck of last-clean past the limit: $(tail -5 "$WORK/fsck.out")"
head -20 "$WORK/sums" | while read -r sum path; do
    got=$(debugfs -R "cat /$path" "$WORK/clean/disk0.img" 2>/dev/null | md5sum | cut -d' ' -f1)
    [ "$got" = "$sum" ] || fail "$path at last-clean past the limit: md5 $got, not $sum"
done
"$TIDEMARK" unpin --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint last-clean >/dev/null || fail "unpin failed"
for _ in $(seq 1 100); do
    [ "$(applied_seq)" -gt "$pinned" ] && break
    sleep 0.2
done
[ "$(applied_seq)" -gt "$pinned" ] || fail "after the release the applier did not move on"
log "released: the applier moved on (replica at seq $(applied_seq))"
out=$("$TIDEMARK" clear-alert --config "$WORK/protected.toml" --vpg vpg1 2>>"$WORK/cli.log") ||
    fail "clear-alert failed: $(tail -3 "$WORK/cli.log")"
grep -q "alert on VPG vpg1 cleared.*was pinned at the recovery site as \"$label\"" <<<"$out" || fail "clear-alert said: $out"
for _ in $(seq 1 25); do
    [ -z "$(detector_alert)" ] && break
    sleep 0.2
done
[ -z "$(detector_alert)" ] || fail "status still shows the alert after clear-alert: $(detector_alert)"
grep -q "alert cleared by" "$WORK/protected.log" || fail "the agent's log does not say who cleared the alert"
out=$("$TIDEMARK" clear-alert --config "$WORK/protected.toml" --vpg vpg1 2>&1) && fail "a second clear-alert succeeded: $out"
grep -q "has no alert" <<<"$out" || fail "a second clear-alert says: $out"
log "clear-alert: the alert is gone from status, the log names who cleared it; a second clear is refused"
log "PASS"
