"""`kmrl-sync`: the command line. Exit codes: 0 ok, 1 some sync failed, 2 bad usage or config.

Imports are deferred into the commands: a no-change `kmrl-sync sync` is dominated by start-up
time, so nothing is imported that the command at hand does not use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, NoReturn

from kmrl_sync.redaction import OutputError

# pydantic's documented switch (docs: Plugins, "Disabling Plugins"): kmrl-sync uses no pydantic
# plugin, and their entry-point scan is ~1 % of a no-change sync's instructions. An environment
# that sets the variable, even empty (plugins on), keeps its value: README, Development.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _say(line: str, *, err: bool = False) -> None:
    """Print one line for a human. Lines carry data (names, errors, hosts) from sources and Redis:
    their control characters are made visible (display.py), so data cannot steer the terminal."""
    from kmrl_sync.display import visible

    print(visible(line), file=sys.stderr if err else sys.stdout)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep its message format
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from kmrl_sync import __version__

    parser = _Parser(prog="kmrl-sync", description="Feed the KMRL Knowledge Hub from mail, folders and SharePoint.")
    parser.add_argument("--version", action="version", version=f"kmrl-sync {__version__}")
    config_help = "config file (default: $KMRL_SYNC_CONFIG, /etc/kmrl-sync/sync.yaml, ./sync.yaml)"
    # -c before or after the subcommand: the subcommand's own -c has no default (SUPPRESS), so it
    # leaves one given before the subcommand alone, and wins when both are given.
    parser.add_argument("-c", "--config", help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("run", parents=[common], help="run the daemon in the foreground (systemd runs this)")

    p = sub.add_parser("sync", parents=[common], help="sync connectors now and print a summary")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="every enabled connector")
    p.add_argument("--full", action="store_true", help="rescan everything instead of trusting cursors/fingerprints")
    p.add_argument("--wait", type=_duration, default=None, metavar="DURATION",
                   help="how long to wait for a connector held by another run: 30s, 5m, or seconds "
                        "(default: the lease TTL)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("status", parents=[common], help="every connector's last run, cursor, counts, lease; "
                                                        "with names, those connectors in detail")
    p.add_argument("names", nargs="*", metavar="NAME", help="show these connectors in detail (failed documents)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("check", parents=[common], help="validate all config; --connect also reaches every source")
    p.add_argument("--connect", action="store_true")

    p = sub.add_parser("reset", parents=[common], help="forget a connector's cursor and seen versions")
    p.add_argument("names", nargs="+", metavar="NAME")

    p = sub.add_parser("queue", parents=[common], help="show what is waiting on the work queues")
    p.add_argument("--limit", type=int, default=20, help="how many of the oldest items to show")

    sub.add_parser("health", parents=[common], help="exit 0 when healthy, 1 otherwise (for monitoring)")
    sub.add_parser("connectors", parents=[common], help="list the installed connector types")

    p = sub.add_parser("schema", parents=[common],
                       help="print the JSON Schema of sync.yaml, or with --connector of a connector file")
    p.add_argument("--connector", nargs="?", const="", default=None, metavar="TYPE",
                   help="a connector file's schema: of TYPE's options, or without TYPE of every installed type")

    p = sub.add_parser("keys", help="create or rotate an encryption key file (no config needed)")
    keys = p.add_subparsers(dest="keys_command", required=True, parser_class=_Parser)
    k = keys.add_parser("new", help="create a key file (mode 0600) holding one key; never overwrites")
    k.add_argument("file", metavar="FILE")
    k = keys.add_parser("rotate", help="add a new primary key to a key file; older keys stay for reading")
    k.add_argument("file", metavar="FILE")
    p = sub.add_parser("blobs", parents=[common], help="the content store: `blobs gc` deletes unreferenced content")
    blobs = p.add_subparsers(dest="blobs_command", required=True, parser_class=_Parser)
    p = blobs.add_parser("gc", parents=[common], help="delete stored content no live document refers to, and "
                                                      "leftovers of killed runs (safe while syncs run)")
    p.add_argument("--grace", type=_duration, default=None, metavar="DURATION",
                   help="keep unreferenced content younger than this (default: blobs.gc.grace, 24h)")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _duration(text: str) -> float:
    """`--wait`, `--grace`: a duration as the config files write one (config.models.parse_duration:
    24h, 30m, 90 for seconds, 0 allowed; finite, at most a year)."""
    from kmrl_sync.config.models import parse_duration

    try:
        return parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


MAX_PROBLEMS_SHOWN = 200


def _load(args: argparse.Namespace, load_types: bool = True, with_connectors: bool = True):
    from kmrl_sync.loading.loader import ConfigError, load_config

    try:
        config = load_config(args.config, load_types=load_types, with_connectors=with_connectors)
        args.loaded_config = config  # for main's report of a Redis error (it names the server)
        return config
    except ConfigError as exc:
        _say("configuration is invalid:", err=True)
        for problem in _shown_problems(exc.problems):
            _say(f"  {problem}", err=True)
        raise SystemExit(EXIT_USAGE) from None


def _shown_problems(problems: list[str]) -> list[str]:
    """All of them, up to a screenful of screenfuls: a generated file can have thousands."""
    if len(problems) <= MAX_PROBLEMS_SHOWN:
        return problems
    return [*problems[:MAX_PROBLEMS_SHOWN], f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more problem(s)"]


def _configure_logs(config: Any, stream: Any = None) -> None:
    from kmrl_sync import logs

    logs.configure(config.log.level, config.log.format, stream=stream)


def _engine(config: Any):
    from kmrl_sync.engine.runner import Engine

    return Engine(config)


def _select(config: Any, names: list[str], all_: bool) -> list[str]:
    if all_ and names:
        _say("give connector names or --all, not both", err=True)
        raise SystemExit(EXIT_USAGE)
    if all_:
        enabled = [n for n, c in config.connectors.items() if c.enabled]
        if not enabled:
            # Exit 2, a configuration problem, not 0: a cron job or timer running `sync --all` must
            # not report success while nothing is synced (wrong -c, empty folder, all disabled).
            disabled = len(config.connectors)
            why = f" ({disabled} configured, all with enabled: false)" if disabled else ""
            _say(f"no enabled connectors in {config.connectors_dir}{why}: nothing to sync", err=True)
            raise SystemExit(EXIT_USAGE)
        return enabled
    if not names:
        _say("name at least one connector, or use --all", err=True)
        raise SystemExit(EXIT_USAGE)
    unknown = [n for n in names if n not in config.connectors]
    if unknown:
        known = ", ".join(sorted(config.connectors)) or "none"
        _say(f"unknown connector(s): {', '.join(unknown)} (configured: {known})", err=True)
        raise SystemExit(EXIT_USAGE)
    return names


# --------------------------------------------------------------------------- commands


def cmd_sync(args: argparse.Namespace) -> int:
    config = _load(args)
    names = _select(config, args.names, args.all)
    _configure_logs(config, stream=sys.stderr)
    from redis import RedisError

    from kmrl_sync.daemon.signals import StopFlag
    from kmrl_sync.engine.lease import LeaseBusy, LeaseWaitStopped
    from kmrl_sync.engine.runner import RunSummary

    engine = _engine(config)
    stop = StopFlag.install()
    summaries = []
    progress = None
    if sys.stderr.isatty() and not args.json:
        from kmrl_sync.cli.progress import ProgressDisplay

        progress = ProgressDisplay()
    try:
        for name in names:
            if stop.requested:
                break
            try:
                if progress is not None:
                    progress.start(name)
                # stop.wait as the pause: SIGTERM/Ctrl-C ends a wait for a busy lease at once
                summary = engine.run(name, full=args.full, wait=args.wait, should_stop=lambda: stop.requested,
                                     progress=progress.update if progress else None, pause=stop.wait)
            except LeaseWaitStopped as exc:
                summary = RunSummary(connector=name, run_id="", result="interrupted", error=str(exc))
            except (LeaseBusy, RedisError) as exc:
                error = str(exc) if isinstance(exc, LeaseBusy) else f"Redis unavailable: {exc}"
                summary = RunSummary(connector=name, run_id="", result="failed", error=error)
            finally:
                if progress is not None:
                    progress.stop()
            summaries.append(summary)
    finally:
        stop.restore()
    _print_summaries(summaries, config, as_json=args.json)
    return EXIT_OK if all(s.result == "ok" for s in summaries) and len(summaries) == len(names) else EXIT_FAILED


def _print_summaries(summaries: list[Any], config: Any, as_json: bool) -> None:
    if as_json:
        from kmrl_sync.engine.runner import summary_dict

        print(json.dumps([summary_dict(s) for s in summaries], indent=2))
        return
    for s in summaries:
        queue = config.connectors[s.connector].queue
        line = (f"{s.connector}: {s.result}: created {s.created}, updated {s.updated}, deleted {s.deleted}, "
                f"unchanged {s.unchanged}, failed {s.failed} in {s.seconds:.2f}s")
        if s.queued:
            line += f"; queued {s.queued} work item(s) on {queue.name} ({queue.format})"
        _say(line)
        if s.error:
            _say(f"  error: {s.error}")
        for failure in s.failures:
            _say(f"  failed: {failure}")


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    _configure_logs(config, stream=sys.stderr)
    if args.names:
        _select(config, args.names, False)  # unknown names: exit 2
    from kmrl_sync.daemon.status import collect_status, render_details, render_status

    report = collect_status(config, args.names)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    elif args.names:
        render_details(report)
    else:
        render_status(report)
    return EXIT_OK if report["redis"]["ok"] else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    _say(f"{config.path}: ok ({len(config.connectors)} connector(s))")
    from kmrl_sync.redaction import MIN_LENGTH, short_secrets

    for source in short_secrets():
        _say(f"warning: {source}: the secret is shorter than {MIN_LENGTH} characters, so it is not "
             "redacted from logs and output; use a longer one", err=True)
    if not args.connect:
        return EXIT_OK
    _configure_logs(config, stream=sys.stderr)
    from kmrl_sync.daemon.status import redis_info, redis_problems
    from kmrl_sync.engine.connector import ConnectorError
    from kmrl_sync.redaction import mask_url

    failed = False
    try:
        engine = _engine(config)
        info = redis_info(engine.client)
    except Exception as exc:
        _say(f"redis {mask_url(config.redis_url)}: unreachable: {exc}")
        return EXIT_FAILED
    # What health says about Redis itself, said here too: an unhealthy one fails the check.
    problems = redis_problems(info)
    _say(f"redis {mask_url(config.redis_url)}: {'ok' if not problems else 'reachable'}")
    for problem, unhealthy in problems:
        _say(f"  {'problem' if unhealthy else 'warning'}: {problem}")
        failed = failed or unhealthy
    from kmrl_sync.content.store import BlobWriteError

    try:
        engine.blobs.check()
        _say(f"blobs {engine.blobs.name}: ok")
    except BlobWriteError as exc:
        failed = True
        _say(f"blobs: {exc}")
    for name, cfg in config.connectors.items():
        connector = engine.make_connector(cfg, engine.state(name), lambda: False)
        try:
            connector.check_connection()
            _say(f"{name} ({cfg.type}): ok")
        except ConnectorError as exc:
            failed = True
            _say(f"{name} ({cfg.type}): {exc}")
        except Exception as exc:
            failed = True
            _say(f"{name} ({cfg.type}): {type(exc).__name__}: {exc}")
        finally:
            connector.close()
    return EXIT_FAILED if failed else EXIT_OK


def cmd_reset(args: argparse.Namespace) -> int:
    config = _load(args)
    _select(config, args.names, False)
    _configure_logs(config, stream=sys.stderr)
    from kmrl_sync.engine.state import LeaseLost

    engine = _engine(config)
    status = EXIT_OK
    for name in args.names:
        try:
            removed = engine.state(name).reset()
            _say(f"{name}: reset ({removed} key(s) removed); the next sync is a full one")
        except LeaseLost as exc:
            _say(f"{name}: not reset: {exc}", err=True)
            status = EXIT_FAILED
    return status


def cmd_queue(args: argparse.Namespace) -> int:
    config = _load(args)
    _configure_logs(config, stream=sys.stderr)
    from kmrl_sync.cli.queueview import show_queues

    show_queues(_engine(config), limit=args.limit)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """0 healthy, 1 anything else, a broken configuration included: monitoring knows only 0 and 1."""
    from kmrl_sync.loading.loader import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _say("unhealthy: configuration is invalid (kmrl-sync check lists the same problems)")
        for problem in _shown_problems(exc.problems):
            _say(f"unhealthy: {problem}")
        return EXIT_FAILED
    args.loaded_config = config  # for main's report of a Redis error (it names the server)
    _configure_logs(config, stream=sys.stderr)
    from kmrl_sync.daemon.status import health_problems

    problems = health_problems(config, require_daemon=config.daemon.expected)
    for problem in problems:
        _say(f"unhealthy: {problem}")
    if not problems:
        _say("healthy")
    return EXIT_FAILED if problems else EXIT_OK


def cmd_connectors(args: argparse.Namespace) -> int:
    from kmrl_sync.engine.registry import UnknownConnectorType, available_types, load_connector_type

    for name, ep in sorted(available_types().items()):
        try:
            description = load_connector_type(name).description
        except UnknownConnectorType as exc:
            description = f"(broken: {exc})"
        _say(f"{name:12} {ep.value:50} {description}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from kmrl_sync.engine.registry import UnknownConnectorType
    from kmrl_sync.loading.schema import connector_schema, sync_schema

    try:
        schema = sync_schema() if args.connector is None else connector_schema(args.connector or None)
    except UnknownConnectorType as exc:
        print(f"kmrl-sync schema: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(schema, indent=2))
    return EXIT_OK


def cmd_blobs(args: argparse.Namespace) -> int:
    """`blobs gc`: needs sync.yaml only (Redis and the store), not the connectors."""
    config = _load(args, with_connectors=False)
    _configure_logs(config, stream=sys.stderr)
    from kmrl_sync.content import open_store
    from kmrl_sync.engine.connection import connect_config
    from kmrl_sync.engine.retention import GcBusy, collect_garbage, describe

    client = connect_config(config, client_name="kmrl-sync-gc")
    grace = config.blobs_gc.grace if args.grace is None else args.grace
    with open_store(config.blobs) as store:
        try:
            report = collect_garbage(client, store, config.key_prefix, grace=grace, dry_run=args.dry_run)
        except GcBusy as exc:
            _say(f"kmrl-sync blobs gc: {exc}", err=True)
            return EXIT_FAILED
        except Exception as exc:
            if (reason := _store_failure(exc)) is None:
                raise  # a Redis failure is main's to report; anything else is a bug
            _say(f"kmrl-sync blobs gc: the content store {store.name} failed: {reason}; "
                 "what was deleted before stays deleted, run it again later", err=True)
            return EXIT_FAILED
    if args.json:
        print(json.dumps({"store": store.name, **report.as_dict()}))
    else:
        _say(f"blobs gc ({store.name}): {describe(report)}")
    return EXIT_OK


def _store_failure(exc: Exception) -> str | None:
    """Why the content store failed (a folder's OSError, S3's botocore errors: unreachable, denied),
    or None for an error of anything else. botocore is only looked at if the S3 store loaded it."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if "botocore" in sys.modules:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, BotoCoreError | ClientError):
            return str(exc)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    _configure_logs(config)
    from kmrl_sync.daemon.service import Daemon

    return Daemon(args.config, config).serve()


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys new|rotate FILE`: only key ids are printed, never key material."""
    from kmrl_sync.content.keyring import KeyFileError, create_key_file, rotate_key_file

    try:
        if args.keys_command == "new":
            ring = create_key_file(args.file)
            _say(f"created key file {ring.path} (mode 0600) with key {ring.primary_id} (primary)")
        else:
            ring, key = rotate_key_file(args.file)
            older = ", ".join(k for k in ring.keys if k != key.id)
            _say(f"added key {key.id} to {ring.path} as the primary; older keys kept for reading: {older}")
    except KeyFileError as exc:
        _say(f"kmrl-sync keys {args.keys_command}: {exc}", err=True)
        return EXIT_USAGE
    return EXIT_OK


COMMANDS = {
    "run": cmd_run, "sync": cmd_sync, "status": cmd_status, "check": cmd_check,
    "reset": cmd_reset, "health": cmd_health, "queue": cmd_queue, "connectors": cmd_connectors,
    "schema": cmd_schema, "keys": cmd_keys, "blobs": cmd_blobs,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Everything it writes to stdout and stderr is scrubbed of secrets."""
    from kmrl_sync.redaction import redact_std_streams

    restore_streams = redact_std_streams()
    try:
        return _main(argv)
    finally:
        restore_streams()


def _main(argv: list[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        try:
            args = build_parser().parse_args(argv)
            return COMMANDS[args.command](args)
        finally:
            sys.stdout.flush()  # a closed pipe is met here (also after --help or a usage error), not at exit
    except KeyboardInterrupt:
        return EXIT_FAILED
    except BrokenPipeError:
        return _output_gone()
    except OutputError as exc:
        return _output_failed(exc, args)
    except Exception as exc:
        message = _redis_failure(exc, args)
        if message is None:
            raise
        _say(f"kmrl-sync {args.command}: {message}" if args else f"kmrl-sync: {message}", err=True)
        return EXIT_FAILED


def _output_gone() -> int:
    """The reader of our output went away (`kmrl-sync queue | head -1`): stop quietly, exit 1.

    What Python's documentation advises (signal module, "Note on SIGPIPE"): point stdout at
    /dev/null so the flush at exit does not fail again, and leave with an error status, as a
    process killed by SIGPIPE would. Restoring SIGPIPE's default instead would also kill the
    daemon whenever a socket peer goes away.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILED


def _output_failed(exc: OutputError, args: argparse.Namespace | None) -> int:
    """Our own output could not be written (`kmrl-sync status > /full/disk/file`): say so on stderr
    in one line, exit 1. Like `_output_gone`, stdout then points at /dev/null, so the flush at exit
    does not fail again with a traceback."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is exc.stream:
            os.dup2(devnull, stream.fileno())
    os.close(devnull)
    if exc.stream is not sys.__stderr__:
        with contextlib.suppress(OSError):
            command = f"kmrl-sync {args.command}" if args else "kmrl-sync"
            _say(f"{command}: cannot write its output: {exc.strerror}", err=True)
            sys.stderr.flush()
    return EXIT_FAILED


def _redis_failure(exc: Exception, args: argparse.Namespace | None) -> str | None:
    """One line for a Redis failure no command handled itself (unreachable, wrong password, refused
    for lack of memory, denied by an ACL), or None for anything else (a bug: its traceback is shown).

    Checked only after the failure, so commands that never touch Redis do not import redis for it.
    """
    if "redis" not in sys.modules:
        return None
    import redis

    from kmrl_sync.engine.memory import RedisOutOfMemory, is_out_of_memory, refusal

    if isinstance(exc, RedisOutOfMemory):
        return str(exc)
    if not isinstance(exc, redis.RedisError):
        return None
    from kmrl_sync.redaction import mask_url

    config = getattr(args, "loaded_config", None)
    server = f"Redis {mask_url(config.redis_url)}" if config is not None else "Redis"
    if isinstance(exc, redis.AuthenticationError):
        return f"{server} refused the login: {exc} (check redis.url / redis.password_file)"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"{server} unreachable: {exc}"
    if is_out_of_memory(exc):
        return str(refusal(exc, "write"))
    return f"{server}: {exc}"


def run() -> NoReturn:
    """The `kmrl-sync` command: `main()`, then the interpreter's ordinary exit."""
    from kmrl_sync.redaction import redact_std_streams

    redact_std_streams()  # for good: a traceback or an atexit hook after main() writes through it too
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
