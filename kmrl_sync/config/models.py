"""The configuration's models: what `sync.yaml` and a connector file may say, and the resolved result.

Pure data and validation: no file is read here and no module of kmrl-sync is imported, so every
layer (engine, daemon, connector types) can depend on these types without pulling in the loader,
which alone reads files and asks the registry about connector types (loading/loader.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)


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


def _check_cron(cron: str) -> None:
    """A crontab line APScheduler can run (imported only when a schedule uses one)."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(cron)
    except ValueError as exc:
        raise ValueError(f"cron: {exc}") from None


def _duration_or_zero(value: Any) -> float:
    return 0.0 if value is None else parse_duration(value, allow_zero=True)


#: a number of seconds written as `5m`, `30s`, ... in YAML: greater than zero, at most a year
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_duration_json_schema(MIN_DURATION))]
#: a Duration where `0` (or null) means "none": a jitter, a minimum age
DurationOrZero = Annotated[float, BeforeValidator(_duration_or_zero), WithJsonSchema(_duration_json_schema(0))]


#: a size limit in MiB: more than zero, at most 1 TiB
Megabytes = Annotated[float, Field(gt=0, le=1024 * 1024)]
#: a rate per second: more than zero, at most a million
PerSecond = Annotated[float, Field(gt=0, le=1_000_000)]

# Control characters (C0, DEL, C1) and lone surrogates (text that is not valid UTF-8, e.g. an
# environment variable in another encoding).
_INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# What no string of the configuration may hold: the same, except tab, newline and carriage return.
NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(text: str, allowed: re.Pattern[str] = NOT_TEXT) -> str | None:
    match = allowed.search(text)
    if match is None:
        return None
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return "is not valid UTF-8 text"
    return f"must not contain control characters (found U+{ord(char):04X})"


def _label(value: str) -> str:
    if problem := text_problem(value, _INVISIBLE):
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


# --------------------------------------------------------------------------- sync.yaml


