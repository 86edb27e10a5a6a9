"""Run the kmrl-sync CLI, counting Redis round trips (packed sends on any connection).

    python bench/count_round_trips.py sync NAME -c sync.yaml
prints `redis round trips: N` on stderr after the command's own output.
"""

from __future__ import annotations

import atexit
import sys

import redis.connection

calls = 0
_original = redis.connection.AbstractConnection.send_packed_command


def _counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
    global calls
    calls += 1
    return _original(self, command, check_health)


redis.connection.AbstractConnection.send_packed_command = _counting  # type: ignore[method-assign]
atexit.register(lambda: print(f"redis round trips: {calls}", file=sys.stderr))

from kmrl_sync.cli.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
