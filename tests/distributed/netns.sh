#!/usr/bin/env bash
# Two test "hosts" on one machine: network namespaces <name>0 and <name>1 joined by a veth pair,
# addresses 10.<net>.0.1 and 10.<net>.0.2, loopback up in both. Needs root (CAP_NET_ADMIN).
#
#   netns.sh up <name> <net>     create (replacing leftovers of an earlier run)
#   netns.sh down <name>         remove (safe to call twice)
#   netns.sh check               exit 0 when namespaces can be created here
set -euo pipefail

down() {
  local name=$1
  ip netns del "${name}0" 2>/dev/null || true
  ip netns del "${name}1" 2>/dev/null || true
  ip link del "${name}v0" 2>/dev/null || true
}

case "${1:-}" in
  up)
    name=$2
    net=$3
    down "$name"
    ip netns add "${name}0"
    ip netns add "${name}1"
    ip link add "${name}v0" type veth peer name "${name}v1"
    ip link set "${name}v0" netns "${name}0"
    ip link set "${name}v1" netns "${name}1"
    ip -n "${name}0" addr add "10.${net}.0.1/24" dev "${name}v0"
    ip -n "${name}1" addr add "10.${net}.0.2/24" dev "${name}v1"
    for i in 0 1; do
      ip -n "${name}${i}" link set lo up
      ip -n "${name}${i}" link set "${name}v${i}" up
    done
    ;;
  down)
    down "$2"
    ;;
  check)
    probe="dpsprobe$$"
    ip netns add "$probe" 2>/dev/null || exit 1
    ip netns del "$probe"
    ;;
  *)
    echo "usage: $0 up <name> <net> | down <name> | check" >&2
    exit 2
    ;;
esac
