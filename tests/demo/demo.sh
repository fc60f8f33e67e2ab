#!/usr/bin/env bash
# CalicoSharp demo: etcd on loopback, IP pools, per-node blocks and pod addresses, as a cluster's
# nodes would get them. Removes everything it made on exit, failure or Ctrl-C. Never waits for a key.
set -euo pipefail
BIN=${1:-out/bin}
CTL="$BIN/calicosharpctl"
[ -x "$CTL" ] || { echo "demo: $CTL is not built (run 'make demo')" >&2; exit 1; }

work=$(mktemp -d /tmp/calicosharp-demo.XXXXXX)
lab="csdemo$((RANDOM % 10000))"
etcd_pid=""
cleanup() {
  for ns in "$lab-pod1" "$lab-pod2" "$lab-node1"; do ip netns del "$ns" 2>/dev/null || true; done
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
# Also on a unix socket, which the node's network namespace can reach.
(cd "$work" && exec etcd --name calicosharp-demo --data-dir "$work/etcd" \
  --listen-client-urls "$ETCD,unix://etcd.sock:0" --advertise-client-urls "$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "calicosharp-demo=http://127.0.0.1:$pport" --log-level error --logger zap \
  >"$work/etcd.log" 2>&1) &
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

step "The CNI plugin wires two pods on node1 (network namespaces $lab-pod1, $lab-pod2)"
ip netns add "$lab-node1"; ip netns add "$lab-pod1"; ip netns add "$lab-pod2"
ip -n "$lab-node1" link set lo up
conf="{\"cniVersion\":\"1.1.0\",\"name\":\"k8s-pod-network\",\"type\":\"calicosharp\",\"mtu\":1500,\"etcd_endpoints\":\"unix://$work/etcd.sock:0\",\"nodename\":\"node1\",\"log_file_path\":\"$work/cni.log\",\"ipam\":{\"type\":\"calicosharp-ipam\",\"assign_ipv4\":\"true\",\"assign_ipv6\":\"true\"}}"
cni() { # cni COMMAND POD
  CNI_COMMAND=$1 CNI_CONTAINERID="demo-$2" CNI_NETNS="/var/run/netns/$lab-$2" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=$2" CALICOSHARP_STATE_DIR="$work/state" \
    ip netns exec "$lab-node1" "$BIN/calicosharp" <<<"$conf"
}
printf '$ CNI_COMMAND=ADD ... calicosharp   (pod1)\n'; cni ADD pod1
printf '$ CNI_COMMAND=ADD ... calicosharp   (pod2)\n'; cni ADD pod2 >/dev/null
ip1=$(ip -n "$lab-pod1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
ip2=$(ip -n "$lab-pod2" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)

step "Inside pod1: a /32, a link route to 169.254.1.1, default via it, a permanent neighbour entry"
printf '$ ip addr show eth0\n'; ip -n "$lab-pod1" addr show eth0
printf '$ ip route; ip -6 route; ip neigh\n'; ip -n "$lab-pod1" route; ip -n "$lab-pod1" -6 route; ip -n "$lab-pod1" neigh

step "On node1: one /32 host route per pod, through its cali interface"
printf '$ ip route\n'; ip -n "$lab-node1" route

step "TCP from pod1 ($ip1) to pod2 ($ip2), through node1"
ip netns exec "$lab-pod2" timeout 5 nc -l -p 8080 >"$work/received" &
listener=$!
sleep 0.3
echo "hello from pod1" | ip netns exec "$lab-pod1" nc -w 2 -q 1 "$ip2" 8080 || true
wait "$listener" || true
printf 'pod2 received: %s\n' "$(cat "$work/received")"
grep -q "hello from pod1" "$work/received" || { echo "demo: pod-to-pod TCP failed" >&2; exit 1; }

step "Pods deleted: CNI DEL removes the veth (and its routes) and releases the addresses"
cni DEL pod1; cni DEL pod2
run ipam check

step "Demo done; cleaning up"
