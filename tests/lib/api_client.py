"""A client of the management API (4006) for the tests: real HTTPS (TLS 1.3
only), the appliance certificate pinned by its sha256 fingerprint as
`tidemark fingerprint` prints it, JSON in and out, and TOTP codes computed
from an enrolment URI (RFC 6238, SHA-1, six digits, 30 s), as an
authenticator app does.
"""
import base64
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import struct
import time
import urllib.parse


def totp_secret(uri):
    """The base32 secret of an otpauth:// URI, as bytes."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    secret = query["secret"][0]
    return base64.b32decode(secret + "=" * (-len(secret) % 8))


def totp(secret, at=None, step_offset=0):
    step = int((time.time() if at is None else at) // 30) + step_offset
    mac = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    word = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return "%06d" % (word % 1_000_000)


def tls_context(max_version=ssl.TLSVersion.TLSv1_3, min_version=ssl.TLSVersion.TLSv1_3):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    # The certificate is self-signed: it is pinned instead (see `connect`).
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = min_version
    ctx.maximum_version = max_version
    return ctx


class Api:
    def __init__(self, host, port, fingerprint, source=None, timeout=60):
        self.host, self.port, self.fingerprint = host, port, fingerprint
        self.source, self.timeout = source, timeout
        # The last TOTP step this client logged each user in with.
        self.used_steps = {}

    def connect(self):
        conn = http.client.HTTPSConnection(
            self.host, self.port, context=tls_context(), timeout=self.timeout,
            source_address=(self.source, 0) if self.source else None)
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        got = "sha256:" + hashlib.sha256(der).hexdigest()
        if got != self.fingerprint:
            raise ssl.SSLError("certificate %s is not the pinned %s" % (got, self.fingerprint))
        return conn

    def call(self, method, path, body=None, token=None, raw=None, headers=None):
        """(status, parsed JSON or None, response headers)."""
        conn = self.connect()
        try:
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = "Bearer " + token
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            if data is not None:
                sent["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            text = response.read()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = {"raw": text.decode(errors="replace")}
            return response.status, parsed, dict(response.getheaders())
        finally:
            conn.close()

    def login(self, user, password, secret=None, code=None):
        body = {"user": user, "password": password}
        if code is not None:
            body["totp"] = code
        elif secret is not None:
            body["totp"] = totp(secret)
        return self.call("POST", "/api/v1/login", body)

    def session(self, user, password, secret=None):
        """Logs in and returns the session's bearer value (or raises). A
        TOTP user takes this step's code, or the next step's (the server
        allows one step of drift), whichever is after the last step this
        client used for them, waiting for a fresh step if need be: a code
        is never accepted twice."""
        code = None
        if secret is not None:
            used = self.used_steps.get(user, -1)
            while True:
                now = int(time.time() // 30)
                step = next((s for s in (now, now + 1) if s > used), None)
                if step is not None:
                    break
                time.sleep(30 - time.time() % 30 + 0.2)
            code = totp(secret, at=step * 30)
            self.used_steps[user] = step
        status, answer, _ = self.login(user, password, code=code)
        if status != 200:
            raise RuntimeError("login of %s failed: %s %s" % (user, status, answer))
        self.last_code = code
        return answer["token"]


def raw_exchange(host, port, data, tls=True, max_version=ssl.TLSVersion.TLSv1_3,
                 min_version=ssl.TLSVersion.TLSv1_3, wait=5):
    """Sends bytes on a fresh connection; returns what came back before the
    server closed it or `wait` seconds passed (b"" for a closed one). A TLS
    handshake failure is returned as the string "handshake failed: ..."."""
    sock = socket.create_connection((host, port), timeout=max(wait, 10))
    try:
        if tls:
            try:
                sock = tls_context(max_version, min_version).wrap_socket(sock)
            except (ssl.SSLError, OSError) as e:
                return "handshake failed: %s" % e
        sock.sendall(data)
        sock.settimeout(wait)
        got = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ssl.SSLError, ConnectionResetError):
            pass
        return got
    finally:
        sock.close()
