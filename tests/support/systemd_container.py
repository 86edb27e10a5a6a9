"""A Debian 12 container booted with systemd as its PID 1, to run the kmrl-sync unit for real.

Why: the development and CI machines do not boot systemd, and `systemd-analyze verify` alone never
starts the service, so READY/STATUS, reload, the watchdog, the stop sequence and the warnings systemd
logs at every start are only seen under a live service manager. `systemd-nspawn --boot` gives one in
a few seconds (recipe: ../shared/ref/live-systemd.md).

* The root file system is built once by debootstrap (1-2 minutes) and cached at
  /var/lib/machines/kmrl-bookworm (`KMRL_SYSTEMD_ROOTFS` overrides). A stamp inside it holds the
  hash of the recipe (suite, variant, packages): a changed recipe rebuilds it, nothing else does.
  It is built under a temporary name and renamed into place, so an interrupted build is never used;
  an exclusive lock serialises builders, a shared one is held while a container uses the tree.
* Every boot is `--volatile=overlay`: the cached tree is never modified, all changes vanish at exit.
* The container shares the host's network namespace, so a Redis started by the test on 127.0.0.1 is
  reachable from inside, and the test reads the queue from the host.
* There is no package index inside: wheels are built on the host and bound read-only at /wheels.
* Commands run inside through `nsenter` with a clean environment (nothing of pytest's leaks in).
* `Container.stop()` shuts the container down (SIGTERM to nspawn = a clean poweroff), kills what is
  left if it has to, and then checks that no process of the container and no mount remains.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.waiting import wait_until

ROOTFS_ENV = "KMRL_SYSTEMD_ROOTFS"
REQUIRE_ENV = "KMRL_REQUIRE_SYSTEMD"
DEFAULT_ROOTFS = Path("/var/lib/machines/kmrl-bookworm")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
TOOLS = ("systemd-nspawn", "debootstrap", "nsenter")
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STAMP = ".kmrl-rootfs-recipe"


@dataclass(frozen=True)
class Recipe:
    """What the cached root file system is made of; its digest decides when to rebuild."""

    suite: str = "bookworm"
    variant: str = "minbase"
    # systemd as PID 1, D-Bus for systemctl, procps for /bin/kill (ExecReload), Python 3.11 + venv
    # for install.sh.
    include: tuple[str, ...] = ("systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv")
    python: tuple[int, int] = (3, 11)  # the suite's Python: the host's wheels must be built for it

    def digest(self) -> str:
        text = json.dumps({"suite": self.suite, "variant": self.variant, "include": sorted(self.include),
                           "python": list(self.python), "format": 1}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


RECIPE = Recipe()


def rootfs_path() -> Path:
    return Path(os.environ.get(ROOTFS_ENV) or DEFAULT_ROOTFS)


def unavailable_reason(recipe: Recipe = RECIPE) -> str | None:
    """Why a container cannot be booted here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "booting a systemd container needs root (run the tests as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not installed: `apt-get install systemd-container debootstrap` "
                "(scripts/test does this)")
    if sys.version_info[:2] != recipe.python:
        return (f"wheels for the container's Python {recipe.python[0]}.{recipe.python[1]} are built by "
                f"the test's Python, which is {sys.version_info[0]}.{sys.version_info[1]}")
    return None


def require_systemd_container() -> None:
    """Skip (or fail, with KMRL_REQUIRE_SYSTEMD set) when a systemd container cannot be booted."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so this is an error", pytrace=False)
    pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to turn this skip into a failure")


def debian_mirror() -> str:
    """The machine's own Debian mirror (as apt uses it), else deb.debian.org."""
    if os.environ.get("KMRL_DEBIAN_MIRROR"):
        return os.environ["KMRL_DEBIAN_MIRROR"]
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                url = next(p for p in parts[1:] if not p.startswith("["))
                return url
    return DEFAULT_MIRROR


