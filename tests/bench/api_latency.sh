#!/usr/bin/env bash
# Management API latency (issue 17's bench): p50/p99 of `GET status` and
# `GET vpgs/V/checkpoints` over real HTTPS (a new TLS 1.3 connection per
# request, as the remote CLI makes) against a recovery agent holding 50
# VPGs and 10,000 checkpoints (one VPG with 9,510, 49 with 10 each:
# synthetic journals from the test build's bench-journal). The peer, in the
# same run: the same reads by the local CLI on the appliance (`tidemark
# status --json`, `tidemark checkpoints --json`), a process each. Writes
# tests/bench/API.md; asserts nothing (the machine is shared and noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PORT_BASE=36800
source tests/lib/common.sh
OUT=tests/bench/API.md
RUNS=${API_BENCH_RUNS:-100}
API=127.0.0.4

FP=$("$TIDEMARK" keygen --dir "$WORK/keys" --name bench | tail -n1)
cat >"$WORK/recovery.toml" <<TOML
role = "recovery"
$(node_toml bench "$WORK")
[listen]
address = "127.0.0.1"
control_port = $CONTROL_PORT
data_port = $DATA_PORT
peer_fingerprints = ["$FP"]
[api]
listen = "$API:4006"
TOML
JROOT=$WORK/data/journal
mkdir -p "$JROOT"
log "synthetic journals: 50 VPGs, 10,000 checkpoints"
"$TIDEMARK_TEST" bench-journal --journal-root "$JROOT" --vpg v00 --volume-size 64MiB --bytes 256MiB --checkpoints 9510 >/dev/null
for i in $(seq 1 49); do
    "$TIDEMARK_TEST" bench-journal --journal-root "$JROOT" --vpg "v$(printf %02d "$i")" --volume-size 16MiB --bytes 4MiB --checkpoints 10 >/dev/null
done
TOKEN=$("$TIDEMARK_TEST" token add --config "$WORK/recovery.toml" bench --role viewer --expires 1h --assume-console 2>/dev/null)
start_recovery
for _ in $(seq 1 100); do
    [ "$("$TIDEMARK" status --config "$WORK/recovery.toml" --json 2>/dev/null | jq '.vpgs | length')" = 50 ] && break
    sleep 0.2
done
vpgs=$("$TIDEMARK" status --config "$WORK/recovery.toml" --json | jq '.vpgs | length')
listed=$("$TIDEMARK" checkpoints --config "$WORK/recovery.toml" --vpg v00 --json 2>/dev/null | jq length)
log "the agent reports $vpgs VPGs; v00 lists $listed checkpoints"

export API FP TOKEN RUNS TIDEMARK CONFIG="$WORK/recovery.toml"
python3 - >"$WORK/rows" <<'PY'
import os, statistics, subprocess, time
from api_client import Api
E = os.environ
api = Api(E["API"], 4006, E["FP"])
runs = int(E["RUNS"])

def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

def timed(f):
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        samples.append((time.perf_counter() - t0) * 1000)
    return pct(samples, 50), pct(samples, 99)

def api_get(path):
    def go():
        status, body, _ = api.call("GET", path, token=E["TOKEN"])
        assert status == 200, (status, body)
    return go

def cli(*args):
    def go():
        subprocess.run([E["TIDEMARK"], *args, "--config", E["CONFIG"], "--json"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return go

for name, remote, local in [
    ("status (50 VPGs)", api_get("/api/v1/status"), cli("status")),
    ("checkpoints (v00)", api_get("/api/v1/vpgs/v00/checkpoints"), cli("checkpoints", "--vpg", "v00")),
]:
    a50, a99 = timed(remote)
    l50, l99 = timed(local)
    print("| %s | %.1f ms | %.1f ms | %.1f ms | %.1f ms | %.2f× |" % (name, a50, a99, l50, l99, a50 / l50))
# Where the checkpoint list's time goes: the same request by curl, which
# does not parse the 9,510 entries (the API's side alone, plus a process).
def curl():
    subprocess.run(["curl", "-sk", "--tlsv1.3", "-o", "/dev/null", "-H", "Authorization: Bearer " + E["TOKEN"],
                    "https://%s:4006/api/v1/vpgs/v00/checkpoints" % E["API"]], check=True)
c50, c99 = timed(curl)
print("| checkpoints (v00) by curl, not parsed | %.1f ms | %.1f ms | | | |" % (c50, c99))
PY
{
    echo "# Management API latency (tests/bench/api_latency.sh)"
    echo
    echo "$(date -u +%Y-%m-%d), 2 host cores. A recovery agent with $vpgs VPGs and 10,000 checkpoints"
    echo "(v00 lists $listed). $RUNS requests each, one new TLS 1.3 connection per request (Python's"
    echo "client, certificate pinned, a viewer token). Peer: the same read by the local CLI, one process"
    echo "each (\`tidemark status --json\`, \`tidemark checkpoints --json\`)."
    echo
    echo "| read | API p50 | API p99 | local CLI p50 | local CLI p99 | API/CLI p50 |"
    echo "|---|---|---|---|---|---|"
    cat "$WORK/rows"
} >"$OUT"
cat "$OUT"
