"""Loading the configuration: `sync.yaml` plus one YAML file per connector instance.

Everything is validated before anything runs, and every problem is reported at once as
`file: field: message` so an operator fixes a whole config in one pass instead of one error per
restart. Unknown keys are errors: a typo such as `schedul:` must not silently fall back to a
default. The models themselves are in config/models.py; this module reads the files, substitutes
`${VAR}`, and asks the registry for each connector type's options model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from kmrl_sync import redaction
from kmrl_sync.config.files import load_mapping
from kmrl_sync.config.models import (
    BlobsConfig,
    Config,
    ConnectorConfig,
    ConnectorFile,
    EncryptionSettings,
    SentinelTarget,
    StoreSettings,
    Strict,
    SyncFile,
    parse_host_port,
    text_problem,
)
from kmrl_sync.config.secretfile import read_secret_file
from kmrl_sync.display import visible
from kmrl_sync.engine import keys

DEFAULT_CONFIG_PATHS = (Path("/etc/kmrl-sync/sync.yaml"), Path("sync.yaml"))
CONNECTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" would allow a final newline


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
        elif problem := text_problem(result):
            problems.append(f"{file}: {where}: {problem}")
        return result
    if isinstance(value, dict):
        result_dict = {}
        for k, v in value.items():
            key_where = f"{where}.{k}" if where else str(k)
            if isinstance(k, str) and (problem := text_problem(k)):
                problems.append(f"{file}: {key_where}: key {problem}")
                continue
            result_dict[k] = interpolate(v, key_where, problems, env, file, budget)
        return result_dict
    if isinstance(value, list):
        return [interpolate(v, f"{where}[{i}]", problems, env, file, budget) for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------- loading


def cluster_refusal(queue_format: str, url: str) -> str:
    """Why a `celery` or `list` queue cannot go to a Redis Cluster (redis.cluster: true)."""
    return (f"{queue_format!r} cannot be used on the Redis Cluster at {redaction.mask_url(url)} (redis.cluster: true): "
            "Celery does not run on Redis Cluster and the list queue is one key outside the connectors' "
            "hash slots; use format: stream (one stream per connector, read with consumer groups)")


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
    return load_mapping(path, problems)  # bounded and strict: see kmrl_sync.config.files


def _resolve(base: Path, path: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base / path)


def _store_settings(config_path: Path, blobs: BlobsConfig, state_dir: Path, problems: list[str]) -> StoreSettings:
    """`blobs:` resolved: the folder made absolute, or the bucket, prefix and credentials (read here)."""
    base = config_path.parent
    if not blobs.is_s3:
        folder = blobs.url or blobs.path
        return StoreSettings(folder=_resolve(base, Path(folder)) if folder else state_dir / "blobs")
    bucket, _, prefix = (blobs.url or "").removeprefix("s3://").partition("/")
    keys: dict[str, SecretStr | None] = {"access_key_file": None, "secret_key_file": None}
    for name in keys:
        path = getattr(blobs, name)
        if path is not None:
            try:
                keys[name] = read_secret_file(_resolve(base, path))
            except ValueError as exc:
                problems.append(f"{config_path}: blobs.{name}: {exc}")
    return StoreSettings(bucket=bucket, prefix=prefix.strip("/"), endpoint_url=blobs.endpoint_url,
                         region=blobs.region, access_key_id=keys["access_key_file"],
                         secret_access_key=keys["secret_key_file"], spool_dir=state_dir / "spool")


def _validate_options(file: Path, type_name: str, options: dict[str, Any], problems: list[str]) -> BaseModel | None:
    """The connector type's Options model for `options`, or None with the problems appended."""
    from kmrl_sync.engine.registry import UnknownConnectorType, load_connector_type

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
    with_connectors: bool = True,
) -> Config:
    """Load and validate everything; raise ConfigError listing every problem found.

    `with_connectors=False` reads `sync.yaml` alone (the result has no connectors): what a host that only
    reads what was synced needs (the hub's workers, `blobs gc`). Such a host has no connectors/
    folder and none of the sources' secrets, and must not be refused for lacking them.
    """
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
    sentinel: SentinelTarget | None = None
    redis_url = main.redis.url
    if main.redis.sentinel is not None:
        spec = main.redis.sentinel
        sentinel_password: SecretStr | None = None
        if spec.password_file is not None:
            try:
                sentinel_password = read_secret_file(_resolve(base, spec.password_file))
            except ValueError as exc:
                problems.append(f"{config_path}: redis.sentinel.password_file: {exc}")
        sentinel = SentinelTarget(tuple(parse_host_port(h) for h in spec.hosts), spec.service, sentinel_password)
        redis_url = f"sentinel://{','.join(spec.hosts)}/{spec.service}"  # what messages show
    if main.redis.cluster and main.queue.format != "stream":
        problems.append(f"{config_path}: queue.format: {cluster_refusal(main.queue.format, main.redis.url)}")
    state_dir = _resolve(base, main.state_dir)
    connectors_dir = _resolve(base, main.connectors_dir)
    blobs = _store_settings(config_path, main.blobs, state_dir, problems)
    encryption = _encryption(main, base, config_path, problems)

    connectors: dict[str, ConnectorConfig] = {}
    if not with_connectors:
        files: Iterable[Path] = ()
    elif not connectors_dir.is_dir():
        problems.append(f"{config_path}: connectors_dir: {connectors_dir} is not a directory")
        files = ()
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
        if not CONNECTOR_NAME.fullmatch(name):
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
            if main.redis.cluster and spec.queue.format and queue.format != "stream":
                problems.append(f"{file}: queue.format: {cluster_refusal(queue.format, main.redis.url)}")
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
        )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=config_path,
        redis_url=redis_url,
        redis_password=password,
        key_prefix=main.redis.key_prefix,
        state_dir=state_dir,
        blobs=blobs,
        queue=main.queue,
        connectors_dir=connectors_dir,
        log=main.log,
        metrics=main.metrics,
        daemon=main.daemon,
        connectors=connectors,
        encryption=encryption,
        blobs_gc=main.blobs.gc,
        redis_cluster=main.redis.cluster,
        redis_sentinel=sentinel,
        replicas_to_ack=main.redis.replicas_to_ack,
    )


def _encryption(main: SyncFile, base: Path, config_path: Path, problems: list[str]) -> EncryptionSettings | None:
    """`encryption:` resolved; the key file is read now (its keys registered with redaction at once),
    so a missing, unreadable or group-readable key file is refused before anything runs."""
    if main.encryption.key_file is None:
        return None
    from kmrl_sync.content.keyring import load_keyring

    key_file = _resolve(base, main.encryption.key_file).absolute()
    try:
        load_keyring(key_file)
    except ValueError as exc:
        problems.append(f"{config_path}: encryption.key_file: {exc}")
        return None
    return EncryptionSettings(key_file, tuple(main.encryption.encrypt_fields))
