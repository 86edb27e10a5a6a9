"""structlog set-up: JSON lines on stdout for journald, console rendering on a TTY.

Secrets never reach a log line because they never enter one: config holds them as SecretStr and
URLs are redacted before logging. As a second line of defence, keys that look like secrets are
masked by a processor.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from kmrl_sync.startup import import_structlog

structlog = import_structlog()

_SECRET_KEYS = ("password", "secret", "token", "authorization", "tempauth", "access_token")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if any(s in key.lower() for s in _SECRET_KEYS) and event[key]:
            event[key] = "***"
    return event


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_secrets,
            structlog.processors.format_exc_info if not use_console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
