"""Secret files: passwords, client secrets and keys live in files (systemd credentials, Kubernetes secrets).

Read like a configuration file (configfile.read_limited): a regular file of bounded size, never a
FIFO or a device. What is read is registered with redaction at once, so it is scrubbed from every
output from then on.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from kmrl_sync import redaction
from kmrl_sync.config.files import read_limited

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

