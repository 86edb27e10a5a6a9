"""`status` and `health`: what every connector did last, and whether anything needs a human."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import redis

from kmrl_sync.config import Config
from kmrl_sync.identity import pid_namespace
from kmrl_sync.keys import ConnectorKeys, heartbeat_key
from kmrl_sync.lease import read_holder
from kmrl_sync.memory import health_problem as memory_health_problem
from kmrl_sync.redis_client import connect, redact_url

RISKY_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
CURSOR_PREVIEW = 120


def eviction_warning(policy: str | None) -> tuple[str, bool] | None:
    """The one warning `status`, `health` and `check --connect` give about an eviction policy, and
    whether it makes Redis unhealthy for kmrl-sync; None for `noeviction`.

    `allkeys-*` may evict anything: cursors, versions sent (documents queued twice) and queued work.
    `volatile-*` evicts only keys with a TTL, which here are leases and daemon heartbeats: a run
    whose lease is evicted stops at its next commit (the commit checks the lease), and a daemon may
    look dead until its next beat. No data is lost, so it is a warning, not a health failure.
    """
    if not policy or policy == "noeviction":
        return None
    if policy in RISKY_POLICIES or policy.startswith("allkeys-"):
        return (f"Redis maxmemory-policy is {policy}: it can evict sync state, leases and queued work; "
                "use noeviction"), True
    if policy.startswith("volatile-"):
        return (f"Redis maxmemory-policy is {policy}: under memory pressure it can evict leases and daemon "
                "heartbeats (the keys with a TTL); noeviction is safer"), False
    return None


def _client(config: Config) -> redis.Redis:
    password = config.redis_password.get_secret_value() if config.redis_password else None
    return connect(config.redis_url, password=password, state_dir=config.state_dir, socket_timeout=5.0)


def _schedule_text(schedule: Any) -> str:
    if schedule.cron:
        return f"cron {schedule.cron}"
    seconds = schedule.every
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {int(seconds // size)}{unit}"
    return f"every {seconds:g}s"


def redis_info(client: redis.Redis) -> dict[str, Any]:
    info = client.info()  # INFO, not CONFIG GET: CONFIG is often renamed away on managed Redis
    return {
        "ok": True,
        "version": info.get("redis_version"),
        "used_memory": info.get("used_memory_human"),
        "maxmemory": info.get("maxmemory_human") if info.get("maxmemory") else None,  # None: no limit
        "maxmemory_policy": info.get("maxmemory_policy"),
        "connected_clients": info.get("connected_clients"),
        "memory_problem": memory_health_problem(info),  # set while Redis refuses writes
    }


def redis_problems(info: dict[str, Any]) -> list[tuple[str, bool]]:
    """What `status`, `health` and `check --connect` say about Redis itself: (sentence, unhealthy)."""
    found: list[tuple[str, bool]] = []
    warning = eviction_warning(info.get("maxmemory_policy"))
    if warning:
        found.append(warning)
    if info.get("memory_problem"):
        found.append((info["memory_problem"], True))
    return found


def collect_status(config: Config) -> dict[str, Any]:
    report: dict[str, Any] = {"config": str(config.path),
                              "redis": {"url": redact_url(config.redis_url), "ok": False}, "connectors": []}
    try:
        client = _client(config)
        report["redis"].update(redis_info(client))
    except redis.RedisError as exc:
        report["redis"]["error"] = str(exc)
        return report
    daemons = read_daemons(client, config.key_prefix)
    report["daemons"] = daemons
    next_runs: dict[str, str] = {}
    for daemon in daemons:
        for name, when in (daemon.get("next_runs") or {}).items():
            if name not in next_runs or when < next_runs[name]:
                next_runs[name] = when
    for name, cfg in config.connectors.items():
        keys = ConnectorKeys(config.key_prefix, name)
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.stats)
        pipe.get(keys.cursor)
        pipe.zcard(keys.index)
        stats_raw, cursor, known = pipe.execute()
        stats = {k.decode(): v.decode() for k, v in stats_raw.items()}
        holder = read_holder(client, keys)
        cursor_text = cursor.decode("utf-8", "replace") if cursor else None
        if cursor_text and len(cursor_text) > CURSOR_PREVIEW:
            cursor_text = cursor_text[:CURSOR_PREVIEW] + "..."
        report["connectors"].append({
            "name": name, "type": cfg.type, "enabled": cfg.enabled, "schedule": _schedule_text(cfg.schedule),
            "file": str(cfg.file), "known_documents": known, "cursor": cursor_text,
            "last_run": {k.removeprefix("last_run_"): v for k, v in stats.items() if k.startswith("last_run_")},
            "last_success": stats.get("last_success") or None,
            "next_run": next_runs.get(name),
            "lag_seconds": round(_age_seconds(stats["last_success"]), 1) if stats.get("last_success") else None,
            "failing_since": stats.get("failing_since") or None,
            "last_error": stats.get("last_error") or None,
            "totals": {k.removeprefix("total_"): int(v) for k, v in stats.items() if k.startswith("total_")},
            "lease": None if holder is None else {
                "host": holder.host, "pid": holder.pid, "run_id": holder.run_id,
                "since": holder.acquired_at, "ttl_ms": holder.ttl_ms,
                # who exactly (identity.py); null where the holder did not say (an older kmrl-sync)
                "boot_id": holder.identity.boot or None, "pid_namespace": holder.identity.pidns or None,
                "process_start": holder.identity.start or None},
        })
    return report


def render_status(report: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped (cron mail, ssh host 'kmrl-sync status'): wide enough that the table stays readable.
    console = Console() if sys.stdout.isatty() else Console(width=220)
    r = report["redis"]
    if r["ok"]:
        limit = f" of maxmemory {r['maxmemory']}" if r.get("maxmemory") else ""
        console.print(f"Redis {r['url']}: {r['version']}, {r['used_memory']} used{limit}, "
                      f"{r['connected_clients']} clients, maxmemory-policy {r['maxmemory_policy']}")
        for problem, _unhealthy in redis_problems(r):
            console.print(f"[red]warning: {problem}")
    else:
        console.print(f"[red]Redis {r['url']}: unreachable: {r.get('error')}")
        return
    here = pid_namespace()
    table = Table(title="connectors")
    for column in ("name", "type", "enabled", "schedule", "next run", "last run", "result", "counts",
                   "last success", "lag", "failing since", "known", "lease"):
        table.add_column(column)
    for c in report["connectors"]:
        run = c["last_run"]
        counts = (f"+{run.get('created', 0)} ~{run.get('updated', 0)} -{run.get('deleted', 0)} "
                  f"={run.get('unchanged', 0)} !{run.get('failed', 0)}") if run else ""
        lease = _lease_text(c["lease"], here)
        lag = _duration_text(c["lag_seconds"]) if c["lag_seconds"] is not None else ""
        table.add_row(c["name"], c["type"], "yes" if c["enabled"] else "no", c["schedule"], c["next_run"] or "",
                      run.get("finished", ""), run.get("result", "never"), counts, c["last_success"] or "", lag,
                      c["failing_since"] or "", str(c["known_documents"]), lease)
    console.print(table)
    for d in report.get("daemons", []):
        state = "alive" if d.get("alive") else "[red]NO HEARTBEAT (crashed or hung)[/red]"
        console.print(f"daemon {d.get('host')}:{d.get('pid')} {state}, started {d.get('started', '?')}, "
                      f"last beat {d.get('beat', '?')}, {len(d.get('connectors') or [])} connector(s)")
    for c in report["connectors"]:
        if c["last_error"]:
            console.print(f"{c['name']}: last error: {c['last_error']}")


def _lease_text(lease: dict[str, Any] | None, here: str) -> str:
    """`host:pid`, and the holder's PID namespace when it is not ours: that pid means another
    process here (or none), which is what an operator comparing it with `ps` must know."""
    if not lease:
        return ""
    text = f"{lease['host']}:{lease['pid']}"
    if lease.get("pid_namespace") and lease["pid_namespace"] != here:
        text += f" (PID namespace {lease['pid_namespace']})"
    return text


def _age_seconds(iso: str) -> float:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (datetime.now(UTC) - when).total_seconds()


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _decode_heartbeat(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in ("connectors", "watching", "next_runs"):
        if name in out:
            with contextlib.suppress(ValueError):
                out[name] = json.loads(out[name])
    if "pid" in out and out["pid"].isdigit():
        out["pid"] = int(out["pid"])
    return out


def read_daemons(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every registered daemon (see heartbeat.py) with its heartbeat, `alive` False when it is gone.

    Reads the registry hash and each heartbeat by name: no SCAN/KEYS over the keyspace.
    """
    from kmrl_sync.heartbeat import daemons_key

    daemons = []
    for daemon_id, raw_entry in sorted(client.hgetall(daemons_key(prefix)).items()):
        try:
            entry = json.loads(raw_entry)
        except ValueError:
            entry = {}
        beat = client.hgetall(heartbeat_key(prefix, daemon_id.decode()))
        daemon = {"id": daemon_id.decode(), **entry, **_decode_heartbeat(beat), "alive": bool(beat)}
        daemons.append(daemon)
    return daemons


