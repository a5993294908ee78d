#!/usr/bin/env bash
# A recovery agent serving two protected sites: each pinned certificate may
# use only the VPGs it is given ([[listen.peer]]).
# - Site A replicates vpga, site B vpgb; both arrive.
# - B's certificate says hello for vpga, and reverse_hello for it: refused
#   with the same words as for a VPG that does not exist (nothing about
#   vpga's volumes or sizes), logged with B's fingerprint; A's session is
#   never dropped. (Before: any pinned peer could take any VPG's session,
#   inject batches, fail it over or receive it back.)
# - A promote can only follow a hello for the link's own VPG: alone, it is
#   refused and nothing fails over.
# - 70 silent connections from one address hold 4 handshake slots at most:
#   a peer from another address still gets through at once.
# - A record outside the VPG's volumes, from the VPG's own site, is refused
#   with its batch on receipt. (Before: journaled, then the applier stalled.)
# - Two fingerprints in peer_fingerprints, with no say on which VPG each may
#   use, is a configuration error that says how to write it.
source "$(dirname "$0")/../lib/common.sh"

PEER="python3 $ROOT/tests/lib/peer_client.py"
NBD_B=$((PORT_BASE + 7))
mkdir -p "$WORK/a" "$WORK/b" "$WORK/r" "$WORK/src"
FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name site-a | tail -n1)
FP_B=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name site-b | tail -n1)
FP_R=$("$TIDEMARK" keygen --dir "$WORK/r/keys" --name recovery | tail -n1)
cat >"$WORK/recovery.toml" <<TOML
role = "recovery"
$(node_toml recovery "$WORK/r")
[listen]
address = "127.0.0.1"
control_port = $CONTROL_PORT
data_port = $DATA_PORT
[[listen.peer]]
fingerprint = "$FP_A"
vpgs = ["vpga"]
[[listen.peer]]
fingerprint = "$FP_B"
vpgs = ["vpgb"]
[logging]
dir = "$WORK/r/logs"
TOML
for site in a b; do
    port=$NBD_PORT
    [ $site = b ] && port=$NBD_B
    truncate -s 8M "$WORK/src/$site.img"
    cat >"$WORK/protected-$site.toml" <<TOML
$(protected_head "site-$site" "$WORK/$site" "127.0.0.1:$port" 127.0.0.1 "$FP_R")
control_port = $CONTROL_PORT
data_port = $DATA_PORT
[logging]
dir = "$WORK/$site/logs"
[[vpg]]
name = "vpg$site"
[[vpg.volume]]
name = "disk0"
path = "$WORK/src/$site.img"
TOML
done
start_recovery
for site in a b; do
    "$TIDEMARK" protected --config "$WORK/protected-$site.toml" >>"$WORK/protected-$site.log" 2>&1 &
    PIDS+=($!)
    disown $!
done
wait_port "$NBD_PORT"
wait_port "$NBD_B"
qio_check "nbd://127.0.0.1:$NBD_PORT/disk0" "write -P 0xaa 0 1M" "flush"
qio_check "nbd://127.0.0.1:$NBD_B/disk0" "write -P 0xbb 0 1M" "flush"
for site in a b; do
    "$TIDEMARK" checkpoint --config "$WORK/protected-$site.toml" --vpg "vpg$site" --tag ok --wait 30s >/dev/null ||
        fail "site $site does not replicate its own VPG"
done
log "both sites replicate their own VPG"

reconnects_a() { "$TIDEMARK" status --json --config "$WORK/protected-a.toml" | jq -r '.vpgs[0].note'; }
before=$(reconnects_a)
B=("$WORK/b/keys/cert.pem" "$WORK/b/keys/key.pem")
hello() { printf '{"type":"%s","protocol":2,"vpg":"%s","vpg_id":%s,"volumes":[{"name":"disk0","size":8388608}],%s}' "$1" "$2" \
    "$(python3 -c "import zlib; print(zlib.crc32(b'$2'))")" "$3"; }

log "B's certificate asks for vpga, and for a VPG that does not exist"
$PEER ask "$CONTROL_PORT" "${B[@]}" "$(hello hello vpga '"sender":"","stream_id":1')" >"$WORK/hello-a.out"
$PEER ask "$CONTROL_PORT" "${B[@]}" "$(hello hello nosuch '"sender":"","stream_id":1')" >"$WORK/hello-none.out"
$PEER ask "$CONTROL_PORT" "${B[@]}" "$(hello reverse_hello vpga '"applied_seq":0,"stream_id":1')" >"$WORK/reverse-a.out"
for f in hello-a hello-none reverse-a; do
    grep -q '"refused"' "$WORK/$f.out" || fail "$f was not refused: $(cat "$WORK/$f.out")"
    grep -qi "disk0\|8388608\|volume" "$WORK/$f.out" && fail "the refusal says what vpga holds: $(cat "$WORK/$f.out")"
