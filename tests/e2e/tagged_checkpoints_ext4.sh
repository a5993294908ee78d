#!/usr/bin/env bash
# Tagged checkpoints with a real file system: an ext4 image made with
# `mke2fs -d` from a tree of files with known checksums is written into the
# export with `qemu-img convert`, the files change in three rounds with a
# tagged checkpoint after each, and restoring each tag gives an image that
# `e2fsck -fn` passes and whose files (read out with debugfs) match that
# round's checksums. Tags and automatic checkpoints list in write order;
# restore by tag equals restore by id; bad requests are refused.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:64M
start_recovery
start_protected
wait_replicated 60

TREE=$WORK/tree
mkdir -p "$TREE/etc" "$TREE/data/deep"
head -c 300K /dev/urandom >"$TREE/data/blob.bin"
head -c 2M /dev/urandom >"$TREE/data/deep/big.bin"
echo "version 0" >"$TREE/etc/app.conf"
echo "to be removed in round 2" >"$TREE/etc/old.txt"

# change_round N: the file changes of round N (0 is the first tree).
change_round() {
    case $1 in
    1)
        head -c 300K /dev/urandom >"$TREE/data/blob.bin"
        echo "version 1" >"$TREE/etc/app.conf"
        head -c 64K /dev/urandom >"$TREE/data/new-in-1.bin"
        ;;
    2)
        rm "$TREE/etc/old.txt"
        head -c 1M /dev/urandom | dd of="$TREE/data/deep/big.bin" bs=1M seek=1 conv=notrunc status=none
        echo "version 2" >"$TREE/etc/app.conf"
        ;;
    esac
}

for round in 0 1 2; do
    change_round "$round"
    (cd "$TREE" && find . -type f | sort | xargs sha256sum) >"$WORK/round-$round.sums"
    rm -f "$WORK/fs.img"
    mke2fs -q -F -t ext4 -b 4096 -d "$TREE" "$WORK/fs.img" 64M >/dev/null
    qemu-img convert -n -f raw -O raw "$WORK/fs.img" "$NBD_URI/disk0" || fail "qemu-img convert into the export failed"
    qemu-io -f raw -c flush "$NBD_URI/disk0" >/dev/null
    out=$("$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "round $round" --wait 60s) ||
        fail "tagged checkpoint failed: $out"
    grep -q "in the recovery journal" <<<"$out" || fail "the tagged checkpoint is not durable: $out"
    id=$(sed -n 's/^checkpoint \([0-9]*\) .*/\1/p' <<<"$out")
    echo "$id" >"$WORK/round-$round.id"
    log "round $round: $(wc -l <"$WORK/round-$round.sums") files, checkpoint $id \"round $round\""
    sleep 1.2 # at least one automatic checkpoint between rounds
done

log "tags and automatic checkpoints are listed in write order"
"$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json >"$WORK/checkpoints.json"
python3 - "$WORK/checkpoints.json" "$(cat "$WORK"/round-{0,1,2}.id)" <<'PY' || fail "checkpoint list is wrong"
import json, sys
cps = json.load(open(sys.argv[1]))
ids = [c["id"] for c in cps]
assert ids == sorted(ids), "not in order"
tagged = [(c["id"], c["tag"]) for c in cps if c["tag"]]
want = [(int(i), f"round {n}") for n, i in enumerate(sys.argv[2].split())]
assert tagged == want, (tagged, want)
first, last = want[0][0], want[-1][0]
auto = [c for c in cps if not c["tag"] and first < c["id"] < last]
assert len(auto) >= 2, "no automatic checkpoints between the rounds"
assert all(c["consistent"] for c in cps if c["tag"]), "a tagged checkpoint is not complete"
print(f"{len(cps)} checkpoints, {len(auto)} automatic ones between the tagged ones")
PY
# Whole output first: `grep -q` stops reading early, and pipefail would count the writer's SIGPIPE.
table=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1)
grep -q "complete .*round 1$" <<<"$table" || fail "the table does not show the tag: $table"

for round in 0 1 2; do
    restore_to "round $round" "$WORK/r$round"
    img=$WORK/r$round/disk0.img
    e2fsck -fn "$img" >"$WORK/fsck.out" 2>&1 || { cat "$WORK/fsck.out"; fail "e2fsck fails on the round $round restore"; }
    while read -r sum path; do
        debugfs -R "dump ${path#.} $WORK/dumped" "$img" >/dev/null 2>&1 || fail "round $round: ${path#.} missing"
        [ "$(sha256sum <"$WORK/dumped" | cut -d' ' -f1)" = "$sum" ] || fail "round $round: ${path#.} differs"
    done <"$WORK/round-$round.sums"
    log "round $round restored from its tag: e2fsck clean, $(wc -l <"$WORK/round-$round.sums") files match"
done
grep -q "File not found" <<<"$(debugfs -R "stat /etc/old.txt" "$WORK/r2/disk0.img" 2>&1)" || fail "round 2 still has the removed file"
grep -q "File not found" <<<"$(debugfs -R "stat /data/new-in-1.bin" "$WORK/r0/disk0.img" 2>&1)" || fail "round 0 has a later file"

restore_to "$(cat "$WORK/round-1.id")" "$WORK/r1-by-id"
cmp "$WORK/r1-by-id/disk0.img" "$WORK/r1/disk0.img" || fail "restore by id differs from restore by tag"
log "restore by id == restore by tag"

log "bad requests are refused and change nothing"
expect_refused() {
    local why=$1
    shift
    if "$TIDEMARK" "$@" >"$WORK/out" 2>&1; then fail "accepted: $*"; fi
    grep -q "$why" "$WORK/out" || fail "unclear error for $*: $(cat "$WORK/out")"
}
before=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json | jq '[.[] | select(.tag != "")] | length')
expect_refused "would be read as a checkpoint id" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag latest
expect_refused "would be read as a checkpoint id" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag 12345
expect_refused 'no VPG "nope"' checkpoint --config "$WORK/protected.toml" --vpg nope --tag x
expect_refused "recovery-side config" checkpoint --config "$WORK/recovery.toml" --vpg vpg1 --tag x
expect_refused "no checkpoint" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "round 9" --out "$WORK/none"
printf '{"op":"format","vpg":"vpg1"}\n' | python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.stdin.buffer.read())
reply = s.recv(4096).decode()
assert "\"ok\":false" in reply and "malformed request" in reply, reply
' "$WORK/a/data/control.sock" || fail "garbage on the control socket was not refused"
after=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json | jq '[.[] | select(.tag != "")] | length')
[ "$before" = "$after" ] || fail "a refused request added a tagged checkpoint"

log "with the recovery side down a checkpoint waits in the protected log (exit 75), then arrives"
kill9 "$RECOVERY_PID"
code=0
"$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg vpg1 --tag "while down" --wait 1s >"$WORK/out" 2>&1 || code=$?
[ "$code" = 75 ] || fail "a checkpoint the recovery side never acknowledged exited $code: $(cat "$WORK/out")"
grep -q "in the protected log" "$WORK/out" || fail "the checkpoint command did not say where it is: $(cat "$WORK/out")"
start_recovery
for _ in $(seq 1 150); do
    [ "$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 --json |
        jq -r '[.[] | select(.tag == "while down" and .consistent)] | length')" = 1 ] && break
    sleep 0.2
done
restore_to "while down" "$WORK/while-down"
log "PASS: tagged checkpoints restore ext4 images that fsck clean with every file as it was"
