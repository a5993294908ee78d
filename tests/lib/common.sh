# Shared helpers for end-to-end tests. Each test sources this, calls
# `setup_pair`, drives real binaries and real NBD clients, and fails with
# `fail "why"`. Everything a test starts is killed on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TIDEMARK=${TIDEMARK:-$ROOT/build/tidemark}
# The same agent with failpoints (FAILPOINTS=name=action,...): crashes and
# failures at exact points. Tests that use it set AGENT_BIN to it.
TIDEMARK_TEST=${TIDEMARK_TEST:-$ROOT/build/test/tidemark}
WANPROXY=${WANPROXY:-$ROOT/target/release/wanproxy}
export PYTHONPATH=$ROOT/tests/lib
# Each test gets its own ports (the runner sets PORT_BASE).
PORT_BASE=${PORT_BASE:-31000}
CONTROL_PORT=$((PORT_BASE + 1))
DATA_PORT=$((PORT_BASE + 2))
NBD_PORT=$((PORT_BASE + 3))
PROXY_CONTROL_PORT=$((PORT_BASE + 4))
PROXY_DATA_PORT=$((PORT_BASE + 5))
NBD_URI=nbd://127.0.0.1:$NBD_PORT

WORK=$(mktemp -d /tmp/tidemark-e2e.XXXXXX)
PIDS=()
# Commands run at exit after the processes are killed (netns removal...).
CLEANUP_HOOKS=()
cleanup() {
    local pid hook
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    # Whatever else names the work dir (a support SSH server, its warden).
    pkill -9 -f "$WORK/" 2>/dev/null || true
    { wait; } 2>/dev/null || true
    for hook in "${CLEANUP_HOOKS[@]}"; do eval "$hook" 2>/dev/null || true; done
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work dir kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for f in "$WORK"/*.log; do
        [ -f "$f" ] || continue
        echo "--- tail of $(basename "$f")" >&2
        tail -n 25 "$f" >&2
    done
    exit 1
}

log() { echo "[$(date +%H:%M:%S)] $*"; }

# A command that fails outside `|| fail ...` ends the test (set -e): say
# which, so no test ends without a reason.
trap 'echo "FAIL: line $LINENO of ${0##*/}: \`$BASH_COMMAND\` exited $?" >&2' ERR

# node_toml NAME DIR: the [node] table of an agent whose keys and data are in DIR.
node_toml() {
    printf '[node]\nname = "%s"\ndata_dir = "%s/data"\ncert = "%s/keys/cert.pem"\nkey = "%s/keys/key.pem"\n' "$1" "$2" "$2" "$2"
}

# recovery_head NAME DIR ADDRESS FINGERPRINT: the start of a recovery
# agent's config (default ports, one pinned peer); tables follow.
recovery_head() {
    printf 'role = "recovery"\n%s\n[listen]\naddress = "%s"\npeer_fingerprints = ["%s"]\n' \
        "$(node_toml "$1" "$2")" "$3" "$4"
}

# protected_head NAME DIR NBD_LISTEN PEER_ADDRESS FINGERPRINT: the start of
# a protected agent's config, ending inside its [peer] table (more peer
# keys may follow); then [log], [[vpg]] and the rest.
protected_head() {
    printf 'role = "protected"\n%s\n[capture]\nlisten = "%s"\n[peer]\naddress = "%s"\nfingerprint = "%s"\n' \
        "$(node_toml "$1" "$2")" "$3" "$4" "$5"
}

# setup_pair MODE INTERVAL_MS VOLUME_SPEC...
# VOLUME_SPEC is name:size (e.g. disk0:64M); files live in $WORK/src/.
# Peer addresses go through the WAN proxy when USE_PROXY=1. BITMAP_TOML is
# added to the [[vpg]] table (e.g. a [vpg.bitmap] table). The log is
# LOG_CAPACITY bytes (default 1 GiB), preallocated if LOG_PREALLOCATE=true:
# off by default here, where it would zero-fill 1 GiB for each test; the
# tests of small and full logs turn it on, as the product has it. Set
# empty, the key is left out (the agent's default, and builds older than it).
prealloc_line() {
    local p=${LOG_PREALLOCATE-false}
    [ -z "$p" ] || echo "preallocate = $p"
}

setup_pair() {
    local mode=$1 interval=$2
    shift 2
    mkdir -p "$WORK/src" "$WORK/a" "$WORK/b"
    FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name site-a | tail -n1)
    FP_B=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name site-b | tail -n1)
    local peer_control=$CONTROL_PORT peer_data=$DATA_PORT
    if [ "${USE_PROXY:-0}" = 1 ]; then
        peer_control=$PROXY_CONTROL_PORT
        peer_data=$PROXY_DATA_PORT
    fi
    cat > "$WORK/recovery.toml" <<TOML
role = "recovery"
$(node_toml site-b "$WORK/b")
[listen]
address = "127.0.0.1"
control_port = $CONTROL_PORT
data_port = $DATA_PORT
peer_fingerprints = ["$FP_A"]
[logging]
dir = "$WORK/b/logs"
TOML
    cat > "$WORK/protected.toml" <<TOML
$(protected_head site-a "$WORK/a" "127.0.0.1:$NBD_PORT" 127.0.0.1 "$FP_B")
control_port = $peer_control
data_port = $peer_data
throttle_bytes_per_sec = ${THROTTLE:-0}
[log]
capacity_bytes = ${LOG_CAPACITY:-1073741824}
$(prealloc_line)
[logging]
dir = "$WORK/a/logs"
[[vpg]]
name = "vpg1"
mode = "$mode"
checkpoint_interval_ms = $interval
${VPG_TOML:-}
${BITMAP_TOML:-}
TOML
    local spec name size
    for spec in "$@"; do
        name=${spec%%:*}
        size=${spec#*:}
        [ -f "$WORK/src/$name.img" ] || truncate -s "$size" "$WORK/src/$name.img"
        cat >> "$WORK/protected.toml" <<TOML
[[vpg.volume]]
name = "$name"
path = "$WORK/src/$name.img"
TOML
    done
}

# served_pair VOLUME_SPEC...: setup_pair (async, a checkpoint a second)
# with each source volume first filled with random data, and the recovery
# side serving failed-over volumes on $EXPORTS (port $EXPORT_PORT).
served_pair() {
    local spec
    EXPORT_PORT=$((PORT_BASE + 6))
    EXPORTS=nbd://127.0.0.1:$EXPORT_PORT
    mkdir -p "$WORK/src"
    for spec in "$@"; do head -c "${spec#*:}" /dev/urandom >"$WORK/src/${spec%%:*}.img"; done
    setup_pair async 1000 "$@"
    printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
}

# small_data_disk SIDE SIZE: the data directory of site SIDE (a or b) on a
# tmpfs of SIZE (e.g. 48M), unmounted at the end: a disk that fills.
small_data_disk() {
    mkdir -p "$WORK/$1/data"
    mount -t tmpfs -o size="$2" tmpfs "$WORK/$1/data" || fail "cannot mount a tmpfs"
    CLEANUP_HOOKS+=("umount -l $WORK/$1/data")
}

# exported_pair [WANPROXY ARGS...]: vpg1 (async) with disk0, 64 MiB of
# random data, through tests/wanproxy (started with the args), the recovery
# side serving recovered volumes on $EXPORT_PORT; both agents started and
# the disk replicated.
exported_pair() {
    mkdir -p "$WORK/src"
    head -c $((64 << 20)) /dev/urandom >"$WORK/src/disk0.img"
    USE_PROXY=1 setup_pair async 1000 disk0:64M
    printf '[exports]\nlisten = "127.0.0.1:%s"\n' "$EXPORT_PORT" >>"$WORK/recovery.toml"
    start_wan_link "$@"
    start_recovery
    start_protected
    wait_replicated 90
}

wait_port() {
    local port=$1 i
    for i in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    fail "nothing listens on port $port"
}

# start_agent ROLE PORT [NETNS]: runs `tidemark ROLE` with $WORK/ROLE.toml in
# the background (inside network namespace NETNS if given) and waits until
# it listens on PORT; its pid is left in $AGENT_PID.
start_agent() {
    local role=$1 port=$2 netns=${3:-}
    local run=()
    [ -n "$netns" ] && run=(ip netns exec "$netns")
    "${run[@]}" "${AGENT_BIN:-$TIDEMARK}" "$role" --config "$WORK/$role.toml" >>"$WORK/$role.log" 2>&1 &
    AGENT_PID=$!
    disown "$AGENT_PID"
    PIDS+=("$AGENT_PID")
    if [ -z "$netns" ]; then
        wait_port "$port"
        return
    fi
    local i
    for i in $(seq 1 100); do
        # Not a connect: a firewall may (rightly) drop even loopback.
        [ -n "$(ip netns exec "$netns" ss -Hltn "sport = :$port")" ] && return 0
        sleep 0.1
    done
    fail "tidemark $role does not listen on $port in $netns"
}
# kill9 PID...: SIGKILL and wait until each process is gone (its ports free).
kill9() {
    local pid
    for pid in "$@"; do kill -9 "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    done
}

# start_wan_link [WANPROXY ARGS...]: tests/wanproxy between the proxy ports
# and the recovery agent's control and data ports (a USE_PROXY=1 pair goes
# through it), e.g. --latency-ms 10 --bandwidth-bps 400000000. The link is
# cut while $WORK/cut holds `blackhole`; $WORK/proxy.json counts the bytes.
start_wan_link() {
    "$WANPROXY" --map "$PROXY_CONTROL_PORT=127.0.0.1:$CONTROL_PORT" --map "$PROXY_DATA_PORT=127.0.0.1:$DATA_PORT" \
        --cut-file "$WORK/cut" --stats "$WORK/proxy.json" "$@" >"$WORK/proxy.log" 2>&1 &
    PIDS+=($!)
    disown "$!" # no "Killed" line from bash when cleanup stops it
    wait_port "$PROXY_DATA_PORT"
}

# gone PID: waits up to 10 s for an agent that hit its failpoint to be gone.
gone() {
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    fail "the agent did not stop at its failpoint"
}

start_recovery() { start_agent recovery "$CONTROL_PORT"; RECOVERY_PID=$AGENT_PID; }
start_protected() { start_agent protected "$NBD_PORT"; PROTECTED_PID=$AGENT_PID; }

status_json() { "$TIDEMARK" status --json --config "$WORK/$1.toml" 2>/dev/null; }

# fresh_status_json ROLE: the status once the agent has rewritten it
# (once a second) after this call, so it reflects everything before it;
# status 1 if it was not rewritten within 5 s. Called as $(...), so the
# caller fails the test: `fail` here would only end the subshell.
fresh_status_json() {
    local since st
    since=$(($(date +%s%3N) + 50))
    for _ in $(seq 1 50); do
        st=$(status_json "$1")
        [ "$(jq -r '.updated_ms' <<<"$st")" -gt "$since" ] 2>/dev/null && { echo "$st"; return 0; }
        sleep 0.1
    done
    return 1
}

# wait_status ROLE REGEX: `tidemark status` (rewritten every second)
# shows REGEX within 6 s.
wait_status() {
    local role=$1 regex=$2
    for _ in $(seq 1 30); do
        grep -q "$regex" <<<"$("$TIDEMARK" status --config "$WORK/$role.toml")" && return 0
        sleep 0.2
    done
    fail "$role status does not show /$regex/: $("$TIDEMARK" status --config "$WORK/$role.toml")"
}

# Waits until the recovery journal holds a complete checkpoint taken after
# everything the protected side has appended so far.
wait_replicated() {
    local timeout=${1:-120} head i cp st
    st=$(fresh_status_json protected) || fail "the protected agent's status was not rewritten within 5 s"
    head=$(jq -r '.vpgs[0].head_seq' <<<"$st")
    # The recovery agent's status (rewritten every second) names its newest
    # checkpoint; "protected" means every volume's initial copy is in, so
    # that checkpoint is complete. Cheap, unlike listing the journal.
    for i in $(seq 1 $((timeout * 5))); do
        cp=$(status_json recovery | jq -r '.vpgs[0] | select(.state == "protected") | .last_checkpoint.id // 0' 2>/dev/null || echo 0)
        if [ -n "$cp" ] && [ "$cp" -gt "$head" ] 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    fail "no complete checkpoint after seq $head within ${timeout}s"
}

# The recovery journal of vpg1: its directory, its segments' bytes on disk
# and the seq the replica holds.
JDIR=$WORK/b/data/journal/vpg1
journal_bytes() { find "$JDIR" -maxdepth 1 -name '*.tmjrn' -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
applied_seq() { jq -r '.applied_seq' "$JDIR/apply.json" 2>/dev/null || echo 0; }

# bitmap_field FIELD: the protected VPG's bitmap.FIELD in status ("none"
# while it logs).
bitmap_field() { status_json protected | jq -r ".vpgs[0].bitmap.$1 // \"none\""; }

# wait_mode MODE SECONDS WHAT: within SECONDS the protected VPG's bitmap
# mode is MODE ("none" while it logs); else fails saying WHAT, with status.
wait_mode() {
    local i
    for i in $(seq 1 $(($2 * 5))); do
        [ "$(bitmap_field mode)" = "$1" ] && return 0
        sleep 0.2
    done
    fail "$3: $("$TIDEMARK" status --config "$WORK/protected.toml")"
}

# fill_data_disk SIDE: another file ($WORK/SIDE/data/filler) takes every
# block left on site SIDE's data disk (`small_data_disk`).
fill_data_disk() {
    dd if=/dev/zero of="$WORK/$1/data/filler" bs=4k 2>/dev/null || true
    [ "$(df --output=avail -B1 "$WORK/$1/data" | tail -1)" -eq 0 ] || fail "the disk still has room: the test proves nothing"
}

# failover_to CHECKPOINT: fails vpg1 over to CHECKPOINT at the recovery
# site, and waits until the protected site heard it (refuses writes).
failover_to() {
    "$TIDEMARK" failover --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$1" >/dev/null || fail "failover failed"
    for _ in $(seq 1 50); do
        qemu-io -f raw -c "write -P 1 0 512" "$NBD_URI/disk0" >/dev/null 2>&1 || return 0
        sleep 0.2
    done
    fail "the protected site still takes writes 10 s after the failover"
}

# Reverse protection of vpg1 with disk0 and disk1 (served on $EXPORTS):
# change_two_volumes changes one extent of disk0 and 16 MiB of disk1 on the
# recovered side (disk1's copy then comes in a later batch than disk0's);
# reverse_until_gone PID WHAT starts reverse and waits until the agent PID
# (stopped by a failpoint) is gone, else fails saying WHAT;
# reverse_in_sync WHAT waits until reverse is in sync and both volumes
# equal the recovery site's.
change_two_volumes() {
    head -c 64K /dev/urandom >"$WORK/change0"
    head -c 16M /dev/urandom >"$WORK/change1"
    qio_check "$EXPORTS/vpg1/disk0" "write -s $WORK/change0 1M 64k" flush
    qio_check "$EXPORTS/vpg1/disk1" "write -s $WORK/change1 8M 16M" flush
}
reverse_until_gone() {
    "$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 1s >/dev/null 2>&1 || true
    for _ in $(seq 1 150); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.2
    done
    fail "$2"
}
reverse_in_sync() {
    local out cmp d
    out=$("$TIDEMARK" reverse --config "$WORK/protected.toml" --vpg vpg1 --wait 60s 2>&1) ||
        fail "$1: $out; $("$TIDEMARK" status --config "$WORK/protected.toml" | grep -i reverse)"
    for d in disk0 disk1; do
        cmp=$(qemu-img compare -f raw -F raw "$WORK/src/$d.img" "$EXPORTS/vpg1/$d" 2>&1) || fail "$d differs: $cmp"
    done
}

# restore_equal CHECKPOINT REFERENCE WHAT: vpg1's disk0 restored at
# CHECKPOINT equals the file REFERENCE.
restore_equal() {
    rm -rf "$WORK/out"
    restore_to "$1" "$WORK/out"
    cmp -s "$WORK/out/disk0.img" "$2" || fail "$3: checkpoint $1 does not restore equal to $2"
}

restore_to() {
    local checkpoint=$1 out=$2
    "$TIDEMARK" restore --config "$WORK/recovery.toml" --vpg vpg1 --checkpoint "$checkpoint" --out "$out" >"$WORK/restore-last.out" 2>&1 ||
        { cat "$WORK/restore-last.out" >&2; fail "restore of $checkpoint failed"; }
}

# same_within SECONDS URI: waits until $WORK/src/disk0.img (an old site's
# volume under reverse protection) equals the recovered volume at URI.
same_within() {
    for _ in $(seq 1 $(($1 * 5))); do
        qemu-img compare -q -f raw -F raw "$WORK/src/disk0.img" "$2" 2>/dev/null && return 0
        sleep 0.2
    done
    fail "the old site did not catch up within $1 s"
}

# qio_check URI CMD... : runs qemu-io commands that must all succeed and
# whose -P pattern checks must all pass.
qio_check() {
    local uri=$1 out
    shift
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    out=$(qemu-io -f raw "${args[@]}" "$uri" 2>&1) || fail "qemu-io ${*} on $uri failed: $out"
    grep -qi "verification failed" <<<"$out" && fail "qemu-io pattern mismatch on $uri (${*}): $out"
    return 0
}
