#!/usr/bin/env bash
# Logging goes to journald when its socket exists, and to capped files
# otherwise. This machine runs no journald, so the test binds a datagram
# socket at journald's path in a private mount namespace (/run is a tmpfs
# there; the host's /run is untouched) and reads what tidemark sends in the
# native journal protocol.
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/netns.sh"

make_netns
write_appliance_configs

cat >"$WORK/journald.py" <<'PY'
# A stand-in journald: receives native-protocol datagrams (KEY=value lines,
# or KEY, newline, 64-bit little-endian length, value) and writes each
# message as KEY=value lines followed by "--".
import os, socket, struct, sys
os.makedirs("/run/systemd/journal", exist_ok=True)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("/run/systemd/journal/socket")
open(sys.argv[2], "w").close()  # ready
s.settimeout(5)

def fields(data):
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n", "value not followed by a newline"
            i = nl + 10 + size
        yield key.decode(), value.decode()

with open(sys.argv[1], "a") as out:
    while True:
        try:
            data = s.recv(1 << 20)
        except socket.timeout:
            break
        for key, value in fields(data):
            out.write(f"{key}={value}\n")
        out.write("--\n")
        out.flush()
PY

log "harden with a journald socket present"
in_app unshare --mount bash -c "
    mount -t tmpfs tmpfs /run
    python3 '$WORK/journald.py' '$WORK/journal.txt' '$WORK/ready' &
    for i in \$(seq 1 50); do [ -e '$WORK/ready' ] && break; sleep 0.1; done
    '$TIDEMARK' harden --config '$WORK/recovery.toml' >'$WORK/out' 2>&1
    wait
" || fail "harden under a journald socket failed: $(cat "$WORK/out")"
grep -q "^MESSAGE=harden: firewall applied" "$WORK/journal.txt" || fail "journald got no harden message"
grep -q "^PRIORITY=[0-7]$" "$WORK/journal.txt" || fail "journald messages carry no priority"
grep -q "^SYSLOG_IDENTIFIER=tidemark$" "$WORK/journal.txt" || fail "journald messages carry no identifier"
[ ! -e "$WORK/logs/tidemark.log" ] || fail "with journald present tidemark also wrote files"
log "journald received $(grep -c '^--$' "$WORK/journal.txt") messages"

log "without journald: capped files in the log dir"
in_app "$TIDEMARK" harden --config "$WORK/recovery.toml" >"$WORK/out" 2>&1 || fail "harden failed: $(cat "$WORK/out")"
grep -q "harden: firewall applied" "$WORK/logs/tidemark.log" || fail "no log file without journald"
log "an unusable log dir: a warning, and the log still reaches stderr"
touch "$WORK/not-a-dir"
sed "s|^dir = .*|dir = \"$WORK/not-a-dir/logs\"|" "$WORK/recovery.toml" >"$WORK/badlog.toml"
"$TIDEMARK" diag --config "$WORK/badlog.toml" --out "$WORK/bundle.tar.zst" >"$WORK/out" 2>&1 || fail "diag failed: $(cat "$WORK/out")"
grep -q "warning: logging to stderr only: creating log dir" "$WORK/out" || fail "no warning: $(cat "$WORK/out")"
grep -q "INFO diagnostics bundle written to" "$WORK/out" || fail "log lines were lost: $(cat "$WORK/out")"
log "PASS: journald when present, files otherwise, stderr when neither works"
