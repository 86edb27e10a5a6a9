#!/usr/bin/env bash
# Every benchmark in one command (not run by CI; ~15 minutes on 2 cores, plus 30 with --soak).
# Each suite times kmrl-sync and its reference baseline in the same invocation; figures go to
# stdout and each suite's README keeps the latest ones.
#   bench/run_all.sh            filesystem (100,000 files), IMAP (10,000 mails + 500), SharePoint (50,000 items),
#                               each with a scale run at 3x (peak RSS must not grow with the source)
#   bench/run_all.sh --soak     ... and the 30-minute daemon soak
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== filesystem";  "$PY" bench/fs/bench.py --files 100000 --rounds 3 --scale 3
echo "== imap";        (cd bench/imap && ROUNDS=3 SCALE=3 ./run.sh 10000 500)
echo "== sharepoint";  "$PY" bench/sharepoint/bench.py --files 50000 --folders 2000 --size 10240 --repeat 2 --scale 3
echo "== encryption";  "$PY" bench/crypto/bench.py --rounds 11
if [ "${1:-}" = "--soak" ]; then
  echo "== soak";      "$PY" bench/soak/soak.py
fi
