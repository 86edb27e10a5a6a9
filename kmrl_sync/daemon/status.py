"""`status` and `health`: what every connector did last, and whether anything needs a human."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import UTC, datetime
from typing import Any

import redis

from kmrl_sync.config.models import Config
from kmrl_sync.engine.connection import connect_config, is_cluster, server_infos
from kmrl_sync.engine.identity import pid_namespace
from kmrl_sync.engine.keys import ConnectorKeys, daemons_key, heartbeat_key
from kmrl_sync.engine.lease import read_holder
from kmrl_sync.engine.memory import health_problem as memory_health_problem
from kmrl_sync.redaction import mask_url

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
    return connect_config(config, socket_timeout=5.0)


def _schedule_text(schedule: Any) -> str:
    if schedule.cron:
        return f"cron {schedule.cron}"
    seconds = schedule.every
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"every {int(seconds // size)}{unit}"
    return f"every {seconds:g}s"


def redis_info(client: redis.Redis) -> dict[str, Any]:
    """What `status`, `health` and `check --connect` show of Redis. On a Cluster every master is
    asked and the one that needs attention first is shown (out of memory, then a risky eviction
    policy), with `masters` their number."""
    # INFO, not CONFIG GET: CONFIG is often renamed away on managed Redis
    infos = server_infos(client)
    info = min(infos, key=lambda i: (memory_health_problem(i) is None, eviction_warning(i.get("maxmemory_policy"))
                                     is None))
    extra = {"masters": len(infos)} if is_cluster(client) else {}
    return {
        **extra,
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


def failed_documents(name: str, raw: dict[bytes, bytes]) -> list[dict[str, Any]]:
    """The failures hash (commit_batch.lua keeps it) as a list, most recently failed first.

    `document` is the document id (`<connector>:<native id>`), or the connector's name for a
    failure of the connector itself (a folder it could not list). Texts are data from sources:
    callers that print them make them visible (display.py); JSON carries them as they are.
    """
    out = []
    for native_raw, value in raw.items():
        native = native_raw.decode("utf-8", "replace")
        try:
            entry = json.loads(value)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            entry = {"reason": value.decode("utf-8", "replace")}
        try:
            attempts = int(entry.get("attempts") or 0)
        except (TypeError, ValueError):
            attempts = 0
        out.append({"document": f"{name}:{native}" if native else name, "reason": str(entry.get("reason", "")),
                    "since": str(entry.get("since", "")), "last": str(entry.get("last", "")), "attempts": attempts})
    out.sort(key=lambda d: (d["last"], d["document"]), reverse=True)
    return out


def collect_status(config: Config, names: list[str] | None = None) -> dict[str, Any]:
    """Everything `status` shows; `names` narrows the connectors to those (all by default)."""
    report: dict[str, Any] = {"config": str(config.path),
                              "redis": {"url": mask_url(config.redis_url), "ok": False}, "connectors": []}
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
        if names and name not in names:
            continue
        keys = ConnectorKeys(config.key_prefix, name)
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.stats)
        pipe.get(keys.cursor)
        pipe.zcard(keys.known)
        pipe.hgetall(keys.failures)
        stats_raw, cursor, known, failures_raw = pipe.execute()
        stats = {k.decode(): v.decode() for k, v in stats_raw.items()}
        holder = read_holder(client, keys)
        cursor_text = cursor.decode("utf-8", "replace") if cursor else None
        if cursor_text and len(cursor_text) > CURSOR_PREVIEW:
            cursor_text = cursor_text[:CURSOR_PREVIEW] + "..."
        report["connectors"].append({
            "name": name, "type": cfg.type, "enabled": cfg.enabled, "schedule": _schedule_text(cfg.schedule),
            "file": str(cfg.file), "known_documents": known, "cursor": cursor_text,
            "last_run": _last_run(stats),
            "last_success": stats.get("last_success") or None,
            "next_run": next_runs.get(name),
            "lag_seconds": round(_age_seconds(stats["last_success"]), 1) if stats.get("last_success") else None,
            "failing_since": stats.get("failing_since") or None,
            "last_error": stats.get("last_error") or None,
            "failed_documents": failed_documents(name, failures_raw),
            "totals": {k.removeprefix("total_"): _number(v, int) for k, v in stats.items() if k.startswith("total_")},
            "lease": None if holder is None else {
                "host": holder.host, "pid": holder.pid, "run_id": holder.run_id,
                "since": holder.acquired_at, "ttl_ms": holder.ttl_ms,
                # who exactly (identity.py); null where the holder did not say (an older kmrl-sync)
                "boot_id": holder.identity.boot or None, "pid_namespace": _id_number(holder.identity.pidns),
                "process_start": _id_number(holder.identity.start)},
        })
    return report


RUN_COUNTS = ("created", "updated", "deleted", "unchanged", "failed")


def _number(value: str, kind: type[int] | type[float]) -> int | float | None:
    """A number stored as text in a Redis hash; None if it is not one (never a crash)."""
    try:
        number = kind(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _last_run(stats: dict[str, str]) -> dict[str, Any]:
    """The `last_run_*` fields of the stats hash, typed: counts as ints, seconds as a float."""
    run: dict[str, Any] = {}
    for key, value in stats.items():
        if not key.startswith("last_run_"):
            continue
        name = key.removeprefix("last_run_")
        if name in RUN_COUNTS:
            run[name] = _number(value, int)
        elif name == "seconds":
            run[name] = _number(value, float)
        else:
            run[name] = value
    return run


def _console() -> Any:
    """A terminal's own width; piped (cron mail, `ssh host kmrl-sync status`), $COLUMNS if set, else
    wide enough for the one-line-per-connector table."""
    import os
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 220)


STATUS_COLUMNS = ("name", "type", "enabled", "schedule", "next run", "last run", "result", "counts",
                  "last success", "lag", "failing since", "known", "lease")


def _connector_cells(c: dict[str, Any], here: str) -> list[str]:
    """One connector's row, in STATUS_COLUMNS order, as plain strings (made visible by the caller)."""
    run = c["last_run"]
    counts = (f"+{run.get('created', 0)} ~{run.get('updated', 0)} -{run.get('deleted', 0)} "
              f"={run.get('unchanged', 0)} !{run.get('failed', 0)}") if run else ""
    lag = _duration_text(c["lag_seconds"]) if c["lag_seconds"] is not None else ""
    return [c["name"], c["type"], "yes" if c["enabled"] else "no", c["schedule"], c["next_run"] or "",
            run.get("finished", ""), run.get("result", "never"), counts, c["last_success"] or "", lag,
            c["failing_since"] or "", str(c["known_documents"]), _lease_text(c["lease"], here)]


