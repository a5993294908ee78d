#!/usr/bin/env bash
# Malformed NBD input: bad magic (handshake and transmission), unknown
# option, unknown command, length over 32 MiB, offset past the end, and a
# client that disconnects mid-request. Each gets an error reply or a closed
# connection, nothing is written, the agent does not panic, and a client
# connected the whole time keeps being served.
source "$(dirname "$0")/../lib/common.sh"

setup_pair async 1000 disk0:8M
start_recovery
start_protected
qio_check "$NBD_URI/disk0" "write -P 0x61 0 8M" flush
before=$(sha256sum <"$WORK/src/disk0.img")

python3 - "$NBD_PORT" <<'PY' || fail "bad-input probes failed"
import socket, struct, sys, time
from nbdclient import Client, IHAVEOPT, recv_exact, CMD_READ, CMD_WRITE, CMD_FLUSH
port = int(sys.argv[1])
EINVAL, ENOSPC, EOVERFLOW = 22, 28, 75

def closed(sock):
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True

bystander = Client("127.0.0.1", port, "disk0")  # stays connected throughout
def bystander_ok():
    assert bystander.read(0, 4096) == b"\x61" * 4096, "bystander read wrong data"

# 1. Bad magic in the option phase: connection closed.
c = Client("127.0.0.1", port)
c.sock.sendall(struct.pack(">QII", 0x1122334455667788, 7, 0))
assert closed(c.sock), "bad option magic did not close the connection"
bystander_ok(); print("bad option magic: closed")

# 2. Unknown option: NBD_REP_ERR_UNSUP, and the connection goes on.
c = Client("127.0.0.1", port)
c.option(99, b"xyz")
_, rtype, _ = c.option_reply()
assert rtype == 0x80000001, hex(rtype)
c.go("disk0")
assert c.read(0, 512) == b"\x61" * 512
c.close(); print("unknown option: ERR_UNSUP, then served")

# 3. Unknown export: ERR_UNKNOWN.
c = Client("127.0.0.1", port)
try:
    c.go("nosuch")
    raise AssertionError("GO to an unknown export succeeded")
except RuntimeError as e:
    assert "0x80000006" in str(e), e
c.sock.close(); print("unknown export: ERR_UNKNOWN")

# 4. Unknown command: EINVAL, connection still usable.
c = Client("127.0.0.1", port, "disk0")
c.request(42, 0, 0)
err, _, _ = c.reply()
assert err == EINVAL, err
assert c.read(0, 512) == b"\x61" * 512
print("unknown command: EINVAL, then served")

# 5. Read longer than 32 MiB: error, connection still usable.
c.request(CMD_READ, 0, (32 << 20) + 1)
err, _, _ = c.reply()
assert err == EOVERFLOW, err
print("read > 32 MiB: EOVERFLOW")

# 6. Read and write past the end: errors, nothing written.
c.request(CMD_READ, (8 << 20) - 100, 4096)
err, _, _ = c.reply()
assert err == EINVAL, err
c.request(CMD_WRITE, (8 << 20) - 100, 4096, 0, b"\xff" * 4096)
err, _, _ = c.reply()
assert err == ENOSPC, err
c.request(CMD_WRITE, (1 << 64) - 512, 1024, 0, b"\xff" * 1024)
err, _, _ = c.reply()
assert err == EINVAL, err
assert c.read(0, 512) == b"\x61" * 512
c.close(); print("offset past the end: EINVAL/ENOSPC, nothing written")

# 7. Write longer than 32 MiB: error reply and the connection is closed.
c = Client("127.0.0.1", port, "disk0")
c.request(CMD_WRITE, 0, (32 << 20) + 4096, 0, b"")
err, _, _ = c.reply()
assert err != 0
assert closed(c.sock), "oversized write did not close the connection"
print("write > 32 MiB: error, closed")

# 8. Bad request magic in transmission: closed.
c = Client("127.0.0.1", port, "disk0")
c.request(CMD_READ, 0, 512, magic=0xDEADBEEF)
assert closed(c.sock), "bad request magic did not close the connection"
print("bad request magic: closed")

# 9. Disconnect in the middle of a write's payload: nothing written.
c = Client("127.0.0.1", port, "disk0")
hdr = struct.pack(">IHHQQI", 0x25609513, 0, CMD_WRITE, 1, 4096, 65536)
c.sock.sendall(hdr + b"\xee" * 30000)
c.sock.close()
# And a half-sent header.
c = Client("127.0.0.1", port, "disk0")
c.sock.sendall(hdr[:10]); c.sock.close()
# And garbage instead of the handshake.
s = socket.create_connection(("127.0.0.1", port)); recv_exact(s, 18); s.sendall(b"\x00" * 3); s.close()
time.sleep(0.5)
bystander_ok()
bystander.request(CMD_FLUSH, 0, 0)
assert bystander.reply()[0] == 0
bystander.close()
print("mid-request disconnects: nothing written, bystander served throughout")
PY

after=$(sha256sum <"$WORK/src/disk0.img")
[ "$before" = "$after" ] || fail "bad input changed the volume"
kill -0 "$PROTECTED_PID" 2>/dev/null || fail "protected agent died"
grep -q "panicked" "$WORK/protected.log" && fail "agent panicked"
qio_check "$NBD_URI/disk0" "read -P 0x61 0 8M"
wait_replicated 60
restore_to latest "$WORK/out"
cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "replica differs after bad input"
log "all bad input refused; volume and replica unchanged"
