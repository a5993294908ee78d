"""NBD clients that misbehave on purpose, for the security tests: they
pipeline huge reads and never read the replies, flood FLUSHes, hold silent
connections, crawl through the handshake, stall in a write's payload, or
hold every connection slot idle. Each binds to a source
address of its own (127.0.0.2, ...) so a test can tell an attacker's
connections from the well-behaved client's.

usage:
  hostile_nbd.py reads   PORT EXPORT SOURCE CONNECTIONS COUNT LENGTH HOLD_S
  hostile_nbd.py flushes PORT EXPORT SOURCE COUNT
  hostile_nbd.py silent  PORT SOURCE COUNT HOLD_S
  hostile_nbd.py slow    PORT EXPORT SOURCE
  hostile_nbd.py stalled PORT EXPORT SOURCE CONNECTIONS HOLD_S
  hostile_nbd.py idle    PORT EXPORT SOURCE CONNECTIONS HOLD_S
  hostile_nbd.py bursts  PORT EXPORT SOURCE CONNECTIONS READS HOLD_S
Each prints one line of JSON saying what happened.
"""
import json
import resource
import socket
import struct
import sys
import threading
import time

from nbdclient import IHAVEOPT, NBDMAGIC, OPT_GO, REQUEST_MAGIC, recv_exact

HOST = "127.0.0.1"
CMD_READ, CMD_WRITE, CMD_FLUSH = 0, 1, 3


def connect(port, source, timeout=30):
    return socket.create_connection((HOST, port), timeout=timeout, source_address=(source, 0))


def negotiate(sock, export):
    magic, opt, _ = struct.unpack(">QQH", recv_exact(sock, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT
    sock.sendall(struct.pack(">I", 3))
    name = export.encode()
    sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + b"\0\0")
    while True:
        _, _, rtype, length = struct.unpack(">QIII", recv_exact(sock, 20))
        recv_exact(sock, length)
        if rtype == 1:
            return
        if rtype & 0x80000000:
            raise RuntimeError("GO refused: %#x" % rtype)


def request(cmd, handle, offset=0, length=0):
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, handle, offset, length)


def closed_by_server(sock, within=2.0):
    """Reads what the server sent until its end (it closed the connection)
    or until nothing more comes for `within` seconds (it did not)."""
    sock.setblocking(True)
    sock.settimeout(within)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def count_closed(socks):
    """How many of SOCKS the server has closed (each sent nothing since its
    handshake, so anything readable is the end)."""
    for s in socks:
        s.setblocking(False)
    closed = 0
    for s in socks:
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


def reads(port, export, source, connections, count, length, hold):
    """Pipelines COUNT reads of LENGTH bytes on each connection and never
    reads a reply; holds the connections open for HOLD seconds."""
    socks, sent = [], 0
    for _ in range(connections):
        s = connect(port, source)
        negotiate(s, export)
        s.setblocking(False)
        socks.append(s)
    deadline = time.time() + hold
    pending = {s: b"".join(request(CMD_READ, i + 1, 0, length) for i in range(count)) for s in socks}
    while time.time() < deadline:
        for s in socks:
            if pending[s]:
                try:
                    n = s.send(pending[s])
                    pending[s] = pending[s][n:]
                    sent += n
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pending[s] = b""
        time.sleep(0.05)
    closed = sum(1 for s in socks if closed_by_server(s))
    for s in socks:
        s.close()
    print(json.dumps({"requests_sent_bytes": sent, "connections": connections, "closed_by_server": closed}))


def flushes(port, export, source, count):
    """Sends COUNT FLUSHes as fast as the server takes them, reading the
    replies on another thread."""
    s = connect(port, source, timeout=120)
    negotiate(s, export)
    got = [0]

    def drain():
        try:
            while got[0] < count:
                recv_exact(s, 16)
                got[0] += 1
        except Exception:
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    start = time.time()
    batch = 1000
    for first in range(0, count, batch):
        s.sendall(b"".join(request(CMD_FLUSH, first + i + 1) for i in range(min(batch, count - first))))
    reader.join(120)
    s.close()
    print(json.dumps({"flushes": count, "replies": got[0], "seconds": round(time.time() - start, 2)}))


