"""One sync in this fresh process under tracemalloc; prints its summary and peak as JSON.

    python -m tests.support.traced_run CONFIG NAME

For tests that compare memory across volumes (tests/integration/test_memory_flat.py): each run
in a process of its own, so one run's one-off allocations (a module imported on first use, a
table of the interpreter's grown once) are not counted against another.
"""

from __future__ import annotations

import json
import sys
import tracemalloc


def main(config: str, name: str) -> None:
    from kmrl_sync import logs
    from kmrl_sync.engine.runner import Engine
    from kmrl_sync.loading.loader import load_config

    loaded = load_config(config)
    logs.configure(loaded.log.level, loaded.log.format, stream=sys.stderr)  # stdout: the JSON line alone
    engine = Engine(loaded)
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    summary = engine.run(name)
    peak = tracemalloc.get_traced_memory()[1] - start
    tracemalloc.stop()
    print(json.dumps({"peak": peak, "result": summary.result, "created": summary.created,
                      "unchanged": summary.unchanged, "failed": summary.failed, "error": summary.error}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
