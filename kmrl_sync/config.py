"""Configuration: `sync.yaml` plus one YAML file per connector instance.

Everything is validated before anything runs, and every problem is reported at once as
`file: field: message` so an operator fixes a whole config in one pass instead of one error per
restart. Unknown keys are errors: a typo such as `schedul:` must not silently fall back to a
default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from kmrl_sync import redaction
from kmrl_sync.startup import import_yaml

yaml = import_yaml()

DEFAULT_CONFIG_PATHS = (Path("/etc/kmrl-sync/sync.yaml"), Path("sync.yaml"))
CONNECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(Exception):
    """Every problem found in the configuration, each as `file: field: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- durations

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """Accept `30s`, `5m`, `1h`, `1d`, `250ms` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


class Duration(float):
    """A number of seconds written as `5m`, `30s`, ... in YAML."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(parse_duration, core_schema.float_schema())


# --------------------------------------------------------------------------- secrets


def read_secret_file(path: Path) -> SecretStr:
    """Secrets live in files (systemd credentials, Kubernetes secrets); one trailing newline is dropped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except PermissionError:
        raise ValueError(f"secret file {path} is not readable by this user") from None
    except IsADirectoryError:
        raise ValueError(f"secret file {path} is a directory") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    redaction.register(secret, f"secret file {path}")  # scrubbed from all output from now on
    return SecretStr(secret)


# --------------------------------------------------------------------------- sync.yaml


class RedisConfig(Strict):
    url: str = "embedded"
    password_file: Path | None = None
    key_prefix: str = "kmrl"

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        if url == "embedded" or url.startswith(("redis://", "rediss://", "unix://")):
            return url
        raise ValueError("must be 'embedded' or a redis://, rediss:// or unix:// URL")

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if not prefix or any(c in prefix for c in "{}: \t\n"):
            raise ValueError("must be non-empty without spaces, ':' or braces")
        return prefix


class BlobsConfig(Strict):
    path: Path | None = None


QueueFormat = Literal["celery", "stream", "list"]


class QueueConfig(Strict):
    format: QueueFormat = "celery"
    name: str = Field(default="document_processing", min_length=1)
    task: str = Field(default="process_document", min_length=1)
    delete_task: str = Field(default="delete_document", min_length=1)


class QueueOverride(Strict):
    """A connector may override any part of the main queue settings."""

    format: QueueFormat | None = None
    name: str | None = Field(default=None, min_length=1)
    task: str | None = Field(default=None, min_length=1)
    delete_task: str | None = Field(default=None, min_length=1)


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class MetricsConfig(Strict):
    listen: str | None = None  # host:port for the Prometheus endpoint; off by default

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str | None) -> str | None:
        if listen is not None:
            from kmrl_sync.metrics import parse_listen

            parse_listen(listen)
        return listen


class DaemonConfig(Strict):
    """`daemon:` in sync.yaml: how `kmrl-sync run` schedules, leases and reports."""

    lease_ttl: Duration = Duration(60)  # a dead holder's connectors move elsewhere after this
    heartbeat_ttl: Duration = Duration(60)  # a daemon silent this long is reported by `health`
    alert_after: Duration = Duration(3600)  # `health` fails once a connector has failed this long
    startup_jitter: float = Field(default=10.0, ge=0)  # first runs spread over this many seconds
    max_parallel: int = Field(default=4, ge=1, le=64)  # connectors syncing at once in one daemon
    expected: bool = False  # `health` also fails when no daemon heartbeat exists at all

    @field_validator("startup_jitter", mode="before")
    @classmethod
    def _jitter(cls, value: Any) -> float:
        return 0.0 if value in (0, "0", "0s") else parse_duration(value)


class SyncFile(Strict):
    redis: RedisConfig = RedisConfig()
    state_dir: Path = Path("./.kmrl-sync")
    blobs: BlobsConfig = BlobsConfig()
    queue: QueueConfig = QueueConfig()
    connectors_dir: Path = Path("connectors")
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    daemon: DaemonConfig = DaemonConfig()


# --------------------------------------------------------------------------- connector files


class ScheduleConfig(Strict):
    every: Duration | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ScheduleConfig:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of 'every' or 'cron'")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron: {exc}") from None
        return self


class ConnectorFile(Strict):
    name: str | None = None
    type: str
    enabled: bool = True
    schedule: ScheduleConfig = ScheduleConfig(every=Duration(300))
    department: str = ""
    priority: Literal["low", "normal", "high"] = "normal"
    queue: QueueOverride | None = None
    options: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- resolved config


@dataclass(frozen=True)
class ConnectorConfig:
    """One connector instance, fully validated, with its type's options model."""

    name: str
    type: str
    file: Path
    enabled: bool
    schedule: ScheduleConfig
    department: str
    priority: str
    queue: QueueConfig
    options: BaseModel
    blobs_dir: Path  # the instance's blob store, where this connector's content goes


@dataclass(frozen=True)
class Config:
    path: Path
    redis_url: str
    redis_password: SecretStr | None
    key_prefix: str
    state_dir: Path
    blobs_dir: Path
    queue: QueueConfig
    connectors_dir: Path
    log: LogConfig
    metrics: MetricsConfig
    daemon: DaemonConfig
    connectors: dict[str, ConnectorConfig] = field(default_factory=dict)


# --------------------------------------------------------------------------- ${VAR} interpolation

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")


def interpolate(value: Any, where: str, problems: list[str], env: dict[str, str], file: Path | str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(f"{file}: {where}: environment variable {name} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, f"{where}.{k}" if where else str(k), problems, env, file) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", problems, env, file) for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------- loading


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """`-c`, then `$KMRL_SYNC_CONFIG`, then /etc/kmrl-sync/sync.yaml, then ./sync.yaml."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get("KMRL_SYNC_CONFIG"):
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_CONFIG_PATHS[-1]


def format_validation_error(file: Path | str, error: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "(top level)")
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling)"
        problems.append(f"{file}: {loc}: {message}")
    return problems


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(top level)"
        problems.append(f"{path}: {where}: invalid YAML: {getattr(exc, 'problem', exc)}")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: (top level): expected a mapping of keys, got {type(data).__name__}")
        return None
    return data


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    load_types: bool = True,
) -> Config:
    """Load and validate everything; raise ConfigError listing every problem found."""
    from kmrl_sync.registry import UnknownConnectorType, load_connector_type

    env = dict(os.environ) if env is None else env
    config_path = find_config_path(path)
    problems: list[str] = []
    raw = _read_yaml(config_path, problems)
    if raw is None:
        raise ConfigError(problems)
    raw = interpolate(raw, "", problems, env, config_path)
    if problems:
        raise ConfigError(problems)
    try:
        main = SyncFile.model_validate(raw)
    except ValidationError as exc:
        problems.extend(format_validation_error(config_path, exc))
        raise ConfigError(problems) from None

    redaction.register_url(main.redis.url, f"{config_path}: redis.url")
    base = config_path.parent
    password: SecretStr | None = None
    if main.redis.password_file is not None:
        try:
            password = read_secret_file(_resolve(base, main.redis.password_file))
        except ValueError as exc:
            problems.append(f"{config_path}: redis.password_file: {exc}")
    state_dir = _resolve(base, main.state_dir)
    connectors_dir = _resolve(base, main.connectors_dir)
    blobs_dir = _resolve(base, main.blobs.path) if main.blobs.path else state_dir / "blobs"

    connectors: dict[str, ConnectorConfig] = {}
    if not connectors_dir.is_dir():
        problems.append(f"{config_path}: connectors_dir: {connectors_dir} is not a directory")
        files: Iterable[Path] = ()
    else:
        files = sorted([*connectors_dir.glob("*.yaml"), *connectors_dir.glob("*.yml")])
    for file in files:
        data = _read_yaml(file, problems)
        if data is None:
            continue
        before = len(problems)
        data = interpolate(data, "", problems, env, file)
        if len(problems) > before:
            continue
        try:
            spec = ConnectorFile.model_validate(data)
        except ValidationError as exc:
            problems.extend(format_validation_error(file, exc))
            continue
        name = spec.name or file.stem
        if not CONNECTOR_NAME.match(name):
            problems.append(
                f"{file}: name: {name!r} is not a valid connector name "
                "(letters, digits, '.', '_' and '-', at most 64)"
            )
            continue
        if name in connectors:
            problems.append(f"{file}: name: connector {name!r} is already defined in {connectors[name].file}")
            continue
        options: BaseModel | None = None
        if load_types:
            try:
                connector_type = load_connector_type(spec.type)
            except UnknownConnectorType as exc:
                problems.append(f"{file}: type: {exc}")
                continue
            try:
                options = connector_type.Options.model_validate(
                    spec.options, context={"base_dir": file.parent}
                )
            except ValidationError as exc:
                problems.extend(format_validation_error(file, exc, prefix="options"))
                continue
            redaction.register_model(options, f"{file}: options")
        queue = main.queue
        if spec.queue is not None:
            queue = queue.model_copy(update=spec.queue.model_dump(exclude_none=True))
        connectors[name] = ConnectorConfig(
            name=name,
            type=spec.type,
            file=file,
            enabled=spec.enabled,
            schedule=spec.schedule,
            department=spec.department,
            priority=spec.priority,
            queue=queue,
            options=options if options is not None else Strict(),
            blobs_dir=blobs_dir,
        )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=config_path,
        redis_url=main.redis.url,
        redis_password=password,
        key_prefix=main.redis.key_prefix,
        state_dir=state_dir,
        blobs_dir=blobs_dir,
        queue=main.queue,
        connectors_dir=connectors_dir,
        log=main.log,
        metrics=main.metrics,
        daemon=main.daemon,
        connectors=connectors,
    )