def parse_host_port(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` of a Sentinel -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{_shown(text)} is not host:port (e.g. redis-1.example:26379)")
    return host, int(port)


def _host_port(text: str) -> str:
    parse_host_port(text)
    return text


class SentinelConfig(Strict):
    """`redis.sentinel`: the Sentinels to ask for the master of `service` (instead of `redis.url`)."""

    hosts: list[Annotated[str, AfterValidator(_host_port)]] = Field(min_length=1, max_length=32)
    service: Label = Field(min_length=1)
    password_file: Path | None = None  # the Sentinels' own password (requirepass of the sentinels)


class RedisConfig(Strict):
    url: str = "embedded"
    password_file: Path | None = None
    key_prefix: Label = "kmrl"
    cluster: bool = False  # url names any node of a Redis Cluster
    sentinel: SentinelConfig | None = None
    # > 0: a commit counts as done only once this many replicas confirm it (WAIT)
    replicas_to_ack: int = Field(default=0, ge=0, le=16)

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

    @model_validator(mode="after")
    def _one_topology(self) -> RedisConfig:
        """The combinations of url, sentinel and cluster that name one Redis deployment."""
        if self.sentinel is not None:
            if "url" in self.model_fields_set:
                raise ValueError("give either url or sentinel, not both (with sentinel, the Sentinels name the master)")
            if self.cluster:
                raise ValueError("cluster and sentinel exclude each other (a Redis Cluster fails over by itself)")
        elif self.url == "embedded":
            if self.cluster:
                raise ValueError("cluster: true needs url to name a node of the Cluster, not 'embedded'")
            if self.replicas_to_ack:
                raise ValueError("replicas_to_ack needs a Redis with replicas; the embedded one has none")
        if self.cluster and self.replicas_to_ack:
            raise ValueError("replicas_to_ack is not supported with cluster: true (WAIT would reach another "
                             "node than the commit); use it with a standalone or Sentinel-managed Redis")
        return self


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's rule for bucket names


DEFAULT_GC_GRACE = 86400.0  # 24h: `blobs gc` keeps unreferenced content at least this long


class GcConfig(Strict):
    """`blobs.gc:`: when the daemon runs `blobs gc` (`every` or `cron`, or neither: never), and the
    grace period it and the command use (the command's `--grace` overrides it)."""

    every: Duration | None = None
    cron: str | None = None
    grace: DurationOrZero = DEFAULT_GC_GRACE

    @model_validator(mode="after")
    def _one_schedule(self) -> GcConfig:
        if self.every is not None and self.cron is not None:
            raise ValueError("give 'every' or 'cron', not both")
        if self.cron is not None:
            _check_cron(self.cron)
        return self

    @property
    def schedule(self) -> ScheduleConfig | None:
        if self.every is None and self.cron is None:
            return None
        return ScheduleConfig(every=self.every, cron=self.cron)


class BlobsConfig(Strict):
    """`blobs:` in sync.yaml: where content goes (a folder, or an S3-compatible bucket).

    `path` is the setting before `url` existed; it is still accepted and means the same as a folder
    `url`, so an existing sync.yaml keeps working.
    """

    url: str | None = None  # null: <state_dir>/blobs; a folder path; or s3://bucket/prefix
    path: Path | None = None
    endpoint_url: str | None = None  # an S3-compatible endpoint (MinIO); null = AWS
    region: str | None = None
    access_key_file: Path | None = None  # both null: the standard AWS credential chain
    secret_key_file: Path | None = None
    gc: GcConfig = GcConfig()

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None or "://" not in url:
            return url
        if not url.startswith("s3://"):
            raise ValueError("must be a folder path or s3://bucket/prefix")
        bucket = url.removeprefix("s3://").partition("/")[0]
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        return url

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _consistent(self) -> BlobsConfig:
        if self.url is not None and self.path is not None:
            raise ValueError("give url or path (its older name), not both")
        if (self.access_key_file is None) != (self.secret_key_file is None):
            raise ValueError("access_key_file and secret_key_file go together (or neither: the AWS chain)")
        s3_only = [name for name in ("endpoint_url", "region", "access_key_file", "secret_key_file")
                   if getattr(self, name) is not None]
        if s3_only and not self.is_s3:
            raise ValueError(f"{', '.join(s3_only)}: only for an S3 store (url: s3://bucket/prefix)")
        return self

    @property
    def is_s3(self) -> bool:
        return self.url is not None and self.url.startswith("s3://")


#: doc-hash fields that stay in clear whatever `encrypt_fields` says: the commit script writes them
#: (or overrides them with the connector's settings), and the store, the hub and `blobs gc` find and
#: verify content by them
CLEAR_FIELDS = frozenset({
    "document_id", "connector", "status", "version", "synced_at", "deleted_at",
    "department", "source", "priority", "sha256", "size", "blob",
})


def _field_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if not name:
            raise ValueError("a field name must not be empty")
        if name in CLEAR_FIELDS:
            raise ValueError(f"{name!r} cannot be encrypted (kmrl-sync and the hub read it: "
                             f"{', '.join(sorted(CLEAR_FIELDS))} stay in clear)")
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names


class EncryptionConfig(Strict):
    """`encryption:` in sync.yaml. Read only by the loader, which turns it into EncryptionSettings."""

    key_file: Path | None = None  # set: stored content is encrypted; `kmrl-sync keys new FILE` makes one
    encrypt_fields: Annotated[list[Label], AfterValidator(_field_names)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fields_need_a_key(self) -> EncryptionConfig:
        if self.encrypt_fields and self.key_file is None:
            raise ValueError("encrypt_fields needs key_file (the key that encrypts them)")
        return self


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


def parse_listen(listen: str) -> tuple[str, int]:
    """`127.0.0.1:9464`, `:9464` (all interfaces) or `[::1]:9464` -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{listen!r} is not host:port (e.g. 127.0.0.1:9464)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsConfig(Strict):
    listen: str | None = None  # host:port for the Prometheus endpoint; off by default

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, listen: str | None) -> str | None:
        if listen is not None:
            parse_listen(listen)
        return listen


class DaemonConfig(Strict):
    """`daemon:` in sync.yaml: how `kmrl-sync run` schedules, leases and reports."""

    lease_ttl: Duration = 60.0  # a dead holder's connectors move elsewhere after this
    heartbeat_ttl: Duration = 60.0  # a daemon silent this long is reported by `health`
    alert_after: Duration = 3600.0  # `health` fails once a connector has failed this long
    startup_jitter: DurationOrZero = 10.0  # first runs spread over this many seconds
    max_parallel: int = Field(default=4, ge=1, le=64)  # connectors syncing at once in one daemon
    expected: bool = False  # `health` also fails when no daemon heartbeat exists at all


class SyncFile(Strict):
    redis: RedisConfig = RedisConfig()
    state_dir: Path = Path("./.kmrl-sync")
    blobs: BlobsConfig = BlobsConfig()
    encryption: EncryptionConfig = EncryptionConfig()
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
            _check_cron(self.cron)
        return self


#: where a connector's work goes in the queue; sinks.placement is the one place that reads it
Priority = Literal["low", "normal", "high"]


class ConnectorFile(Strict):
    name: Label | None = None
    type: Label
    enabled: bool = True
    schedule: ScheduleConfig = ScheduleConfig(every=300.0)
    department: Label = ""
    priority: Priority = "normal"
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
    priority: Priority
    queue: QueueConfig
    options: BaseModel


@dataclass(frozen=True)
class StoreSettings:
    """Where content goes, resolved from `blobs:` (config/loader.py is the one place that builds it).

    Small, frozen and picklable on purpose: worker processes (the IMAP connector's document makers)
    and the hub's workers open the same store from it (`kmrl_sync.content.open_store`). Either
    `folder` (absolute) or `bucket` is set. Credentials are SecretStr, registered with redaction
    where they were read; None for both = boto3's standard credential chain.
    """

    folder: Path | None = None
    bucket: str = ""
    prefix: str = ""  # key prefix inside the bucket, without slashes at either end; may be ""
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = field(default=None, repr=False)
    secret_access_key: SecretStr | None = field(default=None, repr=False)
    spool_dir: Path | None = None  # large content waits here (unlinked files) for its upload; None: $TMPDIR

    @property
    def url(self) -> str:
        """The store as an operator wrote it: the folder, or s3://bucket/prefix (messages name it so)."""
        if self.bucket:
            return f"s3://{self.bucket}/{self.prefix}".removesuffix("/")
        return str(self.folder)


@dataclass(frozen=True)
class EncryptionSettings:
    """Encryption at rest, resolved: the key file (absolute) and the doc-hash fields to encrypt.

    `kmrl_sync.content.crypto.load_ciphers(key_file, encrypt_fields)` is the one reader of it.
    """

    key_file: Path
    encrypt_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class SentinelTarget:
    """`redis.sentinel`, resolved: addresses parsed, its password read from its file."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    password: SecretStr | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    redis_url: str  # with Sentinel: sentinel://host:port,.../service, for messages only (engine.connection)
    redis_password: SecretStr | None
    key_prefix: str
    state_dir: Path
    blobs: StoreSettings
    queue: QueueConfig
    connectors_dir: Path
    log: LogConfig
    metrics: MetricsConfig
    daemon: DaemonConfig
    connectors: dict[str, ConnectorConfig] = field(default_factory=dict)
    encryption: EncryptionSettings | None = None  # None: content and fields are stored in clear
    blobs_gc: GcConfig = field(default_factory=GcConfig)
    redis_cluster: bool = False
    redis_sentinel: SentinelTarget | None = None
    replicas_to_ack: int = 0

