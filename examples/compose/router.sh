#!/bin/sh
# Router N of the reference network (docs/lab.md): its router address on
# lo, static routes along the topology's flow paths, offloads off (taps see
# wire-sized frames), and a tc mirred tap per direction its monitor taps:
# a veth pair tapK/tapKm, the monitor (sharing this network namespace)
# capturing tapKm. Usage: router.sh N
set -eu
n="$1"
dev() { ip -o -4 addr show to "$1" | awk '{print $2; exit}'; }
ip addr add "10.0.$n.1/32" dev lo
for i in $(ls /sys/class/net); do
    [ "$i" = lo ] || ethtool -K "$i" tso off gso off gro off >/dev/null 2>&1 || true
done
route() { ip route add "10.$(( $1 * 10 )).0.0/16" via "$2"; ip route add "10.0.$1.1/32" via "$2"; }
# Next hops: breadth-first on the ring, the smaller router address first
# (R1->R3 and R3->R1 cross R2; R2->R4 and R4->R2 cross R1).
case "$n" in
    1) route 2 10.1.12.2; route 3 10.1.12.2; route 4 10.1.14.4 ;;
    2) route 1 10.1.12.1; route 3 10.1.23.3; route 4 10.1.12.1 ;;
    3) route 1 10.1.23.2; route 2 10.1.23.2; route 4 10.1.34.4 ;;
    4) route 1 10.1.14.1; route 2 10.1.14.1; route 3 10.1.34.3 ;;
esac
# tap K of this router: direction mirrored from HOOK of the line to PEER.
tap() {
    k="$1"; line_dev="$(dev "$2")"; hook="$3"
    ip link add "tap$k" type veth peer name "tap${k}m"
    ethtool -K "tap$k" tso off gso off gro off >/dev/null 2>&1 || true
    ethtool -K "tap${k}m" tso off gso off gro off >/dev/null 2>&1 || true
    ip link set "tap$k" up
    ip link set "tap${k}m" up
    tc qdisc show dev "$line_dev" | grep -q clsact || tc qdisc add dev "$line_dev" clsact
    tc filter add dev "$line_dev" "$hook" u32 match u32 0 0 action mirred egress mirror dev "tap$k"
    echo "tap$k ${line_dev} $hook" >> /run/tm-taps
}
: > /run/tm-taps
# As in the netns lab, a line is tapped at one router: a direction entering
# it at its ingress, one leaving it at its egress.
case "$n" in
    2) tap 0 10.1.12.2 ingress; tap 1 10.1.12.2 egress ;;   # L12 R1->R2, R2->R1
    3) tap 0 10.1.23.3 ingress; tap 1 10.1.23.3 egress ;;   # L23 R2->R3, R3->R2
    4) tap 0 10.1.34.4 ingress; tap 1 10.1.14.4 ingress ;;  # L34 R3->R4, L14 R1->R4
esac
touch /run/tm-ready
trap 'exit 0' TERM INT
sleep infinity & wait
