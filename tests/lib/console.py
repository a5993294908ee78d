"""Drives a guest's serial console (a QEMU chardev socket) like an operator.

    python3 console.py SOCKET login USER PASSWORD COMMAND
        logs in at the getty prompt, runs COMMAND, prints its output and
        exits 0; exits 3 when the login is refused ("Login incorrect").
"""

import socket
import sys
import time

TIMEOUT_S = 60


class Console:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(0.2)
        self.seen = b""

    def send(self, text, end=b"\r"):
        self.sock.sendall(text.encode() + end)

    def expect(self, *needles):
        """Waits until one of needles appears after what was already read."""
        deadline = time.time() + TIMEOUT_S
        while time.time() < deadline:
            for n in needles:
                at = self.seen.find(n.encode())
                if at >= 0:
                    before = self.seen[:at]
                    self.seen = self.seen[at + len(n):]
                    return n, before.decode(errors="replace")
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            self.seen += chunk
        raise SystemExit(f"console: none of {needles} within {TIMEOUT_S} s; last: {self.seen[-300:]!r}")


def login(path, user, password, command):
    c = Console(path)
    c.send("")  # a fresh prompt
    c.expect("login: ")
    c.send(user)
    c.expect("Password: ")
    # A line feed, not a return: under load the password can arrive while
    # the terminal still has getty's settings (no CR-to-NL mapping), and a
    # return then never ends the line (login times out after 60 s).
    c.send(password, end=b"\n")
    found, _ = c.expect("# ", "Login incorrect")
    if found == "Login incorrect":
        return 3
    # The markers are computed by the shell, so the echoed command line
    # (wrapped at the terminal's width) never matches them.
    c.send(f"echo CONSOLE-BEGIN-$((40+1)); {command}; echo CONSOLE-DONE-$((40+2))")
    c.expect("CONSOLE-BEGIN-41")
    _, out = c.expect("CONSOLE-DONE-42")
    print(out.lstrip("\r\n"), end="")
    c.send("exit")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[2] != "login":
        raise SystemExit(__doc__)
    sys.exit(login(sys.argv[1], sys.argv[3], sys.argv[4], sys.argv[5]))
