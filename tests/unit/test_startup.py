"""The start-up import trims change how the dependencies load, never what they do.

Each check runs in a fresh interpreter: the trims only act before the package's first import.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from kmrl_sync.startup import NON_PRINTABLE_RANGES, YAML_NON_PRINTABLE


def run_fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_faster_pattern_matches_exactly_the_code_points_yaml_rejects():
    every_code_point = "".join(map(chr, range(0x110000)))
    yaml_rejects = [m.start() for m in re.finditer(YAML_NON_PRINTABLE, every_code_point)]
    ours = [m.start() for m in re.finditer(NON_PRINTABLE_RANGES, every_code_point)]
    assert ours == yaml_rejects
    assert len(ours) == 2111  # controls, C1 controls but NEL, surrogates, U+FFFE/U+FFFF


def test_the_pattern_is_still_the_one_pyyaml_compiles():
    # When PyYAML changes it, the substitution silently stops applying: update YAML_NON_PRINTABLE.
    plain = run_fresh("import yaml; print(ascii(yaml.reader.Reader.NON_PRINTABLE.pattern))")
    assert plain == ascii(YAML_NON_PRINTABLE)


def test_yaml_imported_this_way_still_rejects_non_printable_characters():
    out = run_fresh("""
        import re
        from kmrl_sync.startup import NON_PRINTABLE_RANGES, import_yaml
        compile_before = re.compile
        yaml = import_yaml()
        assert re.compile is compile_before, "re.compile must be restored"
        assert yaml.reader.Reader.NON_PRINTABLE.pattern == NON_PRINTABLE_RANGES
        assert yaml.safe_load("a: [1, 'b']") == {"a": [1, "b"]}
        try:
            yaml.safe_load("a: \\x07")
        except yaml.reader.ReaderError as exc:
            print("rejected", hex(exc.character))
    """)
    assert out == "rejected 0x7"


def test_redis_imports_without_its_asyncio_client_until_one_is_used():
    out = run_fresh("""
        import sys
        from kmrl_sync.startup import defer_async_redis
        defer_async_redis()
        import redis
        client = redis.Redis(host="127.0.0.1", port=1)  # never connects: building one is enough
        print(sorted(m for m in sys.modules if m.startswith("redis.asyncio.c")))
        from redis.asyncio import Redis
        import redis.asyncio.client
        print(Redis is redis.asyncio.client.Redis, redis.asyncio.StrictRedis is Redis)
    """)
    assert out.splitlines() == ["[]", "True True"]


def test_deferring_after_redis_was_imported_changes_nothing():
    out = run_fresh("""
        import sys
        import redis
        real = sys.modules["redis.asyncio"]
        from kmrl_sync.startup import defer_async_redis
        defer_async_redis()
        print(sys.modules["redis.asyncio"] is real, "__getattr__" in vars(real))
    """)
    assert out == "True False"


@pytest.mark.parametrize("already", [False, True])
def test_structlog_loads_without_rich(already: bool):
    out = run_fresh(f"""
        import sys
        if {already}:
            import rich
        from kmrl_sync.startup import import_structlog
        structlog = import_structlog()
        print("rich" in sys.modules, structlog.get_logger() is not None)
    """)
    assert out == f"{already} True"


def test_threads_that_first_use_the_deferred_redis_asyncio_together_all_get_it():
    out = run_fresh("""
        import threading
        from kmrl_sync.startup import defer_async_redis
        defer_async_redis()
        import redis
        start, got = threading.Barrier(8), []
        def use():
            start.wait()
            try:
                got.append(redis.asyncio.Redis.__name__)
            except AttributeError as exc:
                got.append(f"AttributeError: {exc}")
        threads = [threading.Thread(target=use) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(sorted(set(got)))
    """)
    assert out == "['Redis']"


def test_the_command_leaves_as_the_interpreter_would_but_without_tearing_it_down(tmp_path):
    marks = str(tmp_path)
    code = textwrap.dedent(f"""
        import atexit, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from kmrl_sync import cli

        atexit.register(lambda: open({marks!r} + "/atexit", "w").write("ran"))

        def late():
            time.sleep(0.3)
            open({marks!r} + "/thread", "w").write("done")

        threading.Thread(target=late).start()  # not a daemon: the exit waits for it
        pool = ThreadPoolExecutor(1)
        pool.submit(print, "from the pool", end="; ").result()  # idle now, never shut down

        class TornDown:
            def __del__(self):
                print("torn down")

        kept = TornDown()
        print("no newline at the end", end="")  # a pipe is block-buffered: only a flush shows it
        cli.exit_after_atexit(3)
    """)
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=buffered)
    assert (done.returncode, done.stdout, done.stderr) == (3, "from the pool; no newline at the end", "")
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "done"
    # the ordinary exit does tear down (what the test above shows is skipped)
    ordinary = subprocess.run([sys.executable, "-c", code.replace("cli.exit_after_atexit(3)", "")],
                              capture_output=True, text=True, timeout=60)
    assert ordinary.stdout.endswith("torn down\n")


def test_under_a_profiler_the_command_exits_the_ordinary_way_so_it_can_write_its_results(tmp_path):
    out = tmp_path / "profile"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "kmrl_sync", "connectors"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imap" in done.stdout and out.stat().st_size > 0
