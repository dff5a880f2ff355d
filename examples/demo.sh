#!/usr/bin/env bash
# A working demo: a throwaway etcd on loopback, filled with a few keys, and the all-in-one
# service (embedded queue) on 127.0.0.1:8080 backing it up into ./demo/backups.
# Ctrl+C stops both; `rm -rf demo` forgets everything.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p demo
ETCD_CLIENT=http://127.0.0.1:12379
ETCD_PEER=http://127.0.0.1:12380

etcd --name demo --data-dir demo/etcd-data \
  --listen-client-urls "$ETCD_CLIENT" --advertise-client-urls "$ETCD_CLIENT" \
  --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
  --initial-cluster "demo=$ETCD_PEER" >demo/etcd.log 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null; wait "$etcd_pid" 2>/dev/null' EXIT

for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_CLIENT" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
for i in $(seq 1 20); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_CLIENT" put "/demo/key-$i" "value $i" >/dev/null
done

cat <<MSG
etcd (demo) is up at $ETCD_CLIENT with 20 keys; the service starts on 127.0.0.1:8080. Try:
  curl -s -XPOST localhost:8080/api/v1/backup
  curl -s localhost:8080/api/v1/backup
  curl -s -O localhost:8080/api/v1/backup/<FILENAME>
MSG
etcd-backup --config examples/demo.yml
