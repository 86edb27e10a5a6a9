#!/bin/bash
# bench/imap/run.sh [N] [M] -- kmrl-sync's imap connector vs mbsync (and the bare imapclient loop)
# on the reference harness's private Dovecot, in one invocation:
#   fresh INBOX of N mails (20% with 10-200 KB attachments) -> full sync of each tool
#   -> no-change sync of each tool -> M new mails -> incremental sync of each tool.
# Results: stdout and $IMAPBENCH_DIR/results.tsv (same columns as the reference timed.sh).
#   IMAPBENCH_DIR=/dev/shm/imapbench ./run.sh 10000 500    # everything (mail, Maildir, blobs) on tmpfs
#   KEEP=1 leaves Dovecot running; BASELINE=0 skips the bare imapclient loop and the fetch floor
#   (fetch_floor.py: the M new mails fetched as kmrl-sync fetches them, nothing else); ROUNDS=3 repeats
#   every phase three times (interleaved; the ratios are medians). Later rounds' "full" syncs pull
#   the N mails plus the M (and the M + 1 of idle.py) of each earlier round. IDLE=0 skips idle.py
#   (the daemon over IMAP IDLE: 1 new mail, then M, timed to their work items on the queue).
#   SCALE=3 then fills the INBOX up to 3*N mails and runs one more initial sync of kmrl-sync
#   (label kmrl-scale): ratios.py compares its peak RSS with the initial syncs' (issue 19: memory
#   must not grow with the mailbox).
set -euo pipefail
ME=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$ME/../.." && pwd)
REF=${BENCH_REF:-$REPO/../shared/bench-ref/imap}
source "$REF/common.sh"
N=${1:-10000} M=${2:-500}
PY=${PYTHON:-$REPO/.venv/bin/python}
K=$IMAPBENCH_DIR/kmrl
export KMRL_BENCH_DIR=$K KMRL_BENCH_PY=$PY KMRL_BENCH_REPO=$REPO

cleanup() {
  [ -f "$K/redis.pid" ] && kill "$(cat "$K/redis.pid")" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || "$REF/stop.sh"
}
trap cleanup EXIT

"$REF/setup.sh"
"$PY" -m compileall -q "$REPO/kmrl_sync" >/dev/null  # as an installed package is (see scripts/bootstrap)
echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/ {print $2}') GB RAM"
echo "disk under $IMAPBENCH_DIR: $(df -T "$IMAPBENCH_DIR" | awk 'NR==2 {print $1, $2}')"
echo "load before the run: $(cut -d" " -f1-3 /proc/loadavg)"
echo "python: $("$PY" -V), mbsync: $(mbsync -v 2>&1 | head -1 || true), dovecot $(dovecot --version)"

# kmrl-sync project: a private redis-server, blobs under $IMAPBENCH_DIR (same disk as mbsync's Maildir)
rm -rf "$K"; mkdir -p "$K/connectors" "$K/redis"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$K/redis" --save "" --appendonly no \
  --daemonize yes --pidfile "$K/redis.pid" --logfile "$K/redis/redis.log"
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
cat >"$K/sync.yaml" <<YAML
redis: {url: "redis://127.0.0.1:$port/0", key_prefix: kmrl}
state_dir: $K/state
queue: {format: celery, name: document_processing}
connectors_dir: connectors
log: {level: warning, format: json}
YAML
cat >"$K/connectors/bench.yaml" <<YAML
type: imap
schedule: {every: 5m}
department: bench
options:
  host: 127.0.0.1
  port: $IMAPBENCH_PORT
  tls: false
  username: $IMAPBENCH_USER
  password: $IMAPBENCH_USER
  folders: [INBOX]
  attachments: true
YAML
export KMRL_BENCH_REDIS_PORT=$port

rm -f "$IMAPBENCH_DIR/results.tsv"
/usr/bin/time -f 'populate: %e s wall' "$REF/populate.py" --reset "$N"
for round in $(seq "${ROUNDS:-1}"); do  # ROUNDS=3: every phase three times, interleaved; medians
  echo "round $round"
  "$REF/bench_mbsync.sh" full;     "$ME/kmrl_timed.sh" full
  [ "${BASELINE:-1}" = 1 ] && "$REF/bench_imapclient.py" full
  "$REF/bench_mbsync.sh" nochange; "$ME/kmrl_timed.sh" nochange
  [ "${BASELINE:-1}" = 1 ] && "$REF/bench_imapclient.py" nochange
  /usr/bin/time -f 'populate: %e s wall' "$REF/populate.py" "$M"
  "$REF/bench_mbsync.sh" incr;     "$ME/kmrl_timed.sh" incr
  [ "${BASELINE:-1}" = 1 ] && "$REF/bench_imapclient.py" incr
  [ "${BASELINE:-1}" = 1 ] && "$REF/timed.sh" floor-incr "$IMAPBENCH_DIR/floor" "$PY" "$ME/fetch_floor.py" "$M"
  [ "${IDLE:-1}" = 1 ] && "$PY" "$ME/idle.py" --mails "$M"  # the daemon: 1 mail, then M, over IDLE
done
if [ "${SCALE:-0}" -gt 1 ]; then  # one initial sync of a mailbox SCALE times as large
  more=$(( N * SCALE - N - ${ROUNDS:-1} * M - (${IDLE:-1} == 1 ? ${ROUNDS:-1} * (M + 1) : 0) ))
  echo "scale: $more more mails, to $(( N * SCALE ))"
  [ "$more" -gt 0 ] && /usr/bin/time -f 'populate: %e s wall' "$REF/populate.py" "$more"
  "$ME/kmrl_timed.sh" scale
fi
echo
column -t -s $'\t' "$IMAPBENCH_DIR/results.tsv"
echo
"$PY" "$ME/ratios.py" "$IMAPBENCH_DIR/results.tsv"
echo "load after the run: $(cut -d" " -f1-3 /proc/loadavg)"
