"""RPO measurement helpers for tests/bench/run.sh.

writer PORT EXPORT SECONDS BYTES_PER_SEC OUT
    64 KiB writes, each starting with a marker (b"TMRPO" + id), each
    followed by a FLUSH; writes "id t_flush_returned" lines to OUT.
watch JOURNAL_DIR SECONDS OUT
    tails the journal's segment files and writes "id t_seen" when a marker
    lands in a segment (the fsync and ack follow within milliseconds).
sink PORT OUT SECONDS / source PORT SECONDS BYTES_PER_SEC OUT
    the peer: the same 64 KiB messages over plain TCP through the same
    proxy; the sink writes "id t_arrived", the source "id t_sent".
report A B
    joins two files on id and prints p50 and p99 of (B - A) in ms.
"""
import os
import socket
import struct
import sys
import time

MARK = b"TMRPO"
MSG = 64 << 10


def payload(i):
    return MARK + struct.pack("<Q", i) + os.urandom(MSG - 13)


def paced(seconds, rate):
    """Yields message numbers 0, 1, ... at `rate` bytes/s for `seconds`."""
    interval = MSG / float(rate)
    end = time.time() + float(seconds)
    nxt = time.time()
    i = 0
    while time.time() < end:
        yield i
        i += 1
        nxt += interval
        time.sleep(max(0, nxt - time.time()))


def writer(port, export, seconds, rate, out):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
    from nbdclient import Client
    c = Client("127.0.0.1", int(port), export)
    with open(out, "w") as f:
        for i in paced(seconds, rate):
            c.write((i % 1024) * MSG, payload(i))
            c.flush()
            f.write("%d %.6f\n" % (i, time.time()))
    c.close()


def watch(journal_dir, seconds, out):
    offsets, tails = {}, {}
    end = time.time() + float(seconds)
    with open(out, "w") as f:
        while time.time() < end:
            for name in sorted(os.listdir(journal_dir)):
                if not name.endswith(".tmjrn"):
                    continue
                path = os.path.join(journal_dir, name)
                with open(path, "rb") as seg:
                    seg.seek(offsets.get(name, 0))
                    new = seg.read()
                if not new:
                    continue
                now = time.time()
                offsets[name] = offsets.get(name, 0) + len(new)
                buf = tails.get(name, b"") + new
                at = buf.find(MARK)
                while at >= 0 and at + 13 <= len(buf):
                    f.write("%d %.6f\n" % (struct.unpack("<Q", buf[at + 5:at + 13])[0], now))
                    at = buf.find(MARK, at + 13)
                tails[name] = buf[-12:]
            time.sleep(0.002)


def sink(port, out, seconds):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(port)))
    srv.listen(1)
    srv.settimeout(float(seconds))
    conn, _ = srv.accept()
    conn.settimeout(float(seconds))
    buf = b""
    with open(out, "w") as f:
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                buf += data
                while len(buf) >= MSG:
                    i = struct.unpack("<Q", buf[5:13])[0]
                    f.write("%d %.6f\n" % (i, time.time()))
                    buf = buf[MSG:]
        except socket.timeout:
            pass


def source(port, seconds, rate, out):
    s = socket.create_connection(("127.0.0.1", int(port)))
    with open(out, "w") as f:
        for i in paced(seconds, rate):
            s.sendall(payload(i))
            f.write("%d %.6f\n" % (i, time.time()))
    time.sleep(2)
    s.close()


def report(a, b):
    ta = dict(l.split() for l in open(a))
    tb = {}
    for l in open(b):
        i, t = l.split()
        tb.setdefault(i, t)
    lat = sorted(max(0.0, float(tb[i]) - float(ta[i])) * 1000 for i in ta if i in tb)
    if not lat:
        print("nan nan 0 %d" % len(ta))
        return
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print("%.1f %.1f %d %d" % (p(0.5), p(0.99), len(lat), len(ta)))


if __name__ == "__main__":
    {"writer": writer, "watch": watch, "sink": sink, "source": source, "report": report}[sys.argv[1]](*sys.argv[2:])
