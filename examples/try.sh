#!/usr/bin/env bash
# Run netconverge on a shipped example inside a throwaway network + mount
# namespace: a veth stands in for the underlay, /run is a private tmpfs (the
# lease file lands there), and nft rules live in the namespace only. Nothing
# on the host changes; everything vanishes when the script exits.
#
#   bash examples/try.sh   (as root) [examples/k3s-node.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "try.sh: run as root (it creates a network namespace)" >&2; exit 1; }
command -v nft >/dev/null || bash .ci/deps
cfg=${1:-examples/k3s-node.toml}
cargo build --release --locked --quiet
bin=$PWD/target/release/netconverge
# the example has no node_name: give the derived VTEP MAC a fixed seed
seed=$(mktemp)
# netconverge's record of what it created goes to a throwaway state dir,
# not the host's /var/lib/netconverge
state=$(mktemp -d)
trap 'rm -rf "$seed" "$state"' EXIT
echo 0123456789abcdef0123456789abcdef > "$seed"

NC_BIN=$bin NC_CFG=$PWD/$cfg NETCONVERGE_MACHINE_ID_FILE=$seed NETCONVERGE_STATE_DIR=$state \
unshare --net --mount --propagation private bash -euc '
  mount -t tmpfs netconverge-try /run
  ip link set lo up
  ip link add eth0 type veth peer name eth0-peer
  ip addr add 192.0.2.10/24 dev eth0
  ip link set eth0 up; ip link set eth0-peer up
  nc() { "$NC_BIN" -c "$NC_CFG" "$@"; }
  step() { printf "\n\033[1m$ netconverge %s\033[0m\n" "$*"; }
  step validate;          nc validate
  step converge --check;  nc converge --check || echo "(exit $?: drift, as expected on an empty node)"
  step converge;          nc converge
  step converge --check;  nc converge --check
  step show;              nc show
  printf "\n\033[1m$ cat /run/flannel/subnet.env\033[0m\n"; cat /run/flannel/subnet.env
  printf "\n\033[1m$ nft list table ip netconverge\033[0m\n"; nft list table ip netconverge
  printf "\n\033[1m$ ip -d link show flannel.1\033[0m\n"; ip -d link show flannel.1
  printf "\n\033[1m$ ip route show proto 199\033[0m\n"; ip route show proto 199
'
