"""`kmrl-sync ARGS` run in this process, then its peak memory on the last line of stderr.

The adversarial tests run it as a subprocess (`python -m tests.adversarial.cli_measured check -c
...`) to hold `check` to a memory bound. The peak is the kernel's high-water mark of this process'
memory since its exec (VmHWM); `ru_maxrss` would include the memory of the test process it was
forked from. The address space is capped at ADDRESS_SPACE_LIMIT first, so a loader without bounds
dies of MemoryError (a traceback the test sees) instead of taking the machine's memory. A command
that raises prints its traceback as usual and leaves the line out.
"""

from __future__ import annotations

import resource
import sys

ADDRESS_SPACE_LIMIT = 1 << 30


def peak_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    from kmrl_sync.cli.main import main

    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.write(f"\npeak_rss_kb={peak_rss_kb()}\n")
    sys.exit(code)
