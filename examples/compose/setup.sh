#!/bin/sh
# One-shot steps of the compose lab, as the identities `tmctl auth init`
# made (auth volume at /auth). Usage:
#   setup.sh stores     the admin creates the streams and buckets; the
#                       operator imports the topology and stores the modules
#   setup.sh monitors N waits (at most 120 s) until N monitors are up
set -eu
nats="nats://nats:4222"
admin() { tmctl --nats "$nats" --nats-creds /auth/admin-admin.nk "$@"; }
ops() { tmctl --nats "$nats" --nats-creds /auth/operator-ops.nk "$@"; }
case "$1" in
    stores)
        i=0
        until admin setup; do
            i=$(( i + 1 )); [ "$i" -lt 60 ] || exit 1; sleep 1
        done
        ops topology import /etc/tm-examples/topology/figure5.toml
        for a in flow-stats proto-id; do ops analyzer put "/opt/tm/wasm/$a.wasm"; done
        ops apps put /opt/tm/wasm/link-load.wasm
        ;;
    monitors)
        i=0
        until [ "$(ops --json monitors | grep -o '"monitor"' | wc -l)" -ge "$2" ]; do
            i=$(( i + 1 )); [ "$i" -lt 120 ] || { ops monitors; exit 1; }; sleep 1
        done
        ops monitors
        ;;
esac
