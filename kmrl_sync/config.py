"""Configuration: `sync.yaml` plus one YAML file per connector instance.

Everything is validated before anything runs, and every problem is reported at once as
`file: field: message` so an operator fixes a whole config in one pass instead of one error per
restart. Unknown keys are errors: a typo such as `schedul:` must not silently fall back to a
default.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from kmrl_sync import keys, redaction
from kmrl_sync.configfile import load_mapping, read_limited
from kmrl_sync.display import visible

DEFAULT_CONFIG_PATHS = (Path("/etc/kmrl-sync/sync.yaml"), Path("sync.yaml"))
CONNECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


MAX_PROBLEM_CHARS = 400


class ConfigError(Exception):
    """Every problem found in the configuration, each as `file: field: message`.

    Each problem is made printable (control characters escaped) and at most MAX_PROBLEM_CHARS long,
    whatever text of the configuration it quotes.
    """

    def __init__(self, problems: list[str]):
        self.problems = [_bounded(visible(p)) for p in problems]
        super().__init__("\n".join(self.problems))


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else text[: MAX_PROBLEM_CHARS - 15] + " ... (shortened)"


class Strict(BaseModel):
    # allow_inf_nan: `.nan`, `inf` (e.g. from ${ENV}) are never a setting; every float field refuses them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- value types
# Every duration and number of the configuration, kmrl-sync's own and the connector types', is one
# of these types, so "finite, positive, not absurd" is decided in one place.

# The digits and the unit: the text is stripped first, so the pattern has no two `\s*` that could
# backtrack against each other on a long run of spaces.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
DURATION_PATTERN = r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d)?\s*$"
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MIN_DURATION = 0.001  # 1 ms: below it a TTL or timeout rounds to 0 (Redis refuses PX 0)
MAX_DURATION = 366 * 86400.0  # a year: a longer timeout, TTL or interval is a typo, not a setting


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_duration(value: Any, *, allow_zero: bool = False) -> float:
    """Accept `30s`, `5m`, `1h`, `1d`, `250ms` or a plain number of seconds; finite, at most a year."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if not match:
            raise ValueError(f"{_shown(value)} is not a duration (use e.g. 30s, 5m, 1h)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    if math.isnan(seconds):
        raise ValueError("must be a number")
    if seconds > MAX_DURATION:
        raise ValueError("must be at most 366d (a year)")
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds == 0 and allow_zero:
        return 0.0
    if seconds == 0:
        raise ValueError("must be greater than zero")
    if seconds < MIN_DURATION:
        raise ValueError("must be at least 1ms")
    return seconds


def _duration_json_schema(minimum: float) -> dict[str, Any]:
    return {"anyOf": [{"type": "number", "minimum": minimum, "maximum": MAX_DURATION},
                      {"type": "string", "pattern": DURATION_PATTERN}],
            "description": "a duration: 250ms, 30s, 5m, 1h, 1d, or a number of seconds (at most a year)"}


class Duration(float):
    """A number of seconds written as `5m`, `30s`, ... in YAML: greater than zero, at most a year."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(parse_duration, core_schema.float_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return _duration_json_schema(MIN_DURATION)


def _duration_or_zero(value: Any) -> float:
    return 0.0 if value is None else parse_duration(value, allow_zero=True)


class DurationOrZero(float):
    """A Duration where `0` (or null) means "none": a jitter, a minimum age."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(_duration_or_zero, core_schema.float_schema())

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return _duration_json_schema(0)


#: a size limit in MiB: more than zero, at most 1 TiB
Megabytes = Annotated[float, Field(gt=0, le=1024 * 1024)]
#: a rate per second: more than zero, at most a million
PerSecond = Annotated[float, Field(gt=0, le=1_000_000)]

# Control characters (C0, DEL, C1) and lone surrogates (text that is not valid UTF-8, e.g. an
# environment variable in another encoding).
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What no string of the configuration may hold: the same, except tab, newline and carriage return.
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _text_problem(text: str, allowed: re.Pattern[str] = _NOT_TEXT) -> str | None:
    match = allowed.search(text)
    if match is None:
        return None
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return "is not valid UTF-8 text"
    return f"must not contain control characters (found U+{ord(char):04X})"


def _label(value: str) -> str:
    if problem := _text_problem(value, _INVISIBLE):
        raise ValueError(problem)
    return value


#: text that ends up in Redis keys, queue messages and document metadata: no control character at
#: all (not even tab or newline), at most 200 characters
Label = Annotated[str, AfterValidator(_label), Field(max_length=200)]


def _queue_name(name: str) -> str:
    if "{" in name or "}" in name:
        raise ValueError("must not contain braces (they would choose the Redis Cluster slot of the stream keys)")
    return name


QueueName = Annotated[Label, Field(min_length=1), AfterValidator(_queue_name)]


# --------------------------------------------------------------------------- secrets


MAX_SECRET_BYTES = 64 * 1024  # a password, a client secret or a PEM key (a few KB)


def read_secret_file(path: Path) -> SecretStr:
    """Secrets live in files (systemd credentials, Kubernetes secrets); one trailing newline is dropped.

    Read like a config file: a regular file of bounded size, never a FIFO or a device.
    """
    try:
        raw = read_limited(path, MAX_SECRET_BYTES)
    except FileNotFoundError:
        raise ValueError(f"secret file {path} does not exist") from None
    except ValueError as exc:
        raise ValueError(f"secret file {path} {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    redaction.register(secret, f"secret file {path}")  # scrubbed from all output from now on
    return SecretStr(secret)


# --------------------------------------------------------------------------- sync.yaml


class RedisConfig(Strict):
    url: str = "embedded"
    password_file: Path | None = None
    key_prefix: Label = "kmrl"

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
    name: QueueName = "document_processing"
    task: Label = Field(default="process_document", min_length=1)
    delete_task: Label = Field(default="delete_document", min_length=1)


class QueueOverride(Strict):
    """A connector may override any part of the main queue settings."""

    format: QueueFormat | None = None
    name: QueueName | None = None
    task: Label | None = Field(default=None, min_length=1)
    delete_task: Label | None = Field(default=None, min_length=1)


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
    startup_jitter: DurationOrZero = DurationOrZero(10)  # first runs spread over this many seconds
    max_parallel: int = Field(default=4, ge=1, le=64)  # connectors syncing at once in one daemon
    expected: bool = False  # `health` also fails when no daemon heartbeat exists at all


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
    name: Label | None = None
    type: Label
    enabled: bool = True
    schedule: ScheduleConfig = ScheduleConfig(every=Duration(300))
    department: Label = ""
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


# What substitution may add to one file, in characters: `${X}` 260,000 times over a 128 KiB
# variable would otherwise make 32 GB out of a 1 MiB file.
MAX_SUBSTITUTED = 1 << 20

CREDENTIALS_HINT = (
    "systemd sets it for the kmrl-sync service only; on an installed host run the command as the service "
    "does, through the admin wrapper: `sudo kmrl-sync ...` (/usr/local/sbin/kmrl-sync; README: "
    "\"Commands on an installed host\")"
)


def interpolate(value: Any, where: str, problems: list[str], env: dict[str, str], file: Path | str = "",
                _budget: list[int] | None = None) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; `$$` is a literal `$`.

    Every resulting key and string is checked for control characters (tab and newline aside) and
    invalid UTF-8: no field of a configuration is meant to hold one, and a NUL in a path or a key
    name fails much later, in a run. Substitution adds at most MAX_SUBSTITUTED characters per file.
    """
    budget = [MAX_SUBSTITUTED] if _budget is None else _budget
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                text = env[name]
            elif default is not None:
                text = default
            else:
                hint = f" ({CREDENTIALS_HINT})" if name == "CREDENTIALS_DIRECTORY" else ""
                problems.append(f"{file}: {where}: environment variable {name} is not set{hint}")
                return ""
            budget[0] -= len(text)
            if budget[0] < 0:
                return ""
            return text

        before = budget[0]
        result = _VAR.sub(substitute, value) if "$" in value else value
        if budget[0] < 0 <= before:
            problems.append(f"{file}: {where}: ${{...}} substitution makes the file larger than "
                            f"{MAX_SUBSTITUTED >> 20} MiB")
        elif problem := _text_problem(result):
            problems.append(f"{file}: {where}: {problem}")
        return result
    if isinstance(value, dict):
        result_dict = {}
        for k, v in value.items():
            key_where = f"{where}.{k}" if where else str(k)
            if isinstance(k, str) and (problem := _text_problem(k)):
                problems.append(f"{file}: {key_where}: key {problem}")
                continue
            result_dict[k] = interpolate(v, key_where, problems, env, file, budget)
        return result_dict
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", problems, env, file, budget) for i, v in enumerate(value)]
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
    return load_mapping(path, problems)  # bounded and strict: see kmrl_sync.configfile


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _validate_options(file: Path, type_name: str, options: dict[str, Any], problems: list[str]) -> BaseModel | None:
    """The connector type's Options model for `options`, or None with the problems appended."""
    from kmrl_sync.registry import UnknownConnectorType, load_connector_type

    try:
        connector_type = load_connector_type(type_name)
    except UnknownConnectorType as exc:
        problems.append(f"{file}: type: {exc}")
        return None
    try:
        return connector_type.Options.model_validate(options, context={"base_dir": file.parent})
    except ValidationError as exc:
        problems.extend(format_validation_error(file, exc, prefix="options"))
    except Exception as exc:  # a plug-in's validator that raises something else: still a refusal
        problems.append(f"{file}: options: connector type {type_name!r} could not validate them: "
                        f"{type(exc).__name__}: {exc}")
    return None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: dict[str, str] | None = None,
    load_types: bool = True,
) -> Config:
    """Load and validate everything; raise ConfigError listing every problem found."""
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
    if conflict := keys.queue_name_conflict(main.redis.key_prefix, main.queue.name):
        problems.append(f"{config_path}: queue.name: {conflict}")

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
        spec: ConnectorFile | None = None
        type_name = data.get("type")
        try:
            spec = ConnectorFile.model_validate(data)
        except ValidationError as exc:
            problems.extend(format_validation_error(file, exc))
            if any(error["loc"][:1] in (("type",), ("options",)) for error in exc.errors()):
                type_name = None
        options: BaseModel | None = None
        if load_types and isinstance(type_name, str):
            # The options are checked even when the rest of the file is wrong: every problem at once.
            options = _validate_options(file, type_name, data.get("options", {}), problems)
            if options is not None:
                redaction.register_model(options, f"{file}: options")
        if spec is None or (load_types and options is None):
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
        queue = main.queue
        if spec.queue is not None:
            queue = queue.model_copy(update=spec.queue.model_dump(exclude_none=True))
            if spec.queue.name and (conflict := keys.queue_name_conflict(main.redis.key_prefix, queue.name)):
                problems.append(f"{file}: queue.name: {conflict}")
                continue
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
