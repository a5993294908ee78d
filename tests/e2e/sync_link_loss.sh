#!/usr/bin/env bash
# Sync mode when the link is lost: production is not held hostage. A FLUSH
# waits for the recovery journal at most `sync_timeout`; then sync mode is
# suspended (status, log), that FLUSH and the ones after it return once the
# write is in the protected log, and sync mode resumes by itself once the
# link has caught up: a FLUSH after that is in the recovery journal again
# (kill -9, log deleted, `head` still holds it; the 150 ms one-way latency
# means a write the FLUSH did not wait for is not there yet). With
# `sync_timeout = "never"` a FLUSH waits for the link for as long as it is
# down, and returns once it is back. Status says "suspended" until the
# journal holds every write a FLUSH let go meanwhile.
source "$(dirname "$0")/../lib/common.sh"

# flush_write PATTERN [TIMEOUT]: writes 64 KiB of PATTERN at PATTERN x 64 KiB
# and FLUSHes; prints the seconds the FLUSH took.
flush_write() {
    python3 - "$NBD_PORT" "$1" "${2:-40}" <<'PY'
import sys, time
from nbdclient import Client
port, pattern, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
c = Client("127.0.0.1", port, "disk0", timeout=timeout)
c.write(pattern << 16, bytes([pattern]) * 65536)
t = time.monotonic()
c.flush()
print(f"{time.monotonic() - t:.2f}")
PY
}

# in_head PATTERN...: kill -9 the protected agent, delete its log, restore
# `head`, and check it holds each PATTERN's write.
in_head() {
    local p
    kill9 "$PROTECTED_PID"
    rm -rf "$WORK/a/data/log" "$WORK/out"
    restore_to head "$WORK/out"
    for p in "$@"; do
        python3 - "$WORK/out/disk0.img" "$p" <<'PY' || fail "the write of pattern $p, flushed, is not in the recovery journal"
import sys
d, p = open(sys.argv[1], "rb").read(), int(sys.argv[2])
sys.exit(0 if d[p << 16:(p << 16) + 65536] == bytes([p]) * 65536 else 1)
PY
    done
}

# Bitmap mode off: "never" requires it (a write only marked is in no record
# a FLUSH could wait for), and the first part does not fill the log.
USE_PROXY=1 VPG_TOML='sync_timeout = "3s"' BITMAP_TOML=$'[vpg.bitmap]\nenabled = false' setup_pair sync 1000 disk0:16M
start_wan_link --latency-ms 150
start_recovery
start_protected
wait_replicated 60

echo blackhole >"$WORK/cut"
took=$(flush_write $((0x41))) || fail "a FLUSH in sync mode with the link down did not return within 40 s"
log "link down: the FLUSH returned after $took s"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) >= 2.5 else 1)" "$took" ||
    fail "the FLUSH returned after $took s: it did not wait for the recovery journal first"
wait_status protected "sync:.*SUSPENDED"
grep -q "sync mode suspended" "$WORK/protected.log" || fail "the protected log does not say sync mode was suspended"
took=$(flush_write $((0x42))) || fail "a FLUSH while sync mode is suspended did not return"
log "sync suspended: the next FLUSH returned after $took s"
# The capture state says a FLUSH was let go: a start, the link still
# down, shows sync mode unconfirmed until the journal has caught up.
kill9 "$PROTECTED_PID"
start_protected
st=$(fresh_status_json protected) || fail "no status from the restarted protected agent"
jq -e '.vpgs[0].sync_suspended.why | test("unconfirmed since the start")' <<<"$st" >/dev/null ||
    fail "a start after FLUSHes were let go does not show sync mode unconfirmed: $(jq -c '.vpgs[0].sync_suspended' <<<"$st")"

rm -f "$WORK/cut"
for _ in $(seq 1 150); do
    "$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "SUSPENDED" || break
    sleep 0.2
done
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "SUSPENDED" && fail "sync mode was not resumed within 30 s of the link's return"
grep -q "sync mode resumed" "$WORK/protected.log" || fail "the protected log does not say sync mode resumed"
took=$(flush_write $((0x43))) || fail "a FLUSH after sync mode resumed did not return"
log "link back, sync resumed: the FLUSH took $took s"
# The gate was strict again at that FLUSH, and the capture state says so:
# a start with the link down is not reported suspended (before, it was,
# "unconfirmed since the start", until the first acknowledgement).
kill9 "$PROTECTED_PID"
echo blackhole >"$WORK/cut"
start_protected
st=$(fresh_status_json protected) || fail "no status from the restarted protected agent"
jq -e '.vpgs[0].sync_suspended == null' <<<"$st" >/dev/null ||
    fail "a start after sync mode resumed reports it suspended: $(jq -c '.vpgs[0].sync_suspended' <<<"$st")"
rm -f "$WORK/cut"
in_head $((0x41)) $((0x42)) $((0x43))
log "every flushed write is in the recovery journal, the last one waited for it"

# Strict: the FLUSH waits for the link however long it is down.
sed -i 's/^sync_timeout = .*/sync_timeout = "never"/' "$WORK/protected.toml"
start_protected
wait_replicated 60
echo blackhole >"$WORK/cut"
flush_write $((0x44)) 60 >"$WORK/strict.took" &
writer=$!
sleep 6
kill -0 "$writer" 2>/dev/null || fail "with sync_timeout = \"never\" a FLUSH returned while the link was down"
"$TIDEMARK" status --config "$WORK/protected.toml" | grep -q "SUSPENDED" && fail "sync_timeout = \"never\" suspended sync mode"
rm -f "$WORK/cut"
wait "$writer" || fail "with sync_timeout = \"never\" the FLUSH did not return once the link was back"
log "strict: the FLUSH waited $(cat "$WORK/strict.took") s, until the link was back"
in_head $((0x44))
log "sync mode bounds a FLUSH's wait for a lost link, resumes by itself, and waits for good when told to"
