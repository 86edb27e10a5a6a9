#!/bin/bash
# kmrl_timed.sh full|nochange|incr|scale -- one timed `kmrl-sync sync bench` (the whole process,
# start-up included) in the format of the reference timed.sh: wall, peak RSS, mails queued, mails/s,
# client CPU, Dovecot CPU. "full" and "scale" (run.sh's SCALE=K) start from nothing (Redis flushed,
# blob store removed).
source "${BENCH_REF:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/bench-ref/imap}/common.sh"
phase=$1 label=kmrl-$1
K=$KMRL_BENCH_DIR PY=$KMRL_BENCH_PY
logs=$IMAPBENCH_DIR/logs; mkdir -p "$logs"
rc() { redis-cli -p "$KMRL_BENCH_REDIS_PORT" "$@"; }
if [ "$phase" = full ] || [ "$phase" = scale ]; then rc flushall >/dev/null; rm -rf "$K/state"; fi
mails() {  # mail documents (not attachments) queued so far
  "$PY" - "$KMRL_BENCH_REDIS_PORT" <<'PY'
import base64, json, sys
import redis
r = redis.Redis(port=int(sys.argv[1]))
n = 0
for raw in r.lrange("document_processing", 0, -1):
    doc = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
    n += "/att/" not in doc
print(n)
PY
}
srvcpu() { awk '{print $16 + $17}' "/proc/$(cat "$PIDFILE")/stat"; }
sync
n0=$(mails); c0=$(srvcpu)
(cd "$K" && /usr/bin/time -v -o "$logs/$label.time" "$PY" -m kmrl_sync sync bench -c "$K/sync.yaml") \
  >"$logs/$label.out" 2>&1; status=$?
sleep 0.3; n=$(( $(mails) - n0 )); c1=$(srvcpu)
read -r wall rss usr sys < <(awk -F': ' '
  /Elapsed/ {k = split($2, a, ":"); for (i = 1; i <= k; i++) w = w * 60 + a[i]}
  /Maximum resident/ {r = $2 / 1024} /User time/ {u = $2} /System time/ {s = $2}
  END {print w, r, u, s}' "$logs/$label.time")
res=$IMAPBENCH_DIR/results.tsv
[ -s "$res" ] || printf 'when\tlabel\tmsgs\twall_s\trss_mb\tmsgs_per_s\tuser_s\tsys_s\tserver_cpu_s\trc\n' >"$res"
awk -v l="$label" -v n=$n -v w="$wall" -v r="$rss" -v u="$usr" -v s="$sys" -v rc=$status \
    -v c="$(( c1 - c0 ))" -v t="$(getconf CLK_TCK)" -v when="$(date +%FT%T)" -v res="$res" 'BEGIN {
  rate = w > 0 ? n / w : 0; c /= t
  printf "%-20s msgs=%-6d wall=%7.2fs rss=%6.1fMB rate=%6.0f msg/s cpu=%.2fu+%.2fs server_cpu=%.2fs rc=%d\n", l, n, w, r, rate, u, s, c, rc
  printf "%s\t%s\t%d\t%.2f\t%.1f\t%.0f\t%.2f\t%.2f\t%.2f\t%d\n", when, l, n, w, r, rate, u, s, c, rc >>res }'
cat "$logs/$label.out" | head -3
exit $status