done
[ "$(jq -c .reason "$WORK/hello-a.out")" = "$(jq -c .reason "$WORK/hello-none.out")" ] ||
    fail "a VPG that exists is refused in other words than one that does not"
grep -q "refused a hello.*may not use that VPG" "$WORK/recovery.log" || fail "the refusal is not in the log"
grep "refused a reverse hello" "$WORK/recovery.log" | grep -q "${FP_B#sha256:}" || fail "the log does not name B's certificate"
sleep 3
[ "$(reconnects_a)" = "$before" ] || fail "A's session was dropped: $before -> $(reconnects_a)"
qio_check "nbd://127.0.0.1:$NBD_PORT/disk0" "write -P 0xac 1M 1M" "flush"
"$TIDEMARK" checkpoint --config "$WORK/protected-a.toml" --vpg vpga --tag still --wait 30s >/dev/null ||
    fail "A no longer replicates after B's attempts"
log "refused, logged with B's certificate, nothing about vpga said; A's session untouched"

log "a promote without a hello, and 70 silent connections from one address"
$PEER ask "$CONTROL_PORT" "${B[@]}" '{"type":"promote","checkpoint":1}' >"$WORK/promote.out"
grep -q '"closed"\|"refused"' "$WORK/promote.out" || fail "a promote without a hello was answered: $(cat "$WORK/promote.out")"
st=$(fresh_status_json recovery) || fail "no recovery status"
grep -q "failed over" <<<"$st" && fail "a VPG failed over on a stray promote: $st"
python3 - "$CONTROL_PORT" >"$WORK/silent.out" <<'PY' &
import socket, sys, time
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1])), source_address=("127.0.0.2", 0)) for _ in range(70)]
print(len(held), flush=True)
time.sleep(8)
PY
silent=$!
sleep 1
t0=$(date +%s.%N)
timeout 4 $PEER ask "$CONTROL_PORT" "${B[@]}" "$(hello hello vpgb '"sender":"","stream_id":1')" >"$WORK/through.out" ||
    fail "a peer could not get through while one address held silent connections"
took=$(python3 -c "import time; print('%.1f' % (time.time() - $t0))")
grep -q '"welcome"\|"refused"' "$WORK/through.out" || fail "no answer while silent connections were held: $(cat "$WORK/through.out")"
grep -q "this source has 4 handshakes under way" "$WORK/recovery.log" || fail "the silent address was not held to 4 handshakes"
wait "$silent"
log "refused; a peer got through in ${took}s while 127.0.0.2 held 70 silent connections"

log "a record outside the VPG's volumes, from the VPG's own site"
head=$(status_json recovery | jq -r '.vpgs[] | select(.name == "vpga") | .head_seq')
$PEER batch "$CONTROL_PORT" "$DATA_PORT" "$WORK/a/keys/cert.pem" "$WORK/a/keys/key.pem" vpga \
    '[{"name":"disk0","size":8388608}]' \
    '[{"kind":"stream_start","stream_id":99},{"kind":"zero","volume":0,"offset":8384512,"length":8192}]' >"$WORK/batch.out"
grep -q '"refused"' "$WORK/batch.out" || fail "the out-of-range batch was not refused: $(cat "$WORK/batch.out")"
grep -q "past the end of volume disk0" "$WORK/batch.out" || fail "unclear refusal: $(cat "$WORK/batch.out")"
sleep 1
after=$(fresh_status_json recovery | jq -r '.vpgs[] | select(.name == "vpga") | .head_seq')
[ "$after" -ge "$head" ] || fail "the journal went backwards"
"$TIDEMARK" checkpoint --config "$WORK/protected-a.toml" --vpg vpga --tag after-bad --wait 30s >/dev/null ||
    fail "A does not replicate after the refused batch"
restore_dir=$WORK/restored
"$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpga --checkpoint after-bad --out "$restore_dir" >/dev/null ||
    fail "restore after the refused batch failed"
cmp "$restore_dir/disk0.img" "$WORK/src/a.img" || fail "vpga's restore differs from its source"

log "two peer_fingerprints without their VPGs is a configuration error"
sed -e '/^\[\[listen.peer\]\]/,$d' "$WORK/recovery.toml" >"$WORK/bad.toml"
sed -i "s|^data_port = .*|&\npeer_fingerprints = [\"$FP_A\", \"$FP_B\"]|" "$WORK/bad.toml"
if out=$(timeout 10 "$TIDEMARK" recovery --config "$WORK/bad.toml" 2>&1); then fail "two fingerprints without VPGs were accepted"; fi
grep -q "say which VPGs each may use" <<<"$out" || fail "unclear configuration error: $out"
log "PASS"
