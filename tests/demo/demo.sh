#!/usr/bin/env bash
# CalicoSharp demo: etcd on loopback, IP pools, per-node blocks and pod addresses, as a cluster's
# nodes would get them. Removes everything it made on exit, failure or Ctrl-C. Never waits for a key.
set -euo pipefail
BIN=${1:-out/bin}
CTL="$BIN/calicosharpctl"
[ -x "$CTL" ] || { echo "demo: $CTL is not built (run 'make demo')" >&2; exit 1; }

work=$(mktemp -d /tmp/calicosharp-demo.XXXXXX)
etcd_pid=""
cleanup() {
  [ -n "$etcd_pid" ] && kill "$etcd_pid" 2>/dev/null && wait "$etcd_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    ss -ltn "sport = :$p" | grep -q LISTEN || { echo "$p"; return; }
  done
}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "calicosharpctl $*"; "$CTL" --etcd-endpoints "$ETCD" "$@"; }

cport=$(free_port); pport=$(free_port)
ETCD="http://127.0.0.1:$cport"
step "Starting etcd on $ETCD (data in $work)"
etcd --name calicosharp-demo --data-dir "$work/etcd" \
  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "calicosharp-demo=http://127.0.0.1:$pport" --log-level error --logger zap \
  >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do curl -sf "$ETCD/health" >/dev/null 2>&1 && break; sleep 0.1; done

step "IP pools: every pod address comes from one of these (blocks of /26 and /122)"
run pool add --cidr 10.244.0.0/16 --name default-ipv4
run pool add --cidr fd00:10:244::/56 --name default-ipv6

step "Pods start on three nodes: each node claims its own block, pods get addresses from it"
for node in node1 node2 node3; do
  for pod in 1 2; do
    run ipam assign --node "$node" --handle "k8s-pod-network.$node-pod$pod" --ipv4 1 --ipv6 1 \
      --attribute namespace=default --attribute "pod=$node-pod$pod"
  done
done

step "Where the addresses went: one block per node, affine to it (what bgpd will advertise)"
run ipam show --show-blocks

ip=$("$CTL" --etcd-endpoints "$ETCD" ipam show --show-blocks -o json | sed -n 's/.*"cidr": "\(10\.244\.[0-9.]*\)\/26".*/\1/p' | head -1)
ip=${ip%.*}.$(( ${ip##*.} + 1 ))
step "What IPAM knows of one address ($ip)"
run ipam show --ip "$ip"

step "A pod is deleted: its handle is released, the address goes to the back of the free list"
run ipam release --handle k8s-pod-network.node1-pod2

step "Consistency check: every address has its handle, every block its affinity"
run ipam check

step "node3 leaves the cluster: its blocks with pods lose their affinity, empty ones go"
run ipam release --node node3
run ipam show --show-blocks

step "Demo done; cleaning up"
