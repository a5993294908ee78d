"""A replication peer that says what a test tells it to, over real TLS with
a real (pinned) appliance certificate: for the tests of what the recovery
agent refuses from a peer. It speaks the wire format of docs/protocol.md:
frames (`TMWF`, kind, length, crc32), JSON control messages, batches of
records.

usage:
  peer_client.py ask   PORT CERT KEY JSON        one control message, one answer
  peer_client.py batch CPORT DPORT CERT KEY VPG VOLUMES_JSON RECORDS_JSON
        hello for VPG, attach the data link, send one batch of records
        (each {"kind": "write"|"zero"|"stream_start", ...}), print the answer
Prints the answers as JSON lines.
"""
import json
import socket
import ssl
import struct
import sys
import time
import zlib

from nbdclient import recv_exact

FRAME_MAGIC = struct.unpack("<I", b"TMWF")[0]
RECORD_MAGIC = struct.unpack("<I", b"TMRC")[0]
CONTROL, BATCH = 1, 2
KIND = {"write": 1, "zero": 2, "checkpoint": 3, "copy_done": 4, "stream_start": 5}


def connect(port, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the appliance pins fingerprints, not names
    ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    return ctx.wrap_socket(raw, server_hostname="tidemark-peer")


def send_frame(sock, kind, payload):
    sock.sendall(struct.pack("<IB3xII", FRAME_MAGIC, kind, len(payload), zlib.crc32(payload)) + payload)


def recv_frame(sock):
    magic, kind, length, crc = struct.unpack("<IB3xII", recv_exact(sock, 16))
    assert magic == FRAME_MAGIC
    payload = recv_exact(sock, length)
    assert zlib.crc32(payload) == crc
    return kind, payload


def ask(sock, message):
    send_frame(sock, CONTROL, json.dumps(message).encode())
    try:
        _, payload = recv_frame(sock)
        return json.loads(payload)
    except (ConnectionError, ssl.SSLError, OSError) as e:
        return {"closed": type(e).__name__}


def record(seq, vpg_id, r):
    kind = KIND[r["kind"]]
    volume, offset, length, payload = r.get("volume", 0), r.get("offset", 0), 0, b""
    if r["kind"] == "write":
        payload = bytes([r.get("byte", 0x5A)]) * r["length"]
        length = len(payload)
    elif r["kind"] == "zero":
        length = r["length"]
    elif r["kind"] == "stream_start":
        payload = struct.pack("<QI", int(time.time() * 1000), r["stream_id"])
    head = struct.pack("<IB3xQIIQQII", RECORD_MAGIC, kind, seq, vpg_id, volume, offset, length, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def batch(cport, dport, cert, key, vpg, volumes, records):
    vpg_id = zlib.crc32(vpg.encode())
    stream_id = next((r["stream_id"] for r in records if r["kind"] == "stream_start"), 1)
    control = connect(cport, cert, key)
    hello = {"type": "hello", "protocol": 2, "vpg": vpg, "vpg_id": vpg_id, "volumes": volumes, "sender": "", "stream_id": stream_id}
    welcome = ask(control, hello)
    print(json.dumps(welcome), flush=True)
    if welcome.get("type") != "welcome":
        return
    data = connect(dport, cert, key)
    send_frame(data, CONTROL, json.dumps({"type": "attach", "vpg": vpg, "session": welcome["session"]}).encode())
    first = welcome["durable_seq"] + 1
    raw = b"".join(record(first + i, vpg_id, r) for i, r in enumerate(records))
    header = struct.pack("<QQIB3xII", first, first + len(records) - 1, len(records), 0, len(raw), zlib.crc32(raw))
    send_frame(data, BATCH, header + raw)
    try:
        _, payload = recv_frame(data)
        print(payload.decode(), flush=True)
    except (ConnectionError, ssl.SSLError, OSError) as e:
        print(json.dumps({"closed": type(e).__name__}), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ask":
        print(json.dumps(ask(connect(int(args[0]), args[1], args[2]), json.loads(args[3]))), flush=True)
    elif cmd == "batch":
        batch(int(args[0]), int(args[1]), args[2], args[3], args[4], json.loads(args[5]), json.loads(args[6]))
    else:
        sys.exit(__doc__)
