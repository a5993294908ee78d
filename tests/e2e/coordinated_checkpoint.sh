#!/usr/bin/env bash
# Coordinated checkpoints across two protected appliances (issue 17 item 8).
# One writer numbers its writes and alternates them between volume A on
# appliance 1 and volume B on appliance 2, each write waiting for the reply
# to the one before. Appliance 1 coordinates group "app" over 4009 (mutual
# TLS, pinned). Every checkpoint of the group, restored on both VPGs, must
# hold a prefix of the write order: never B's write k without A's write k-1.
# The same check on pairs of ordinary checkpoints taken one after the other
# (appliance 1, then appliance 2) must find the violation: it proves the
# check can fail. Then the failure paths: a wrong pin, an unknown
# coordinator, garbage, a coordinator that goes silent while holding (the
# writes go on within hold_max and no checkpoint is taken), and a member
# that is down.
source "$(dirname "$0")/../lib/common.sh"

NBD2_PORT=$((PORT_BASE + 6))
COORD_PORT=$((PORT_BASE + 7))
mkdir -p "$WORK/src" "$WORK/a" "$WORK/a2" "$WORK/b"
FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name site-a1 | tail -n1)
FP_A2=$("$TIDEMARK" keygen --dir "$WORK/a2/keys" --name site-a2 | tail -n1)
FP_B=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name site-b | tail -n1)
truncate -s 32M "$WORK/src/vola.img" "$WORK/src/volb.img"

cat >"$WORK/recovery.toml" <<TOML
role = "recovery"
$(node_toml site-b "$WORK/b")
[listen]
address = "127.0.0.1"
control_port = $CONTROL_PORT
data_port = $DATA_PORT
[[listen.peer]]
fingerprint = "$FP_A"
vpgs = ["app-a"]
[[listen.peer]]
fingerprint = "$FP_A2"
vpgs = ["app-b"]
[logging]
dir = "$WORK/b/logs"
TOML
# Appliance 1: VPG app-a, and the coordinator of group "app" (app-a here,
# app-b on appliance 2) and of "wrongpin" (appliance 2 pinned wrongly).
cat >"$WORK/protected.toml" <<TOML
$(protected_head site-a1 "$WORK/a" "127.0.0.1:$NBD_PORT" 127.0.0.1 "$FP_B")
control_port = $CONTROL_PORT
data_port = $DATA_PORT
[logging]
dir = "$WORK/a/logs"
[[vpg]]
name = "app-a"
checkpoint_interval_ms = 3600000
[[vpg.volume]]
name = "vola"
path = "$WORK/src/vola.img"
[coordination]
[[coordination.group]]
name = "app"
interval = "250ms"
[[coordination.group.member]]
vpg = "app-a"
[[coordination.group.member]]
vpg = "app-b"
address = "127.0.0.1:$COORD_PORT"
fingerprint = "$FP_A2"
[[coordination.group]]
name = "wrongpin"
[[coordination.group.member]]
vpg = "app-a"
[[coordination.group.member]]
vpg = "app-b"
address = "127.0.0.1:$COORD_PORT"
fingerprint = "$FP_B"
TOML
# Appliance 2: VPG app-b, a member that takes holds from appliance 1 only.
cat >"$WORK/protected2.toml" <<TOML
$(protected_head site-a2 "$WORK/a2" "127.0.0.1:$NBD2_PORT" 127.0.0.1 "$FP_B")
control_port = $CONTROL_PORT
data_port = $DATA_PORT
[logging]
dir = "$WORK/a2/logs"
[[vpg]]
name = "app-b"
checkpoint_interval_ms = 3600000
[[vpg.volume]]
name = "volb"
path = "$WORK/src/volb.img"
[coordination]
listen = "127.0.0.1:$COORD_PORT"
coordinators = ["$FP_A"]
TOML

start_protected2() {
    "$TIDEMARK" protected --config "$WORK/protected2.toml" >>"$WORK/protected2.log" 2>&1 &
    P2_PID=$!
    disown "$P2_PID"
    PIDS+=("$P2_PID")
    wait_port "$COORD_PORT"
}
start_recovery
start_protected2
start_protected
wait_port "$NBD2_PORT"

# Group checkpoints start once both initial copies are in.
for _ in $(seq 1 150); do
    [ "$(status_json protected | jq -r '.groups[0].complete')" -ge 2 ] 2>/dev/null && break
    sleep 0.2
done
[ "$(status_json protected | jq -r '.groups[0].complete')" -ge 2 ] ||
    fail "no coordinated checkpoint within 30 s: $(status_json protected | jq -c '.groups')"

