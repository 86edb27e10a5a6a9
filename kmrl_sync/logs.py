"""structlog set-up: JSON lines on stdout for journald, console rendering on a TTY.

Every secret the process loaded is scrubbed from every log line (kmrl_sync.redaction): from each
value of the event before it is rendered (so JSON escaping cannot hide a secret from the scrub),
exception text and tracebacks included, and from the rendered line again (the console renderer
formats tracebacks itself). As a second line of defence, keys that look like secrets are masked.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from kmrl_sync.display import visible
from kmrl_sync.redaction import redact, redact_value

_SECRET_KEYS = ("password", "secret", "token", "authorization", "tempauth", "access_token")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _mask_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in event:
        if any(s in key.lower() for s in _SECRET_KEYS) and event[key]:
            event[key] = "***"
    return event


def _scrub_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Every string of the event (exception text and rendered tracebacks too) without secrets."""
    return {key: redact_value(value) for key, value in event.items()}


def _scrubbed(renderer: Any) -> Any:
    """The renderer's line scrubbed again: what a value's own __str__ or repr made of it, and the
    traceback the console renderer formats, are only known once rendered."""

    def render(logger: Any, name: str, event: dict[str, Any]) -> Any:
        line = renderer(logger, name, event)
        return redact(line) if isinstance(line, str) else line

    return render


def _visible_strings(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Console only: log values carry file names, subjects and server errors (display.py). JSON
    lines need nothing: the JSON encoder escapes control characters and keeps the exact data."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = visible(value)
    return event


def _visible_traceback(sio: TextIO, exc_info: Any) -> None:
    """A plain traceback whose lines are made visible one by one (its messages hold data too)."""
    import io

    buffer = io.StringIO()
    structlog.dev.plain_traceback(buffer, exc_info)
    sio.write("\n".join(visible(redact(line)) for line in buffer.getvalue().split("\n")))


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty(), exception_formatter=_visible_traceback)
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
            _scrub_secrets,
            *([_visible_strings] if use_console else []),  # after the scrub: escapes could hide a secret
            _scrubbed(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
