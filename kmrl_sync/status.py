"""`status` and `health`: what every connector did last, and whether anything needs a human."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from kmrl_sync.config import Config
from kmrl_sync.keys import ConnectorKeys, heartbeat_pattern
from kmrl_sync.lease import read_holder
from kmrl_sync.redis_client import connect, redact_url

RISKY_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")
CURSOR_PREVIEW = 120


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
        "maxmemory_policy": info.get("maxmemory_policy"),
        "connected_clients": info.get("connected_clients"),
    }


def collect_status(config: Config) -> dict[str, Any]:
    report: dict[str, Any] = {"config": str(config.path),
                              "redis": {"url": redact_url(config.redis_url), "ok": False}, "connectors": []}
    try:
        client = _client(config)
        report["redis"].update(redis_info(client))
    except redis.RedisError as exc:
        report["redis"]["error"] = str(exc)
        return report
    daemons = []
    for key in client.scan_iter(match=heartbeat_pattern(config.key_prefix), count=100):
        raw = client.hgetall(key)
        daemons.append({k.decode(): v.decode() for k, v in raw.items()})
    report["daemons"] = daemons
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
            "failing_since": stats.get("failing_since") or None,
            "last_error": stats.get("last_error") or None,
            "totals": {k.removeprefix("total_"): int(v) for k, v in stats.items() if k.startswith("total_")},
            "lease": None if holder is None else {
                "host": holder.host, "pid": holder.pid, "run_id": holder.run_id,
                "since": holder.acquired_at, "ttl_ms": holder.ttl_ms},
        })
    return report


def render_status(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    r = report["redis"]
    if r["ok"]:
        console.print(f"Redis {r['url']}: {r['version']}, {r['used_memory']} used, "
                      f"{r['connected_clients']} clients, maxmemory-policy {r['maxmemory_policy']}")
        if r["maxmemory_policy"] in RISKY_POLICIES:
            console.print(f"[red]warning: maxmemory-policy {r['maxmemory_policy']} "
                          "can evict sync state and queued work")
    else:
        console.print(f"[red]Redis {r['url']}: unreachable: {r.get('error')}")
        return
    table = Table(title="connectors")
    for column in ("name", "type", "enabled", "schedule", "last run", "result", "counts", "last success",
                   "failing since", "known", "lease"):
        table.add_column(column)
    for c in report["connectors"]:
        run = c["last_run"]
        counts = (f"+{run.get('created', 0)} ~{run.get('updated', 0)} -{run.get('deleted', 0)} "
                  f"={run.get('unchanged', 0)} !{run.get('failed', 0)}") if run else ""
        lease = f"{c['lease']['host']}:{c['lease']['pid']}" if c["lease"] else ""
        table.add_row(c["name"], c["type"], "yes" if c["enabled"] else "no", c["schedule"],
                      run.get("finished", ""), run.get("result", "never"), counts, c["last_success"] or "",
                      c["failing_since"] or "", str(c["known_documents"]), lease)
    console.print(table)
    for c in report["connectors"]:
        if c["last_error"]:
            console.print(f"{c['name']}: last error: {c['last_error']}")


def _age_seconds(iso: str) -> float:
    when = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (datetime.now(UTC) - when).total_seconds()


def health_problems(config: Config, require_daemon: bool = False) -> list[str]:
    problems: list[str] = []
    try:
        client = _client(config)
        info = redis_info(client)
    except redis.RedisError as exc:
        return [f"Redis {redact_url(config.redis_url)} unreachable: {exc}"]
    if info["maxmemory_policy"] in RISKY_POLICIES:
        problems.append(f"Redis maxmemory-policy is {info['maxmemory_policy']}: it can evict sync state and "
                        "queued work; use noeviction (or volatile-*)")
    if require_daemon and not any(client.scan_iter(match=heartbeat_pattern(config.key_prefix), count=100)):
        problems.append("no daemon heartbeat: kmrl-sync run is not running (or cannot reach Redis)")
    for name, cfg in config.connectors.items():
        if not cfg.enabled:
            continue
        since = client.hget(ConnectorKeys(config.key_prefix, name).stats, "failing_since")
        if since and since.decode() and _age_seconds(since.decode()) > config.daemon.alert_after:
            problems.append(f"{name} has been failing since {since.decode()}")
    return problems