# ---- The ordered writer across the two appliances, with ordinary
# checkpoints taken one after the other (1, then 2) as the control.
WRITES=16000
python3 - "$NBD_PORT" "$NBD2_PORT" "$WRITES" >"$WORK/writer.out" 2>&1 <<'PY' &
import struct, sys, time
from nbdclient import Client
pa, pb, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
a = Client("127.0.0.1", pa, "vola")
b = Client("127.0.0.1", pb, "volb")
start = time.time()
for k in range(n):
    block = struct.pack("<Q", k + 1) * 512  # k+1: zeros mean "absent"
    (a if k % 2 == 0 else b).write((k // 2) * 4096, block)
    if k % 8 == 0:
        time.sleep(0.002)
a.flush(); b.flush()
print("wrote %d ordered writes in %.1f s" % (n, time.time() - start))
PY
WRITER=$!
CONTROL=0
while kill -0 "$WRITER" 2>/dev/null; do
    sleep 0.4
    CONTROL=$((CONTROL + 1))
    "$TIDEMARK" checkpoint --config "$WORK/protected.toml" --vpg app-a --tag "solo-$CONTROL" --wait 0s >/dev/null 2>&1 || true
    "$TIDEMARK" checkpoint --config "$WORK/protected2.toml" --vpg app-b --tag "solo-$CONTROL" --wait 0s >/dev/null 2>&1 || true
done
wait "$WRITER" || fail "the ordered writer failed: $(cat "$WORK/writer.out")"
log "$(cat "$WORK/writer.out"); $CONTROL control pairs"
out=$("$TIDEMARK" group-checkpoint --config "$WORK/protected.toml" --group app --tag final) || fail "group-checkpoint: $out"
echo "$out"
FINAL=$(sed -n 's/^checkpoint "\(final@app@[^"]*\)" taken across group app (2 members.*/\1/p' <<<"$out")
[ -n "$FINAL" ] || fail "group-checkpoint said: $out"

# Both journals have every checkpoint up to "final".
listed() { "$TIDEMARK" checkpoints --json --config "$WORK/recovery.toml" --vpg "$1"; }
for _ in $(seq 1 300); do
    listed app-a | jq -e 'any(.[]; .tag == $t)' --arg t "$FINAL" >/dev/null 2>&1 &&
        listed app-b | jq -e 'any(.[]; .tag == $t)' --arg t "$FINAL" >/dev/null 2>&1 && break
    sleep 0.2
done
listed app-a >"$WORK/list-a.json" && listed app-b >"$WORK/list-b.json" || fail "listing checkpoints failed"
jq -e 'any(.[]; .tag == $t)' --arg t "$FINAL" "$WORK/list-b.json" >/dev/null || fail "the recovery journals never got $FINAL"

# prefix TAG: restores both VPGs at TAG and prints the last write of the
# prefix they hold, or why they hold no prefix.
prefix() {
    rm -rf "$WORK/ra" "$WORK/rb"
    "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg app-a --checkpoint "$1" --out "$WORK/ra" >/dev/null 2>&1 &&
        "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg app-b --checkpoint "$1" --out "$WORK/rb" >/dev/null 2>&1 ||
        fail "restoring $1 failed"
    python3 "$ROOT/tests/lib/order_prefix.py" "$WORK/ra/vola.img" "$WORK/rb/volb.img" "$WRITES" || true
}
# Group checkpoints present in both journals, from the write run.
jq -r '.[] | select(.tag | startswith("app@")) | .tag' "$WORK/list-a.json" | sort >"$WORK/tags-a"
jq -r '.[] | select(.tag | startswith("app@")) | .tag' "$WORK/list-b.json" | sort >"$WORK/tags-b"
comm -12 "$WORK/tags-a" "$WORK/tags-b" >"$WORK/tags"
# The recovery side's own list of tags restorable on every member agrees.
"$TIDEMARK" group-checkpoints --config "$WORK/recovery.toml" --vpg app-a --vpg app-b --json |
    jq -r '.[] | select(.tag | startswith("app@")) | .tag' | sort >"$WORK/tags-listed"
# (The timer goes on meanwhile: it may list newer ones, never fewer.)
missing=$(comm -23 "$WORK/tags" "$WORK/tags-listed")
[ -z "$missing" ] || fail "group-checkpoints does not list tags both journals share: $missing"
while read -r extra; do
    [[ $extra > $(tail -n1 "$WORK/tags") ]] || fail "group-checkpoints lists $extra, which the journals did not share"
done < <(comm -13 "$WORK/tags" "$WORK/tags-listed")
"$TIDEMARK" group-checkpoints --config "$WORK/recovery.toml" --vpg app-a --vpg app-b | tail -n 3
[ "$(wc -l <"$WORK/tags")" -ge 10 ] || fail "only $(wc -l <"$WORK/tags") group checkpoints in both journals"
# Every one is checked; those inside the run must lie strictly inside it.
checked=0 inside=0
while read -r tag; do
    m=$(prefix "$tag")
    [[ $m =~ ^-?[0-9]+$ ]] || fail "group checkpoint $tag: $m"
    checked=$((checked + 1))
    [ "$m" -ge 0 ] && [ "$m" -lt $((WRITES - 1)) ] && inside=$((inside + 1))
done < <(echo "$FINAL"; cat "$WORK/tags")
[ "$inside" -ge 5 ] || fail "only $inside group checkpoints fell inside the write run; the test proved nothing"
violations=0 control=0
for i in $(seq 1 "$CONTROL"); do
    jq -e --arg t "solo-$i" 'any(.[]; .tag == $t)' "$WORK/list-a.json" >/dev/null || continue
    jq -e --arg t "solo-$i" 'any(.[]; .tag == $t)' "$WORK/list-b.json" >/dev/null || continue
    m=$(prefix "solo-$i")
    control=$((control + 1))
    if ! [[ $m =~ ^-?[0-9]+$ ]]; then
        violations=$((violations + 1))
        [ "$violations" = 1 ] && log "control solo-$i: $m"
    fi
done
log "$checked group checkpoints restored on both appliances, each a prefix of the write order ($inside mid-run);" \
    "ordinary checkpoints taken one after the other: $violations of $control are not"
[ "$violations" -ge 1 ] || fail "no control pair showed B without A: the check could not have failed"
st=$(status_json protected | jq -c '.groups[] | select(.name == "app")')
log "group status: $st"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -A2 "^checkpoint group app (app-a, app-b@127.0.0.1:$COORD_PORT)" ||
    fail "tidemark status does not show the group: $("$TIDEMARK" status --config "$WORK/protected.toml")"

# ---- A wrong pin: the coordinator refuses the member; nothing is held or marked.
if out=$("$TIDEMARK" group-checkpoint --config "$WORK/protected.toml" --group wrongpin --tag wrong-1 2>&1); then
    fail "a member with the wrong fingerprint took part: $out"
fi
grep -q "app-b@127.0.0.1:$COORD_PORT: no checkpoint" <<<"$out" || fail "the wrong pin was not named: $out"
grep -q "app-a: no checkpoint: not held: another member was not ready" <<<"$out" || fail "app-a was held although a member was not ready: $out"

# ---- A coordinator appliance 2 does not pin, and garbage from one it does.
python3 - "$COORD_PORT" "$WORK/b/keys" "$WORK/a/keys" "$WORK/a2/keys/cert.pem" <<'PY' || fail "hostile coordinators"
import socket, ssl, struct, sys, time, zlib
port, stranger, pinned, member_cert = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def connect(keys):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(member_cert)
    ctx.load_cert_chain(keys + "/cert.pem", keys + "/key.pem")
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="tidemark-peer")
    return s
def frame(payload, kind=1):
    return b"TMWF" + bytes([kind, 0, 0, 0]) + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
def closed(s):
    try:
        return s.recv(1) == b""
    except (ssl.SSLError, ConnectionError, socket.timeout, OSError):
        return True
# Not a pinned coordinator: refused (at the handshake, or right after it in TLS 1.3).
try:
    s = connect(stranger)
    s.sendall(frame(b'{"op":"hold","vpg":"app-b","tag":"stranger"}'))
    assert closed(s), "an unpinned coordinator was answered"
except (ssl.SSLError, ConnectionError, OSError):
    pass
# Pinned, then garbage: a bad crc, then an oversized frame, then a mark with no hold.
for bad in [frame(b'{"op":"hold"}')[:-1] + b"X" + b"", b"TMWF\x01\0\0\0" + struct.pack("<II", 1 << 20, 0),
            frame(b'{"op":"mark","mark":true}'), frame(b'not json')]:
    s = connect(pinned)
    s.sendall(bad)
    assert closed(s), "garbage %r was not refused" % bad[:20]
# Unknown VPG and a bad tag: refused, the connection stays.
s = connect(pinned)
for msg in [b'{"op":"hold","vpg":"nosuch","tag":"t"}', b'{"op":"hold","vpg":"app-b","tag":"123"}']:
    s.sendall(frame(msg))
    head = s.recv(16)
    body = b""
    while len(body) < struct.unpack("<I", head[8:12])[0]:
        body += s.recv(4096)
    assert b'"refused"' in body, body
print("hostile coordinators refused")
PY

# ---- A coordinator that goes silent while holding: appliance 2's writes
# wait at most hold_max (100 ms), then go on, and no checkpoint is taken.
python3 - "$COORD_PORT" "$WORK/a/keys" "$WORK/a2/keys/cert.pem" "$NBD2_PORT" <<'PY' || fail "a silent coordinator held writes too long"
import socket, ssl, struct, sys, threading, time, zlib
from nbdclient import Client
port, keys, member_cert, nbd = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(member_cert)
ctx.load_cert_chain(keys + "/cert.pem", keys + "/key.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="tidemark-peer")
def frame(payload):
    return b"TMWF\x01\0\0\0" + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
def exact(n):
    got = b""
    while len(got) < n:
        more = s.recv(n - len(got))
        assert more, "the member closed the connection"
        got += more
    return got
def reply():
    head = exact(16)
    return exact(struct.unpack("<I", head[8:12])[0])
b = Client("127.0.0.1", nbd, "volb")
s.sendall(frame(b'{"op":"hold","vpg":"app-b","tag":"silent@2026-12-04T00:00:00.000Z"}'))
assert b'"held"' in reply()
t0 = time.time()
b.write(31 << 20, b"\x5a" * 4096)  # held, then let go
waited = time.time() - t0
time.sleep(0.5)
s.sendall(frame(b'{"op":"mark","mark":true}'))
late = reply()
assert b'"too_late"' in late, late
print("a write during a silent coordinator's hold waited %.0f ms; the late mark got %s" % (waited * 1e3, late.decode()))
assert 0.02 < waited < 1.0, "the write waited %.3f s (hold_max is 100 ms)" % waited
# Right after a hold that ran to hold_max, the next is refused: holds are
# kept to a tenth of the time, whatever a coordinator asks.
s.sendall(frame(b'{"op":"hold","vpg":"app-b","tag":"again@2026-12-04T00:00:00.000Z"}'))
again = reply()
assert b'"refused"' in again and b"a tenth of the time" in again, again
time.sleep(1.0)
s.sendall(frame(b'{"op":"hold","vpg":"app-b","tag":"again@2026-12-04T00:00:00.000Z"}'))
assert b'"held"' in reply()
s.sendall(frame(b'{"op":"mark","mark":false}'))
assert b'"released"' in reply()
print("the next hold was refused at once, taken 1 s later")
PY
"$TIDEMARK" checkpoint --config "$WORK/protected2.toml" --vpg app-b --tag after-silent --wait 20s >/dev/null ||
    fail "app-b takes no checkpoint after the silent coordinator"
for _ in $(seq 1 50); do listed app-b | jq -e 'any(.[]; .tag == "after-silent")' >/dev/null && break; sleep 0.2; done
listed app-b | jq -e 'any(.[]; .tag | startswith("silent@"))' >/dev/null && fail "the silent coordinator's checkpoint was taken"

# ---- A member that is down: the group checkpoint fails at once, naming it,
# and appliance 1's writes are not held.
kill9 "$P2_PID"
t0=$(date +%s%3N)
if out=$("$TIDEMARK" group-checkpoint --config "$WORK/protected.toml" --group app --tag down-1 2>&1); then
    fail "a group checkpoint with a member down succeeded: $out"
fi
took=$(($(date +%s%3N) - t0))
grep -q "app-b@127.0.0.1:$COORD_PORT: no checkpoint" <<<"$out" || fail "the down member was not named: $out"
[ "$took" -lt 15000 ] || fail "the failed group checkpoint took $took ms"
qemu-io -f raw -c "write -P 7 0 4k" "$NBD_URI/vola" >/dev/null || fail "appliance 1 takes no writes with a member down"
st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
jq -e '.groups[] | select(.name == "app") | .failed >= 1 and (.last_error | test("app-b"))' <<<"$st" >/dev/null ||
    fail "status does not count the failed group checkpoints: $(jq -c .groups <<<"$st")"
log "with appliance 2 down: refused in $took ms: $(tail -n1 <<<"$out")"

# ---- Appliance 2 back: the coordinator notices its kept connection is dead
# and connects again before holding (no attempt fails on the old one).
start_protected2
for i in $(seq 1 60); do
    if out=$("$TIDEMARK" group-checkpoint --config "$WORK/protected.toml" --group app --tag back 2>&1); then
        break
    fi
    grep -q "connection to the member is lost" <<<"$out" && fail "a dead kept connection was used: $out"
    sleep 0.5
done
grep -q 'taken across group app' <<<"$out" || fail "no group checkpoint after appliance 2 came back: $out"
log "appliance 2 back: a group checkpoint after $i attempt(s) (the first wait for its restart's new stream)"
