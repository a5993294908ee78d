#!/usr/bin/env bash
# The token-bucket throttle caps the link: with a 4 MB/s cap, 16 MiB of
# incompressible writes cannot reach the journal in less than ~4 s. Only a
# lower bound on time is checked (a busy machine can only make it slower),
# and the same writes without a cap show the bound is not trivially met.
source "$(dirname "$0")/../lib/common.sh"

replicate_seconds() {
    head -c $((16 << 20)) /dev/urandom >"$WORK/chunk"
    local start end
    start=$(date +%s.%N)
    python3 - "$NBD_PORT" "$WORK/chunk" <<'PY'
import sys
from nbdclient import Client
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()
c = Client("127.0.0.1", port, "disk0")
for i in range(0, len(data), 1 << 20):
    c.write(i, data[i:i + (1 << 20)])
c.flush(); c.close()
PY
    wait_replicated 120
    end=$(date +%s.%N)
    python3 -c "print('%.1f' % ($end - $start))"
}

# run_with_cap BYTES_PER_SEC: a fresh pair with that cap; the seconds 16 MiB
# took go to $took, and the restored replica must equal the source.
run_with_cap() {
    rm -rf "$WORK/a" "$WORK/b" "$WORK/src" "$WORK/out"
    THROTTLE=$1 setup_pair async 1000 disk0:32M
    start_recovery
    start_protected
    wait_replicated 60
    took=$(replicate_seconds)
    restore_to latest "$WORK/out"
    cmp "$WORK/out/disk0.img" "$WORK/src/disk0.img" || fail "replica with cap $1 differs"
    kill9 "$PROTECTED_PID" "$RECOVERY_PID"
}

run_with_cap 4000000
capped=$took
python3 -c "import sys; sys.exit(0 if $capped >= 3.5 else 1)" || fail "16 MiB crossed a 4 MB/s cap in ${capped}s"
run_with_cap 0
free=$took
python3 -c "import sys; sys.exit(0 if $free < $capped else 1)" || fail "uncapped run (${free}s) was not faster than capped (${capped}s)"
log "16 MiB: ${capped}s with a 4 MB/s cap, ${free}s without"