def _fresh(path: Path, recipe: Recipe) -> bool:
    try:
        return (path / STAMP).read_text().split("\n", 1)[0] == recipe.digest()
    except OSError:
        return False


def debootstrap(target: Path, recipe: Recipe, log: Path) -> None:
    """Build the root file system for `recipe` in `target` (a path that does not exist yet)."""
    cmd = ["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.include)}",
           recipe.suite, str(target), debian_mirror()]
    with log.open("wb") as out:
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=1200, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"debootstrap failed (exit {result.returncode}; full log {log}):\n{tail}")


def _rebuild(path: Path, recipe: Recipe, log: Path, build: Callable[[Path, Recipe, Path], None]) -> None:
    """Build into a temporary sibling, stamp it, then swap it in: a half-built tree is never used."""
    new = path.parent / f".{path.name}.new"
    old = path.parent / f".{path.name}.old"
    for leftover in (new, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    build(new, recipe, log)
    (new / STAMP).write_text(recipe.digest() + "\n" + json.dumps(dataclasses.asdict(recipe)) + "\n")
    if path.exists():
        path.rename(old)
    new.rename(path)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def cached_rootfs(log: Path, path: Path | None = None, recipe: Recipe = RECIPE,
                  build: Callable[[Path, Recipe, Path], None] = debootstrap) -> Iterator[Path]:
    """The root file system for `recipe`, built if missing or stale; shared-locked while in use."""
    path = path or rootfs_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not _fresh(path, recipe):
            fcntl.flock(lock, fcntl.LOCK_EX)  # not atomic: re-check once we hold it
            if not _fresh(path, recipe):
                _rebuild(path, recipe, log, build)
            fcntl.flock(lock, fcntl.LOCK_SH)  # builders re-check under LOCK_EX, so this is safe
        yield path


def copy_checkout(src: Path, dest: Path) -> None:
    """The checkout's files (tracked and untracked, not ignored) as they are in the working tree.

    install.sh runs `pip install` on the source tree, which writes build files into it: the
    container gets this writable copy, never the checkout itself.
    """
    listed = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=False)
    if listed.returncode != 0:
        shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".kmrl-sync", ".*_cache", ".work"))
        return
    for name in listed.stdout.decode().split("\0"):
        source = src / name
        if not name or not (source.is_file() or source.is_symlink()):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def build_wheels(src: Path, dest: Path, extra: Sequence[str] = ("async-timeout", "setuptools", "wheel", "pip"),
                 ) -> None:
    """Wheels of the project's dependencies (built by this Python), plus what pip and redis-py need
    inside: the container has no package index. `extra`: Debian 12's Python is 3.11.2, for which
    redis-py also wants async-timeout (the host's newer 3.11 does not), and building the project
    from source needs setuptools and wheel."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for cmd in ([*pip, "wheel", "-w", str(dest), str(src)],
                [*pip, "download", "--no-deps", "-d", str(dest), *extra]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    for leftover in (src / "build", *src.glob("*.egg-info")):
        shutil.rmtree(leftover, ignore_errors=True)


def _die_with_parent() -> None:
    """In the nspawn child: get SIGTERM (a clean container shutdown) if pytest itself dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == pid:
                found.append((int(entry.name), comm))
    return found