def silent(port, source, count, hold):
    """Opens COUNT connections that never say anything; after HOLD seconds
    reports how many the server has closed (and how many it refused)."""
    socks, refused = [], 0
    for _ in range(count):
        try:
            socks.append(connect(port, source, timeout=2))
        except OSError:
            refused += 1
    time.sleep(hold)
    closed = sum(1 for s in socks if closed_by_server(s, 0.2))
    for s in socks:
        s.close()
    print(json.dumps({"opened": len(socks), "refused": refused, "closed_by_server": closed}))


def slow(port, export, source):
    """Reads the greeting, then sends the handshake one byte a second;
    reports when the server gave up on it."""
    s = connect(port, source, timeout=60)
    recv_exact(s, 18)
    name = export.encode()
    msg = struct.pack(">I", 3) + struct.pack(">QII", IHAVEOPT, OPT_GO, 4 + len(name) + 2) + struct.pack(">I", len(name)) + name + b"\0\0"
    start = time.time()
    for b in msg:
        try:
            s.sendall(bytes([b]))
        except OSError:
            break
        time.sleep(1)
        s.settimeout(0.01)
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                break
        except socket.timeout:
            pass
        except OSError:
            break
    print(json.dumps({"closed_after_s": round(time.time() - start, 1), "bytes_of_handshake": len(msg)}))


def stalled(port, export, source, connections, hold):
    """Each of CONNECTIONS connections sends the header of a 32 MiB WRITE
    and one byte of its payload, then nothing; after HOLD seconds reports
    how many the server has closed."""
    socks = []
    for i in range(connections):
        s = connect(port, source)
        negotiate(s, export)
        s.sendall(request(CMD_WRITE, i, 0, 32 << 20) + b"x")
        socks.append(s)
    time.sleep(hold)
    closed = sum(1 for s in socks if closed_by_server(s, 0.2))
    for s in socks:
        s.close()
    print(json.dumps({"connections": connections, "closed_by_server": closed}))


def idle(port, export, source, connections, hold):
    """Opens CONNECTIONS connections, completes each handshake, then sends
    nothing; after HOLD seconds reports how many the server refused (closed
    before its greeting) and how many it closed later."""
    socks, refused = [], 0
    for _ in range(connections):
        try:
            s = connect(port, source, timeout=5)
            negotiate(s, export)
            socks.append(s)
        except (OSError, AssertionError, RuntimeError, struct.error):
            refused += 1
    print(json.dumps({"held": len(socks)}), file=sys.stderr, flush=True)
    time.sleep(hold)
    closed = count_closed(socks)
    for s in socks:
        s.close()
    print(json.dumps({"connections": connections, "refused": refused, "closed_by_server": closed}))


def bursts(port, export, source, connections, count, hold):
    """On each of CONNECTIONS connections, pipelines COUNT reads of 4 KiB,
    waits a second before taking the replies (so the server queues them),
    takes them all, then keeps the connection open and quiet for HOLD
    seconds."""
    socks = []
    for _ in range(connections):
        s = connect(port, source)
        negotiate(s, export)
        socks.append(s)
    for s in socks:
        s.sendall(b"".join(request(CMD_READ, i + 1, i * 4096, 4096) for i in range(count)))
    time.sleep(1)
    for s in socks:
        for _ in range(count):
            recv_exact(s, 16)
            recv_exact(s, 4096)
    print(json.dumps({"bursts_done": connections}), file=sys.stderr, flush=True)
    time.sleep(hold)
    closed = count_closed(socks)
    for s in socks:
        s.close()
    print(json.dumps({"connections": connections, "reads": connections * count, "closed_by_server": closed}))


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "reads":
        reads(int(args[0]), args[1], args[2], int(args[3]), int(args[4]), int(args[5]), float(args[6]))
    elif cmd == "flushes":
        flushes(int(args[0]), args[1], args[2], int(args[3]))
    elif cmd == "silent":
        silent(int(args[0]), args[1], int(args[2]), float(args[3]))
    elif cmd == "slow":
        slow(int(args[0]), args[1], args[2])
    elif cmd == "stalled":
        stalled(int(args[0]), args[1], args[2], int(args[3]), float(args[4]))
    elif cmd == "bursts":
        bursts(int(args[0]), args[1], args[2], int(args[3]), int(args[4]), float(args[5]))
    elif cmd == "idle":
        idle(int(args[0]), args[1], args[2], int(args[3]), float(args[4]))
    else:
        sys.exit(__doc__)
