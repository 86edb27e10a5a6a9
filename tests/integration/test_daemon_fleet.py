"""Three daemons on one config share ten connectors: never two runs of one connector at once,
every connector runs, and a SIGKILLed daemon's connectors move to the others once its leases expire."""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path

from tests.integration.test_daemon_support import (
    DaemonProcess,
    EventLog,
    can_fake_hostnames,
    filesystem_connector,
    overlapping_runs,
)
from tests.support.waiting import wait_until

CONNECTORS = [f"c{i}" for i in range(10)]
LEASE_TTL = 5.0
INTERVAL = 1.0
SLACK = 3.0  # scheduling and pool latency on a busy test machine, on top of the requirement
BEFORE_KILL = 25.0
AFTER_KILL = 20.0


def test_three_daemons_share_ten_connectors_and_take_over_from_a_killed_one(project, redis_client, tmp_path: Path):
    project.write_main(extra=f"daemon: {{lease_ttl: {LEASE_TTL}s, heartbeat_ttl: 3s, startup_jitter: 1s, "
                             "max_parallel: 4}\n")
    for name in CONNECTORS:
        root = tmp_path / "sources" / name
        root.mkdir(parents=True)
        for j in range(20):
            (root / f"doc{j}.txt").write_text(f"{name} {j}\n" * 50)
        filesystem_connector(project, name, root, every=f"{INTERVAL:g}s")
    events = EventLog(redis_client)
    # Three "servers": separate hostnames when this machine allows it, so a dead daemon's leases are
    # recovered by TTL expiry as across real hosts (on one host they are taken over at once).
    hosts = [f"kmrl-test-{i}" for i in range(3)] if can_fake_hostnames() else [None] * 3
    daemons = [DaemonProcess(project, tag=str(i), hostname=hosts[i]) for i in range(3)]
    try:
        started = time.monotonic()
        wait_until(lambda: all(d.alive() for d in daemons) and time.monotonic() - started > BEFORE_KILL,
                   BEFORE_KILL + 5, "the fleet to run", interval=0.5)
        assert all(d.alive() for d in daemons), [d.output()[-2000:] for d in daemons]
        ran = {e["connector"] for e in events.find(event="run_finished")}
        assert ran == set(CONNECTORS)

        # Kill -9 a daemon while it holds at least one lease, so that lease must expire first.
        victim = daemons[0]
        lease_keys = [f"kmrl:{{{name}}}:lease" for name in CONNECTORS]

        def held_by_victim() -> list[str]:
            pipe = redis_client.pipeline(transaction=False)
            for key in lease_keys:
                pipe.hget(key, "pid")
            return [n for n, pid in zip(CONNECTORS, pipe.execute(), strict=True) if pid == str(victim.pid).encode()]

        def freeze_holding_a_lease() -> list[str]:
            wait_until(held_by_victim, 20, "the victim to hold a lease", interval=0.001)
            victim.signal(signal.SIGSTOP)
            held = held_by_victim()
            if not held:  # released in the instant before the stop: try again
                victim.signal(signal.SIGCONT)
            return held

        stuck = wait_until(freeze_holding_a_lease, 30, "the victim to be frozen holding a lease", interval=0)
        victim.process.kill()
        killed_at = time.monotonic()
        victim.wait(10)
        mark = events.mark()
        assert held_by_victim() == stuck  # nobody may run these until their leases expire
        deadline = LEASE_TTL + INTERVAL + SLACK
        for name in CONNECTORS:
            event = events.wait(timeout=max(0.1, killed_at + deadline - time.monotonic()), since=mark,
                                event="run_started", connector=name)
            assert event["pid"] != victim.pid
        wait_until(lambda: time.monotonic() - killed_at > AFTER_KILL, AFTER_KILL + 5, "the survivors to run",
                   interval=0.5)
        for survivor in daemons[1:]:
            assert survivor.alive(), survivor.output()[-3000:]
            survivor.signal(signal.SIGTERM)
        assert [s.wait(60) for s in daemons[1:]] == [0, 0]
    finally:
        for daemon in daemons:
            if daemon.alive():
                daemon.process.kill()
                daemon.wait(10)
        events.close()

    all_events = events.snapshot()
    assert overlapping_runs(all_events, dead_pids={victim.pid}) == []
    after_kill = [e for e in all_events[mark:] if e["event"] == "run_finished"]
    assert {e["connector"] for e in after_kill} == set(CONNECTORS)
    by_pid: dict[int, int] = defaultdict(int)
    for event in all_events:
        if event["event"] == "run_finished":
            by_pid[event["pid"]] += 1
    assert len(by_pid) == 3, by_pid  # the leases spread the work over the whole fleet
    assert stuck
    for name in stuck:
        takeover = events.find(mark, event="run_started", connector=name)[0]
        assert takeover["pid"] != victim.pid
        print(f"{name}: held by the killed daemon, run by {takeover['host']}:{takeover['pid']} "
              f"{takeover['_seen'] - killed_at:.2f}s after the kill (lease TTL {LEASE_TTL:g}s)")
    if hosts[0] is not None:
        assert {e["host"] for e in all_events if e["event"] == "run_started"} == set(hosts)
    # Clean exits unregister; the killed daemon stays registered without a heartbeat (health reports it).
    registered = [k.decode() for k in redis_client.hkeys("kmrl:daemons")]
    assert len(registered) == 1 and f":{victim.pid}:" in registered[0], registered
