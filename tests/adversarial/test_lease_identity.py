"""A lease is taken over at once only from a provably dead holder (host, boot, PID namespace, pid).

The finding: two containers with the same host name; the second cannot see the first's pid, took
it for dead, took its lease, and the first run failed with `lease ... was lost`. Here the second
"container" is a real second PID namespace on this machine (`unshare --pid --fork --mount-proc`,
which needs root), holding the lease with a real one-shot sync.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from kmrl_sync.engine.identity import ProcessIdentity, provably_dead, start_time
from kmrl_sync.engine.keys import ConnectorKeys
from kmrl_sync.engine.lease import Lease, LeaseBusy
from kmrl_sync.engine.scripts import Scripts
from tests.support.waiting import wait_until

LEASE = "kmrl:{fs}:lease"
FILES = 1500  # enough that the run is still holding its lease when the test freezes it


def _can_unshare_pid() -> str | None:
    if shutil.which("unshare") is None:
        return "util-linux `unshare` is not installed"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create a PID namespace here (needs root): {probe.stderr.decode().strip()}"
    return None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(FILES):
        (root / f"d{i:05}.txt").write_text(str(i))
    return root


@pytest.fixture
def fs_project(project, tree):
    project.write_main("daemon: {lease_ttl: 30s}\n")
    project.filesystem("fs", tree)
    return project


def _sync_command(project) -> list[str]:
    return [sys.executable, "-m", "kmrl_sync", "sync", "fs", "-c", str(project.config)]


def _unused_pid() -> int:
    """A pid no process has in this namespace (so the holder's pid is 'gone' when seen from here)."""
    for pid in range(32000, 30000, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid between 30000 and 32000")


def _freeze_while_holding(proc: subprocess.Popen[str], client: redis.Redis, pid: int | None = None) -> dict[str, str]:
    """Stop `proc`'s whole process group the moment its run holds the lease; return the lease.

    The run holds the lease for a few hundred milliseconds: the lease is polled, then the group is
    stopped, then the lease is read again. If the run had finished in between, the caller retries.
    """
    def holding() -> bool:
        owner = client.hget(LEASE, "pid")
        return owner is not None and (pid is None or owner == str(pid).encode())

    wait_until(lambda: holding() or proc.poll() is not None, 120, "the run to take the lease", interval=0.001)
    os.killpg(proc.pid, signal.SIGSTOP)
    return {k.decode(): v.decode() for k, v in client.hgetall(LEASE).items()}


def _flush_for_retry(client: redis.Redis) -> None:
    client.flushall()


@pytest.mark.skipif(_can_unshare_pid() is not None, reason=str(_can_unshare_pid()))
def test_a_live_run_in_another_pid_namespace_is_waited_for_not_taken_over(fs_project, redis_client):
    project = fs_project
    for _attempt in range(5):
        pid = _unused_pid()
        # In the new namespace, the next pid handed out is `pid`: the sync runs as that pid there,
        # a number that no process has here, which is how it looked "dead" from the other container.
        inner = (f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "
                 f"{' '.join(map(str, _sync_command(project)))}; exit $?")
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", inner],
                                cwd=project.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            lease = _freeze_while_holding(proc, redis_client, pid)
            if lease:
                break
            os.killpg(proc.pid, signal.SIGCONT)
            proc.communicate(timeout=120)
            _flush_for_retry(redis_client)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    else:
        pytest.fail("the run in the other namespace never was caught holding its lease")
    try:
        assert lease["pid"] == str(pid) and not os.path.exists(f"/proc/{pid}")  # the finding's setting
        here = project.cli("sync", "fs", "--wait", "1")
        assert here.returncode == 1, here.stdout + here.stderr
        me = ProcessIdentity.current()
        assert lease["host"] == me.host and lease["boot"] == me.boot and lease["pidns"] != me.pidns
        assert f"PID namespace {lease['pidns']}" in here.stdout and lease["run_id"] in here.stdout
        assert redis_client.hget(LEASE, "token").decode() == lease["token"]  # not taken over
        status = project.cli("status", "--json", check=True).stdout
        assert f'"pid_namespace": {lease["pidns"]}' in status
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "fs: ok" in out and "lost" not in out + err


def test_a_sigkilled_run_in_this_namespace_is_taken_over_at_once(fs_project, redis_client):
    project = fs_project
    for _attempt in range(5):
        proc = subprocess.Popen(_sync_command(project), cwd=project.root, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        lease = _freeze_while_holding(proc, redis_client, proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if lease:
            break
        _flush_for_retry(redis_client)
    else:
        pytest.fail("the run was never caught holding its lease")
    assert redis_client.hget(LEASE, "token").decode() == lease["token"]  # it could not release it
    result = project.cli("sync", "fs", "--wait", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fs: ok" in result.stdout


# --------------------------------------------------------------------------- the identity rules


@pytest.fixture
def lease_of(redis_client):
    scripts = Scripts.register(redis_client)

    def make() -> Lease:
        return Lease(redis_client, scripts, ConnectorKeys("kmrl", "fs"), ttl=30, run_id=uuid.uuid4().hex[:12])

    return make


def _hold(client: redis.Redis, **fields: str) -> None:
    client.hset(LEASE, mapping={"token": "theirs", "run_id": "r0", "acquired_at": "2026-01-01T00:00:00Z",
                                **fields})
    client.pexpire(LEASE, 60_000)


def test_a_reused_pid_is_a_dead_holder_but_the_same_process_is_not(redis_client, lease_of):
    me = ProcessIdentity.current()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        wait_until(lambda: start_time(sleeper.pid) != "", what="the sleeper's start time")
        started = start_time(sleeper.pid)
        _hold(redis_client, **{**me.fields(), "pid": str(sleeper.pid), "start": started})
        with pytest.raises(LeaseBusy):  # that very process: alive
            lease_of().acquire(wait=0)
        _hold(redis_client, **{**me.fields(), "pid": str(sleeper.pid), "start": str(int(started) - 1)})
        lease = lease_of()
        lease.acquire(wait=0)  # its pid now belongs to another process: the holder is gone
        lease.release()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_zombie_holds_nothing(redis_client, lease_of):
    me = ProcessIdentity.current()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z",
               what="the child to be a zombie")
    try:
        _hold(redis_client, **{**me.fields(), "pid": str(child.pid), "start": start_time(child.pid)})
        lease = lease_of()
        lease.acquire(wait=0)
        lease.release()
    finally:
        child.wait()


@pytest.mark.parametrize("differs", ["host", "boot", "pidns"])
def test_a_holder_elsewhere_is_waited_for_even_when_its_pid_is_free_here(redis_client, lease_of, differs):
    fields = {**ProcessIdentity.current().fields(), "pid": str(_unused_pid()), "start": "1"}
    fields[differs] = "something-else"
    _hold(redis_client, **fields)
    with pytest.raises(LeaseBusy, match="r0"):
        lease_of().acquire(wait=0)
    assert redis_client.hget(LEASE, "token") == b"theirs"


def test_a_lease_of_an_older_version_is_never_provably_dead(redis_client, lease_of):
    """Written before holders named their boot and namespace: waited for until its TTL runs out."""
    me = ProcessIdentity.current()
    _hold(redis_client, host=me.host, pid=str(_unused_pid()))
    with pytest.raises(LeaseBusy):
        lease_of().acquire(wait=0)
    redis_client.pexpire(LEASE, 1)
    wait_until(lambda: not redis_client.exists(LEASE), what="the lease to expire")
    lease = lease_of()
    lease.acquire(wait=0)
    lease.release()


def test_unknown_identity_parts_never_prove_death():
    me = ProcessIdentity.current()
    gone = _unused_pid()
    assert provably_dead(ProcessIdentity(me.host, me.boot, me.pidns, gone, ""), me)
    for holder in (ProcessIdentity(me.host, "", me.pidns, gone, ""), ProcessIdentity(me.host, me.boot, "", gone, ""),
                   ProcessIdentity(me.host, me.boot, me.pidns, 0, "")):
        assert not provably_dead(holder, me)
    blind = ProcessIdentity(me.host, "", "", me.pid, me.start)  # a checker that cannot read /proc
    assert not provably_dead(ProcessIdentity(me.host, "", "", gone, ""), blind)


def test_two_containers_with_one_host_name_and_pid_1_keep_two_heartbeats(redis_client):
    """Two daemons, each pid 1 in its own container with the same host name: each must keep its own
    heartbeat and registry entry (a key of host:pid made them overwrite each other, and one's
    clean exit deleted the other's heartbeat)."""
    from kmrl_sync.daemon.heartbeat import Heartbeat

    class Log:
        def warning(self, *args, **kwargs): ...
        def info(self, *args, **kwargs): ...
        def exception(self, *args, **kwargs): ...

    first, second = (Heartbeat(redis_client, "kmrl", 30, dict, Log(),
                               identity=ProcessIdentity("node", "boot-1", pidns, 1, "100"))
                     for pidns in ("4026532001", "4026532002"))
    assert first.beat() and second.beat()
    assert first.key != second.key
    assert len(redis_client.hgetall("kmrl:daemons")) == 2
    first.stop()
    assert redis_client.exists(second.key) and len(redis_client.hgetall("kmrl:daemons")) == 1
    second.stop()