def _pids_in_namespace(ns: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == ns:
                    pids.append(int(entry.name))
    return pids


class ContainerError(RuntimeError):
    pass


class Container:
    """One booted container: `run()` a command inside, read its journal, `stop()` it."""

    def __init__(self, rootfs: Path, log: Path, binds: Sequence[tuple[Path, str]] = (),
                 ro_binds: Sequence[tuple[Path, str]] = ()):
        self.rootfs = rootfs
        self.log = log
        self.binds = list(binds)
        self.ro_binds = list(ro_binds)
        self.process: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.pid_namespace: str | None = None

    def boot_log(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""

    def start(self, timeout: float = 120) -> Container:
        cmd = ["systemd-nspawn", "-q", "-D", str(self.rootfs), "--volatile=overlay", "--boot",
               "--register=no", "--keep-unit", "--console=read-only"]
        cmd += [f"--bind={host}:{guest}" for host, guest in self.binds]
        cmd += [f"--bind-ro={host}:{guest}" for host, guest in self.ro_binds]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_for_boot(timeout)
        except BaseException:
            self.stop(check=False)
            raise
        return self

    def _wait_for_boot(self, timeout: float) -> None:
        process = self.process
        assert process is not None
        deadline = time.monotonic() + timeout

        def leader() -> int | None:
            if process.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited {process.returncode}:\n{self.boot_log()}")
            return next((pid for pid, comm in _children(process.pid) if comm == "systemd"), None)

        self.leader = wait_until(leader, timeout, lambda: f"systemd inside the container:\n{self.boot_log()}")
        self.pid_namespace = os.readlink(f"/proc/{self.leader}/ns/pid")

        # --wait blocks until start-up is over, once systemd answers at all (right after the leader
        # appears its socket may not exist yet); "degraded" (some unit failed) still boots fine.
        def booted() -> bool:
            answer = self.run(["systemctl", "is-system-running", "--wait"],
                              timeout=max(1.0, deadline - time.monotonic()))
            state = answer.stdout.strip()
            if state not in ("running", "degraded", "", "offline", "unknown", "initializing", "starting"):
                raise ContainerError(f"the container's systemd is {state!r} after boot ({answer.stderr.strip()}):"
                                     f"\n{self.boot_log()}")
            return state in ("running", "degraded")

        wait_until(booted, max(0.0, deadline - time.monotonic()),
                   lambda: f"the container's systemd to finish booting:\n{self.boot_log()}", interval=0.1)

    def run(self, args: Sequence[str], *, check: bool = False, input: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`args` inside the container (all its namespaces, its root), with a clean environment."""
        if self.leader is None:
            raise ContainerError("the container is not running")
        clean = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0",
                 "HOME": "/root", **(env or {})}
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i",
               *(f"{k}={v}" for k, v in clean.items()), *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"{' '.join(args)} exited {result.returncode} in the container:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def write(self, path: str, text: str, owner: str = "root:root", mode: str = "0644") -> None:
        """Write a file inside the container (its parent must exist)."""
        self.run(["sh", "-c", 'cat > "$1" && chown "$2" "$1" && chmod "$3" "$1"', "sh", path, owner, mode],
                 input=text, check=True)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show` properties of `unit`."""
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)], check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, object]]:
        """This boot's journal entries (JSON), e.g. `journal("-u", "kmrl-sync")`."""
        out = self.run(["journalctl", "-b", "-o", "json", "--no-pager", *args], check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def cursor(self) -> str:
        """The journal's current end, to read only what follows (`journal("--after-cursor", c)`)."""
        entries = self.journal("-n", "1")
        return str(entries[-1]["__CURSOR"]) if entries else ""

    def stop(self, check: bool = True, timeout: float = 60) -> None:
        """Power the container off; kill it if it does not go; then check nothing of it is left."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to power off
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                if self.leader is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)  # PID 1 of the namespace: all of it goes
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.process = None
        if not check:
            return
        leftovers = []
        if self.pid_namespace is not None:
            leftovers += [f"pid {pid} of the container" for pid in _pids_in_namespace(self.pid_namespace)]
        mounts = Path("/proc/self/mountinfo").read_text()
        for host_path in [self.rootfs, *(h for h, _ in self.binds), *(h for h, _ in self.ro_binds)]:
            if re.search(rf" {re.escape(str(host_path))}(/| )", mounts):
                leftovers.append(f"a mount of {host_path} on the host")
        if leftovers:
            raise ContainerError("the container left " + ", ".join(leftovers))
