#!/bin/sh
# Host N behind router N: serves iperf3, DNS (dnsmasq) and HTTP, and sends
# traffic to the other hosts in rounds with pauses: ping, DNS queries, HTTP
# GETs, and iperf3 TCP and UDP to host N+1 (one client per server). The
# rounds are bounded (ROUNDS, default 600: about an hour).
# Usage: host.sh N
set -u
n="$1"
me="10.$(( n * 10 )).0.2"
ip route replace default via "10.$(( n * 10 )).0.1"
ethtool -K eth0 tso off gso off gro off >/dev/null 2>&1 || true
mkdir -p /srv/www && head -c 200000 /dev/urandom > /srv/www/blob.bin && echo "host $n" > /srv/www/index.html
iperf3 -s -D
dnsmasq --no-resolv --no-hosts --listen-address="$me" --bind-interfaces \
    --address="/h$n.lab.test/$me" --pid-file=/run/dnsmasq.pid
(cd /srv/www && python3 -m http.server 80 --bind "$me" >/dev/null 2>&1 &)
next=$(( n % 4 + 1 )); other=$(( (n + 1) % 4 + 1 ))
peer() { echo "10.$(( $1 * 10 )).0.2"; }
trap 'exit 0' TERM INT
sleep 5
i=0
while [ "$i" -lt "${ROUNDS:-600}" ]; do
    i=$(( i + 1 ))
    for h in "$next" "$other"; do
        ping -c 3 -i 0.2 -W 1 "$(peer "$h")" >/dev/null 2>&1
        dig +time=1 +tries=1 "@$(peer "$h")" "h$h.lab.test" >/dev/null 2>&1
        curl -s -m 3 -o /dev/null "http://$(peer "$h")/blob.bin"
    done
    iperf3 -c "$(peer "$next")" -t 2 -b 8M >/dev/null 2>&1
    iperf3 -c "$(peer "$next")" -u -t 2 -b 2M >/dev/null 2>&1
    sleep 2 & wait $!
done
trap - TERM INT
sleep infinity & wait
