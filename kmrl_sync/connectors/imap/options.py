"""The `options:` mapping of an `imap` connector, validated before anything connects.

Kept free of IMAP imports on purpose: the config loader imports this for every `kmrl-sync`
invocation, and a no-change sync must start in well under a second.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from kmrl_sync.config.models import Duration, Megabytes, Strict
from kmrl_sync.config.optiontypes import ConfigPath, SecretFile, secret_from


class ImapOptions(Strict):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: 993 with tls, else 143
    tls: bool = True  # implicit TLS (IMAPS)
    starttls: bool = False  # plain connection upgraded with STARTTLS; needs tls: false
    tls_verify: bool = True  # verify the server certificate and host name
    ca_file: ConfigPath | None = None  # extra CA bundle (self-signed or internal CA)
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: SecretFile | None = None
    folders: list[str] = Field(default_factory=lambda: ["INBOX"], min_length=1)
    exclude: list[str] = Field(default_factory=list)
    attachments: bool = True
    max_attachment_mb: Megabytes = 50
    propagate_deletes: bool = True
    idle: bool | str = False  # true = IDLE on INBOX, or the name of the folder to watch
    batch_size: int = Field(default=200, ge=1, le=1000)  # mails per FETCH command
    timeout: Duration = 60.0  # socket timeout for every IMAP operation

    @field_validator("folders", "exclude")
    @classmethod
    def _no_empty_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name.strip():
                raise ValueError("empty folder name")
        return names

    @field_validator("idle")
    @classmethod
    def _idle(cls, value: bool | str) -> bool | str:
        if isinstance(value, str) and not value.strip():
            raise ValueError("use true, false or a folder name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ImapOptions:
        if self.password is None and self.password_file is None:
            raise ValueError("set password (e.g. ${MAIL_PASSWORD}) or password_file")
        if self.password is not None and self.password_file is not None:
            raise ValueError("set only one of password and password_file")
        if self.tls and self.starttls:
            raise ValueError("tls (implicit TLS) and starttls exclude each other; set tls: false to use starttls")
        if self.exclude and "*" not in self.folders:
            raise ValueError("exclude only applies with folders: ['*']")
        return self

    # ------------------------------------------------------------------ derived values

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.tls else 143)

    @property
    def secret(self) -> SecretStr:
        value = secret_from(self.password, self.password_file)
        assert value is not None  # guaranteed by _consistent
        return value

    @property
    def idle_folder(self) -> str | None:
        if self.idle is True:
            return "INBOX"
        if self.idle is False:
            return None
        return str(self.idle)

    @property
    def max_attachment_bytes(self) -> int:
        return int(self.max_attachment_mb * 1024 * 1024)

    def __repr_args__(self) -> Any:  # never show the password, even as SecretStr('**********')
        return [(k, v) for k, v in super().__repr_args__() if k != "password"]
