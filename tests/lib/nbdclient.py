"""A deliberately small NBD client for tests that stock clients cannot do:
sending malformed requests, and writing in a strict order across two
exports. Stock clients (qemu-img, qemu-io, nbdinfo, fio) cover conformance.
"""
import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_GO = 7
OPT_ABORT = 2
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
FLAG_FUA = 1


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


class Client:
    def __init__(self, host, port, export=None, timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        magic, opt, flags = struct.unpack(">QQH", recv_exact(self.sock, 18))
        assert magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting"
        self.sock.sendall(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        self.size = None
        self.handle = 0
        if export is not None:
            self.go(export)

    def option(self, opt, data=b""):
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", recv_exact(self.sock, 20))
        assert magic == REPLY_MAGIC, hex(magic)
        return opt, rtype, recv_exact(self.sock, length)

    def go(self, export):
        name = export.encode()
        self.option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        while True:
            _, rtype, data = self.option_reply()
            if rtype == 3 and struct.unpack(">H", data[:2])[0] == 0:
                self.size = struct.unpack(">Q", data[2:10])[0]
            elif rtype == 1:
                return
            elif rtype & 0x80000000:
                raise RuntimeError("GO refused: %#x %r" % (rtype, data))

    def request(self, cmd, offset, length, flags=0, payload=b"", magic=REQUEST_MAGIC):
        self.handle += 1
        hdr = struct.pack(">IHHQQI", magic, flags, cmd, self.handle, offset, length)
        self.sock.sendall(hdr + payload)
        return self.handle

    def reply(self, read_len=0):
        magic, error, handle = struct.unpack(">IIQ", recv_exact(self.sock, 16))
        assert magic == SIMPLE_REPLY_MAGIC, hex(magic)
        data = recv_exact(self.sock, read_len) if error == 0 and read_len else b""
        return error, handle, data

    def write(self, offset, data, fua=False):
        self.request(CMD_WRITE, offset, len(data), FLAG_FUA if fua else 0, data)
        error, _, _ = self.reply()
        if error:
            raise IOError("write failed: errno %d" % error)

    def read(self, offset, length):
        self.request(CMD_READ, offset, length)
        error, _, data = self.reply(length)
        if error:
            raise IOError("read failed: errno %d" % error)
        return data

    def flush(self):
        self.request(CMD_FLUSH, 0, 0)
        error, _, _ = self.reply()
        if error:
            raise IOError("flush failed: errno %d" % error)

    def close(self):
        try:
            self.request(CMD_DISC, 0, 0)
        except OSError:
            pass
        self.sock.close()
