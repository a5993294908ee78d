#!/usr/bin/env bash
# Security and corruption:
#  - a protected peer with the wrong certificate is refused and nothing
#    reaches the journal; a recovery peer with the wrong one is refused too;
#  - garbage on the control and data ports (plain and inside a valid TLS
#    session) drops that connection only, replication goes on;
#  - a flipped byte in a journal segment is detected and reported, never
#    restored: restore stops at the last good checkpoint and says so; the
#    recovery agent quarantines the damage and replication heals.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:32M
start_recovery

# 1. A rogue protected appliance (its own key, not pinned) is refused.
"$TIDEMARK" keygen --dir "$WORK/rogue" --name rogue >/dev/null
sed -e "s|$WORK/a/keys/|$WORK/rogue/|g" -e "s|$WORK/a/data|$WORK/rogue-data|" "$WORK/protected.toml" >"$WORK/rogue.toml"
"$TIDEMARK" protected --config "$WORK/rogue.toml" >"$WORK/rogue.log" 2>&1 &
rogue=$!
PIDS+=("$rogue")
sleep 3
kill9 "$rogue"
rogue_fp=$("$TIDEMARK" fingerprint --cert "$WORK/rogue/cert.pem")
grep -q "certificate $rogue_fp is not pinned" "$WORK/recovery.log" || fail "recovery did not log the rogue fingerprint $rogue_fp"
[ ! -e "$WORK/b/data/journal/vpg1" ] || fail "a journal was created for a refused peer"
log "rogue protected peer refused, fingerprint logged, nothing journaled"

# 2. The protected side refuses a recovery peer whose fingerprint differs.
sed "s|^fingerprint = .*|fingerprint = \"sha256:$(printf '%064d' 0)\"|" "$WORK/protected.toml" >"$WORK/wrongpin.toml"
"$TIDEMARK" protected --config "$WORK/wrongpin.toml" >"$WORK/wrongpin.log" 2>&1 &
wp=$!
PIDS+=("$wp")
sleep 3
kill9 "$wp"
grep -q "refusing peer: certificate $FP_B is not pinned" "$WORK/wrongpin.log" || fail "protected side did not refuse a wrongly pinned peer"
[ ! -e "$WORK/b/data/journal/vpg1" ] || fail "a journal was created through a wrongly pinned link"
rm -rf "$WORK/a/data"
log "wrongly pinned recovery peer refused by the protected side"

# 3. The real pair replicates; garbage on both ports drops only itself.
start_protected
qio_check "$NBD_URI/disk0" "write -P 0xaa 0 4M" flush
wait_replicated 60
python3 - "$CONTROL_PORT" "$DATA_PORT" "$WORK/a/keys/cert.pem" "$WORK/a/keys/key.pem" <<'PY' || fail "garbage probes failed"
import os, socket, ssl, struct, sys, zlib
control, data, cert, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def closed(s):
    # The peer may send an alert first: read until it closes.
    s.settimeout(20)
    try:
        while s.recv(4096):
            pass
        return True
    except (ConnectionResetError, ssl.SSLError):
        return True
    except socket.timeout:
        return False
for port in (control, data):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(os.urandom(4096))
    assert closed(s), "plain garbage kept the connection open"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    for payload in (os.urandom(4096), b"TMWF\x01\x00\x00\x00" + struct.pack("<II", 5, 0) + b"hello",
                    (lambda j: b"TMWF\x01\x00\x00\x00" + struct.pack("<II", len(j), zlib.crc32(j)) + j)(b'{"type":"attach","vpg":"vpg1","session":1}'),
                    (lambda j: b"TMWF\x02\x00\x00\x00" + struct.pack("<II", len(j), zlib.crc32(j)) + j)(os.urandom(64))):
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))
        t.sendall(payload)
        assert closed(t), "garbage inside TLS kept the connection open on %d" % port
print("garbage dropped on both ports")
PY
qio_check "$NBD_URI/disk0" "write -P 0xbb 8M 1M" flush
wait_replicated 60
kill -0 "$RECOVERY_PID" || fail "recovery agent died from garbage"
restore_to latest "$WORK/out1"
cmp "$WORK/out1/disk0.img" "$WORK/src/disk0.img" || fail "replication broke after garbage"
log "garbage on 4007/4008 dropped those connections only; replication continued"

# 4. Flip one byte inside the 0xbb write in the journal.
seg=$(python3 - "$WORK/b/data/journal/vpg1" <<'PY'
import os, sys
d = sys.argv[1]
for name in sorted(os.listdir(d)):
    if not name.endswith(".tmjrn"): continue
    p = os.path.join(d, name); b = bytearray(open(p, "rb").read())
    i = b.find(b"\xbb" * 65536)
    if i >= 0:
        b[i + 1000] ^= 0x01
        open(p, "wb").write(b); print(p); break
PY
)
[ -n "$seg" ] || fail "could not find the 0xbb write in the journal"
"$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg vpg1 >"$WORK/cps.out" 2>"$WORK/cps.err"
grep -q "journal damaged.*$(basename "$seg").*corrupt record at offset [0-9]*" "$WORK/cps.err" || fail "checkpoints did not report the damage: $(cat "$WORK/cps.err")"
"$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint latest --out "$WORK/out2" >"$WORK/r2.out" 2>&1 || fail "restore latest failed: $(cat "$WORK/r2.out")"
grep -q "WARNING: journal damaged" "$WORK/r2.out" || fail "restore did not say the journal is damaged"
python3 - "$WORK/out2/disk0.img" <<'PY' || fail "damaged data reached the restored image"
import sys
d = open(sys.argv[1], "rb").read()
assert d[:4 << 20] == b"\xaa" * (4 << 20), "good data before the damage is missing"
assert d[8 << 20:9 << 20] == bytes(1 << 20), "the damaged write (or part of it) was restored"
PY
last=$("$TIDEMARK" checkpoints --json --config "$WORK/recovery.toml" --vpg vpg1 2>/dev/null | jq -r 'last.id')
if "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint $((last + 100000)) --out "$WORK/out3" >"$WORK/r3.out" 2>&1; then
    fail "restore of a checkpoint past the damage succeeded"
fi
grep -q "not in the readable part of the journal" "$WORK/r3.out" || fail "unclear error past the damage: $(cat "$WORK/r3.out")"
log "flipped byte detected and reported; restore stopped at the last good checkpoint"

# 5. Restarting the recovery agent quarantines the damage; replication heals.
kill9 "$RECOVERY_PID"
start_recovery
sleep 2
grep -q "quarantining" "$WORK/recovery.log" || fail "recovery agent did not quarantine the damage"
qio_check "$NBD_URI/disk0" "write -P 0xcc 12M 1M" flush
wait_replicated 120
restore_to latest "$WORK/out4"
cmp "$WORK/out4/disk0.img" "$WORK/src/disk0.img" || fail "replication did not heal after the damage"
log "damage quarantined; a new stream resynced the volume; replica == source"
