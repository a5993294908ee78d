# Network namespaces for the hardening tests: an appliance and three
# neighbours, each on its own veth link. Nothing here touches the host's own
# firewall or sysctls; everything is removed at exit.
#
#   mgmt  (MGMT_IP)  ── APP_MGMT_IP   ┐
#   other (OTHER_IP) ── APP_OTHER_IP  ├ app (runs tidemark)
#   stor  (STOR_IP)  ── APP_STOR_IP   ┘  on interface $STOR_IF
#
# mgmt is the management network and the replication peer, other is a
# network the config does not name, stor is the hypervisor's storage link.
# Source after common.sh.

NET_ID=$(((PORT_BASE / 10) % 200 + 20))
NS_APP=tm-app-$NET_ID
NS_MGMT=tm-mgmt-$NET_ID
NS_OTHER=tm-other-$NET_ID
NS_STOR=tm-stor-$NET_ID
APP_MGMT_IP=10.$NET_ID.1.1
MGMT_IP=10.$NET_ID.1.2
APP_OTHER_IP=10.$NET_ID.2.1
OTHER_IP=10.$NET_ID.2.2
APP_STOR_IP=10.$NET_ID.3.1
STOR_IP=10.$NET_ID.3.2
STOR_IF=tmst$NET_ID

in_app() { ip netns exec "$NS_APP" "$@"; }
in_mgmt() { ip netns exec "$NS_MGMT" "$@"; }
in_other() { ip netns exec "$NS_OTHER" "$@"; }
in_stor() { ip netns exec "$NS_STOR" "$@"; }

remove_netns() {
    local ns
    for ns in "$NS_APP" "$NS_MGMT" "$NS_OTHER" "$NS_STOR"; do ip netns del "$ns" 2>/dev/null || true; done
}

# link NS APP_IF NS_IF APP_IP PEER_IP
link_ns() {
    local ns=$1 app_if=$2 peer_if=$3 app_ip=$4 peer_ip=$5
    ip link add "$app_if" type veth peer name "$peer_if"
    ip link set "$app_if" netns "$NS_APP"
    ip link set "$peer_if" netns "$ns"
    in_app ip addr add "$app_ip/24" dev "$app_if"
    ip netns exec "$ns" ip addr add "$peer_ip/24" dev "$peer_if"
    in_app ip link set "$app_if" up
    ip netns exec "$ns" ip link set "$peer_if" up
}

make_netns() {
    remove_netns
    CLEANUP_HOOKS+=(remove_netns)
    local ns
    for ns in "$NS_APP" "$NS_MGMT" "$NS_OTHER" "$NS_STOR"; do
        ip netns add "$ns"
        ip netns exec "$ns" ip link set lo up
    done
    link_ns "$NS_MGMT" "tmma$NET_ID" "tmmb$NET_ID" "$APP_MGMT_IP" "$MGMT_IP"
    link_ns "$NS_OTHER" "tmoa$NET_ID" "tmob$NET_ID" "$APP_OTHER_IP" "$OTHER_IP"
    link_ns "$NS_STOR" "$STOR_IF" "tmsb$NET_ID" "$APP_STOR_IP" "$STOR_IP"
}

# A scratch copy of the kernel-wide sysctls the appliance sets, with the
# host's current values, so `harden` writes and `audit` reads them there.
make_global_sysctl_root() {
    local root=$1 key path
    mkdir -p "$root"
    for key in $(sed -n 's/^-\{0,1\}\([a-z][a-z0-9_.]*\) *=.*/\1/p' "$ROOT/sysctl/90-tidemark.conf"); do
        case $key in net.core.bpf_* | kernel.* | fs.* | vm.*) ;; *) continue ;; esac
        path=${key//./\/}
        [ -f "/proc/sys/$path" ] || continue
        mkdir -p "$root/$(dirname "$path")"
        cat "/proc/sys/$path" >"$root/$path"
    done
}

# write_appliance_configs: a recovery and a protected config for agents that
# both run inside the app namespace (the protected one replicates over
# loopback), with every hardening path pointed into $WORK.
# Sets DIAG_TOKEN and writes $WORK/recovery.toml and $WORK/protected.toml.
write_appliance_configs() {
    mkdir -p "$WORK/a" "$WORK/b" "$WORK/src" "$WORK/fsroot/usr/bin" "$WORK/run" "$WORK/home"
    chmod 700 "$WORK/home"
    FP_A=$("$TIDEMARK" keygen --dir "$WORK/a/keys" --name site-a | tail -n1)
    FP_B=$("$TIDEMARK" keygen --dir "$WORK/b/keys" --name site-b | tail -n1)
    DIAG_TOKEN=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
    make_global_sysctl_root "$WORK/global-sysctl"
    printf 'tty1\ntty2\ntty3\npts/0\n' >"$WORK/securetty"
    truncate -s 16M "$WORK/src/disk0.img"
    local appliance
    appliance=$(cat <<TOML
[appliance]
management_networks = ["$MGMT_IP"]
peer_networks = ["$MGMT_IP/32"]
storage_interface = "$STOR_IF"
global_sysctl_root = "$WORK/global-sysctl"
securetty = "$WORK/securetty"
state_dir = "$WORK/run"
${EXTRA_APPLIANCE:-}
[appliance.support_ssh]
authorized_keys = "$WORK/home/.ssh/authorized_keys"
[logging]
dir = "$WORK/logs"
${EXTRA_LOGGING:-}
[audit]
fs_root = "$WORK/fsroot"
readonly_root = false
allowed_processes = ["tidemark", "dropbear", "bash", "sh", "unshare"]
TOML
)
    cat >"$WORK/recovery.toml" <<TOML
$(recovery_head site-b "$WORK/b" 0.0.0.0 "$FP_A")
[diag]
token = "$DIAG_TOKEN"
$appliance
TOML
    cat >"$WORK/protected.toml" <<TOML
$(protected_head site-a "$WORK/a" 0.0.0.0:10809 127.0.0.1 "$FP_B")
[[vpg]]
name = "vpg1"
[[vpg.volume]]
name = "disk0"
path = "$WORK/src/disk0.img"
$appliance
TOML
}

# start_app_agent ROLE PORT: start_agent inside the app namespace.
start_app_agent() { start_agent "$1" "$2" "$NS_APP"; }

# scan NS_RUNNER TARGET_IP [PORTS]: nmap TCP scan of every port (or PORTS);
# prints "open=<list> closed=<list> rest=<states>", where rest is the state
# of every other port scanned (filtered: behind a DROP).
scan() {
    local runner=$1 target=$2 ports=${3:--}
    ip netns exec "$runner" nmap -n -Pn -T5 --min-rate 20000 --max-retries 1 -p"$ports" "$target" -oG - |
        python3 -c '
import re, sys
text = sys.stdin.read()
found = {"open": [], "closed": []}
rest = set(re.findall(r"Ignored State: (\w+)", text))
for port, state in re.findall(r"(\d+)/(\w+)/tcp", text):
    if state in found:
        found[state].append(int(port))
    else:
        rest.add(state)
print("open=" + ",".join(map(str, sorted(found["open"]))) + " closed=" + ",".join(map(str, sorted(found["closed"])))
      + " rest=" + ("+".join(sorted(rest)) or "none"))
'
}
