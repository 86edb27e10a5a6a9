"""Who a process is, in terms another process can check: host, boot, PID namespace, pid, start time.

Why not host and pid alone: two containers with the same host name (host networking, or the same
`hostname:` in a compose file) see different pids, so a process in one cannot see a live holder in
the other and would take it for dead. A holder is therefore provably dead only when the checker is
on the same host, in the same boot (`/proc/sys/kernel/random/boot_id`: a different machine that
happens to share the host name has another one), in the same PID namespace (the inode of
`/proc/self/ns/pid`), and the pid is gone there, or is now another process (its start time, field
22 of `/proc/PID/stat`, differs: pids are reused), or is a zombie (it holds nothing any more).
Anything that cannot be checked counts as alive: a wrong "dead" takes a live run's lease, a wrong
"alive" only waits for the lease's TTL.

Under the systemd unit (`ProcSubset=pid`) `/proc/sys` is hidden: the unit passes the boot id in
`KMRL_SYNC_BOOT_ID` (systemd's `%b`), which is read only when the kernel's file cannot be.
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "KMRL_SYNC_BOOT_ID"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This boot of this machine ('' when unknown): the kernel's, else what the unit passed."""
    found = _read(BOOT_ID_FILE) or os.environ.get(BOOT_ID_ENV, "").strip()
    return found.replace("-", "").lower()  # systemd's %b has no dashes, the kernel's file has


def pid_namespace() -> str:
    """The inode number of this process's PID namespace ('' when unknown)."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    inode = link.partition("[")[2].rstrip("]")
    return inode if inode.isdigit() else ""


def _proc_is_ours() -> bool:
    """Whether /proc shows this PID namespace: a /proc mounted for another one (a container
    started without its own) names other processes by our pids, so nothing read there is proof."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


def _stat(pid: int | str) -> tuple[str, str] | None:
    """(state, start time) from /proc/PID/stat, or None when it cannot be read."""
    raw = _read(f"/proc/{pid}/stat")
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'
    fields = raw.rpartition(")")[2].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]  # field 3 (state) and field 22 (starttime, clock ticks after boot)


def start_time(pid: int | str = "self") -> str:
    """When `pid` started, in clock ticks after boot ('' when /proc cannot tell us)."""
    if not _proc_is_ours():
        return ""
    stat = _stat(pid)
    return stat[1] if stat else ""


@dataclass(frozen=True)
class ProcessIdentity:
    host: str
    boot: str  # '' unknown (an older kmrl-sync, or /proc/sys hidden without KMRL_SYNC_BOOT_ID)
    pidns: str  # '' unknown
    pid: int
    start: str  # '' unknown

    @classmethod
    def current(cls) -> ProcessIdentity:
        return cls(socket.gethostname(), boot_id(), pid_namespace(), os.getpid(), start_time())

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> ProcessIdentity:
        """From a stored hash (a lease, a daemon entry); missing fields are unknown."""
        pid = fields.get("pid", "")
        return cls(fields.get("host", ""), fields.get("boot", ""), fields.get("pidns", ""),
                   int(pid) if pid.isdigit() else 0, fields.get("start", ""))

    def fields(self) -> dict[str, str]:
        return {"host": self.host, "boot": self.boot, "pidns": self.pidns, "pid": str(self.pid),
                "start": self.start}

    @property
    def instance(self) -> str:
        """`<host>:<pid>:<8 hex>`: a name for this process that two containers with the same host name,
        each running us as pid 1, do not share (the hex digits hash boot, PID namespace and start)."""
        digest = hashlib.sha256(f"{self.boot}|{self.pidns}|{self.start}".encode()).hexdigest()[:8]
        return f"{self.host}:{self.pid}:{digest}"

    def same_pid_namespace(self, other: ProcessIdentity) -> bool:
        """Whether `other`'s pid means the same process here: same host, boot and PID namespace."""
        return bool(self.host == other.host and self.boot and self.boot == other.boot
                    and self.pidns and self.pidns == other.pidns)

    def describe(self) -> str:
        where = f"pid {self.pid} on {self.host}"
        if self.pidns:
            where += f", PID namespace {self.pidns}"
        return where


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists in our PID namespace (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, run by another user
    stat = _stat(pid) if _proc_is_ours() else None
    return stat is None or stat[0] not in ("Z", "X")


def provably_dead(holder: ProcessIdentity, me: ProcessIdentity | None = None) -> bool:
    """True only when `holder` certainly no longer runs: see the module's docstring."""
    me = me or ProcessIdentity.current()
    if not me.same_pid_namespace(holder) or holder.pid <= 0:
        return False
    if not pid_alive(holder.pid):
        return True
    if not holder.start:
        return False
    now = start_time(holder.pid)
    return bool(now) and now != holder.start  # the pid was reused by another process