def render_status(report: dict[str, Any], console: Any = None) -> None:
    """The human view of `collect_status`. Every value that comes from Redis, a source or the
    config goes through `display.text` (escaped, never markup: see display.py). The connectors are
    one table when it fits the width, else one block per connector, so no value is ever cut."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    from kmrl_sync.display import text

    console = console or _console()
    r = report["redis"]
    if r["ok"]:
        limit = f" of maxmemory {r['maxmemory']}" if r.get("maxmemory") else ""
        console.print(text(f"Redis {r['url']}: {r['version']}, {r['used_memory']} used{limit}, "
                           f"{r['connected_clients']} clients, maxmemory-policy {r['maxmemory_policy']}"))
        for problem, _unhealthy in redis_problems(r):
            console.print(text(f"warning: {problem}", "red"))
    else:
        console.print(text(f"Redis {r['url']}: unreachable: {r.get('error')}", "red"))
        return
    here = pid_namespace()
    rows = [_connector_cells(c, here) for c in report["connectors"]]
    table = Table(title="connectors")
    for column in STATUS_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(text(cell) for cell in row))
    # the width the table takes with no cell folded (measured as if the terminal were unbounded)
    if console.measure(table, options=console.options.update_width(1 << 16)).maximum <= console.width:
        console.print(table)
    else:
        console.print(Text("connectors", style="italic"))
        for row in rows:
            console.print(text(row[0], "bold"))
            console.print(Padding(_connector_block(row), (0, 0, 0, 2)))
    for d in report.get("daemons", []):
        state = text("alive") if d.get("alive") else text("NO HEARTBEAT (crashed or hung)", "red")
        console.print(Text.assemble(text(f"daemon {d.get('host')}:{d.get('pid')} "), state,
                                    text(f", started {d.get('started', '?')}, last beat {d.get('beat', '?')}, "
                                         f"{len(d.get('connectors') or [])} connector(s)")))
    for c in report["connectors"]:
        if c["last_error"]:
            console.print(text(f"{c['name']}: last error: {c['last_error']}"))
    for c in report["connectors"]:
        if c.get("failed_documents"):
            console.print(text(f"{c['name']}: {len(c['failed_documents'])} failed document(s); "
                               f"kmrl-sync status {c['name']} lists them"))


def _connector_block(row: list[str], extra: tuple[tuple[str, str], ...] = ()) -> Any:
    """One connector as label/value lines (STATUS_COLUMNS after the name, then `extra`), values
    made visible and folded, never cut."""
    from rich.table import Table

    from kmrl_sync.display import text

    block = Table.grid(padding=(0, 2))
    block.add_column(style="dim", no_wrap=True)
    block.add_column(overflow="fold")
    for column, cell in (*zip(STATUS_COLUMNS[1:], row[1:], strict=True), *extra):
        if cell:
            block.add_row(column, text(cell))
    return block


FAILED_COLUMNS = ("document", "reason", "since", "last failed", "attempts")


def render_details(report: dict[str, Any], console: Any = None) -> None:
    """`status NAME...`: each connector of the report in full (its file, cursor and last error too),
    then its failed documents, most recently failed first. Names, reasons and ids are data from the
    sources: made visible (display.py), never markup."""
    from rich.padding import Padding
    from rich.table import Table

    from kmrl_sync.display import text

    console = console or _console()
    r = report["redis"]
    if not r["ok"]:
        console.print(text(f"Redis {r['url']}: unreachable: {r.get('error')}", "red"))
        return
    here = pid_namespace()
    for c in report["connectors"]:
        extra = (("file", c["file"]), ("cursor", c["cursor"] or ""), ("last error", c["last_error"] or ""))
        console.print(text(c["name"], "bold"))
        console.print(Padding(_connector_block(_connector_cells(c, here), extra), (0, 0, 0, 2)))
        failed = c.get("failed_documents") or []
        if not failed:
            console.print(Padding(text("no failed documents"), (0, 0, 0, 2)))
            continue
        table = Table(title=text(f"failed documents of {c['name']}: {len(failed)}, most recently failed first"),
                      title_justify="left")
        for column in FAILED_COLUMNS:  # times kept whole (24 characters); ids and reasons fold
            table.add_column(column, overflow="fold", min_width=24 if column in ("since", "last failed") else None)
        for d in failed:
            table.add_row(*(text(d[k]) for k in ("document", "reason", "since", "last", "attempts")))
        console.print(Padding(table, (0, 0, 0, 2)))


def _lease_text(lease: dict[str, Any] | None, here: str) -> str:
    """`host:pid`, and the holder's PID namespace when it is not ours: that pid means another
    process here (or none), which is what an operator comparing it with `ps` must know."""
    if not lease:
        return ""
    text = f"{lease['host']}:{lease['pid']}"
    if lease.get("pid_namespace") and str(lease["pid_namespace"]) != here:
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
    daemons = []
    for daemon_id, raw_entry in sorted(client.hgetall(daemons_key(prefix)).items()):
        try:
            entry = json.loads(raw_entry)
        except ValueError:
            entry = {}
        if not isinstance(entry, dict):
            entry = {}
        identity = {"boot_id": entry.pop("boot", None) or None,
                    "pid_namespace": _id_number(entry.pop("pidns", None)),
                    "process_start": _id_number(entry.pop("start", None))}
        beat = client.hgetall(heartbeat_key(prefix, daemon_id.decode()))
        daemon = {"id": daemon_id.decode(), **entry, **identity, **_decode_heartbeat(beat), "alive": bool(beat)}
        daemons.append(daemon)
    return daemons


def _id_number(value: Any) -> int | None:
    """A PID namespace inode or a process start time as stored (text), as a number; None if unknown."""
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() else None


def health_problems(config: Config, require_daemon: bool = False) -> list[str]:
    """Everything that needs a human, as sentences; empty when healthy."""
    problems: list[str] = []
    try:
        client = _client(config)
        info = redis_info(client)
    except redis.RedisError as exc:
        return [f"Redis {mask_url(config.redis_url)} unreachable: {exc}"]
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
        problems.append(f"Redis {mask_url(config.redis_url)} failed mid-check: {exc}")
    return problems
