#!/usr/bin/env bash
# A working demo: a throwaway etcd on loopback, filled with 20 keys, and the all-in-one service (embedded
# queue, no Redis) backing it up into ./demo/backups. `make demo` runs it with the venv on the PATH.
# Ports: DEMO_PORT (the service, default 8080), DEMO_ETCD_PORT and DEMO_ETCD_PEER_PORT (etcd's client and peer
# ports, default 12379 and 12380); DEMO_DIR (default ./demo) holds etcd's data, the config and the backups.
# Ctrl+C stops both and exits 0; `rm -rf demo` forgets everything.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
DEMO_PORT=${DEMO_PORT:-8080}
DEMO_ETCD_PORT=${DEMO_ETCD_PORT:-12379}
DEMO_ETCD_PEER_PORT=${DEMO_ETCD_PEER_PORT:-12380}
ETCD_CLIENT=http://127.0.0.1:$DEMO_ETCD_PORT
ETCD_PEER=http://127.0.0.1:$DEMO_ETCD_PEER_PORT

# A port taken is one line and exit 1 before anything starts (not a traceback, not a hang).
for port in "$DEMO_PORT" "$DEMO_ETCD_PORT" "$DEMO_ETCD_PEER_PORT"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port on 127.0.0.1 is taken: choose others, e.g. make demo DEMO_PORT=8081 DEMO_ETCD_PORT=22379 DEMO_ETCD_PEER_PORT=22380" >&2
    exit 1
  fi
done

mkdir -p "$DEMO_DIR"
chmod 700 "$DEMO_DIR"
cat >"$DEMO_DIR/config.yml" <<YAML
# The demo's config, written by examples/demo.sh: its throwaway etcd, the embedded queue.
backup-dir: $DEMO_DIR/backups
listen: 127.0.0.1:$DEMO_PORT
rotate: 14
etcd:
  endpoints:
    - $ETCD_CLIENT
YAML

# Each in a process group of its own (set -m), so that Ctrl+C reaches this script alone, and it stops them in
# order: the service first (it finishes a backup in progress), then etcd.
set -m
etcd --name demo --data-dir "$DEMO_DIR/etcd-data" \
  --listen-client-urls "$ETCD_CLIENT" --advertise-client-urls "$ETCD_CLIENT" \
  --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
  --initial-cluster "demo=$ETCD_PEER" >"$DEMO_DIR/etcd.log" 2>&1 &
etcd_pid=$!
service_pid=
stop() {
  trap - INT TERM EXIT
  if [ -n "$service_pid" ]; then kill -TERM "$service_pid" 2>/dev/null || true; wait "$service_pid" 2>/dev/null || true; fi
  kill -TERM "$etcd_pid" 2>/dev/null || true
  wait "$etcd_pid" 2>/dev/null || true
}
trap 'stop; echo; echo "demo: stopped etcd and the service"; exit 0' INT TERM
trap stop EXIT

for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_CLIENT" endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
for i in $(seq 1 20); do
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_CLIENT" put "/demo/key-$i" "value $i" >/dev/null
done

cat <<MSG
etcd (demo) is up at $ETCD_CLIENT with 20 keys; the service starts on 127.0.0.1:$DEMO_PORT (Ctrl+C stops both).
Put the etcd-backup command on your PATH in another terminal:
  export PATH=$PWD/.venv/bin:\$PATH
Then try:
  curl -s -XPOST localhost:$DEMO_PORT/api/v1/backup
  etcd-backup list --url http://localhost:$DEMO_PORT
  etcd-backup status --url http://localhost:$DEMO_PORT
  etcd-backup download latest --url http://localhost:$DEMO_PORT
  open http://localhost:$DEMO_PORT/ in a browser: the status page
MSG
etcd-backup --config "$DEMO_DIR/config.yml" &
service_pid=$!
status=0
if [ -t 0 ] && [ -t 1 ]; then
  # On a terminal the service takes it over (fg): Ctrl+C reaches the service alone, which stops, and not make (a
  # `make demo` would die of it and say "Interrupt"). This script then stops etcd, below.
  fg %2 >/dev/null || status=$?
  if [ "$status" = 130 ]; then status=0; fi  # the service stopped by Ctrl+C: the way a demo ends
  service_pid=
  stop
  echo
  echo "demo: stopped etcd and the service"
else
  # No terminal (a test, a pipe): wait returns when the service ends, or at once when a trapped signal arrives
  # (the trap then stops both).
  wait "$service_pid" || status=$?
  service_pid=
fi
exit "$status"