def health_problems(config: Config, require_daemon: bool = False) -> list[str]:
    """Everything that needs a human, as sentences; empty when healthy."""
    problems: list[str] = []
    try:
        client = _client(config)
        info = redis_info(client)
    except redis.RedisError as exc:
        return [f"Redis {redact_url(config.redis_url)} unreachable: {exc}"]
    try:
        problems += [problem for problem, unhealthy in redis_problems(info) if unhealthy]
        daemons = read_daemons(client, config.key_prefix)
        for daemon in daemons:
            if not daemon["alive"]:
                problems.append(f"daemon {daemon['id']} (started {daemon.get('started', '?')}) has a stale "
                                f"heartbeat: it crashed or hangs (no heartbeat for over "
                                f"{config.daemon.heartbeat_ttl:g}s)")
            elif daemon.get("beat") and _age_seconds(daemon["beat"]) > config.daemon.heartbeat_ttl:
                problems.append(f"daemon {daemon['id']} has a stale heartbeat (last beat {daemon['beat']})")
        if require_daemon and not any(d["alive"] for d in daemons):
            problems.append("no daemon heartbeat: kmrl-sync run is not running (or cannot reach Redis)")
        for name, cfg in config.connectors.items():
            if not cfg.enabled:
                continue
            since, refused = (v.decode() if v else "" for v in client.hmget(
                ConnectorKeys(config.key_prefix, name).stats, ["failing_since", "memory_refused_at"]))
            if since and _age_seconds(since) > config.daemon.alert_after:
                problems.append(f"{name} has been failing since {since} "
                                f"(longer than daemon.alert_after, {config.daemon.alert_after:g}s)")
            if refused:  # at once, not after alert_after: nothing of it commits until a human acts
                problems.append(f"{name}: Redis refused its last commit for lack of memory ({refused}); "
                                "raise maxmemory or free space (its next run then completes it)")
    except redis.RedisError as exc:
        problems.append(f"Redis {redact_url(config.redis_url)} failed mid-check: {exc}")
    return problems
