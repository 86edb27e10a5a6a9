"""The `options:` of a `type: sharepoint` connector file, validated before anything runs."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from kmrl_sync.config.models import Duration, Megabytes, PerSecond, Strict
from kmrl_sync.config.optiontypes import GlobList, SecretFile

GRAPH_URL = "https://graph.microsoft.com/v1.0"
AUTHORITY_URL = "https://login.microsoftonline.com"


class CertificateOptions(Strict):
    """App-only auth with a certificate registered on the Entra app (preferred over secrets)."""

    key_file: SecretFile  # PEM private key (may include the certificate)
    thumbprint: str  # SHA-1 thumbprint of the certificate, hex as the Azure portal shows it

    @field_validator("thumbprint")
    @classmethod
    def _hex(cls, value: str) -> str:
        cleaned = value.replace(":", "").replace(" ", "").strip()
        try:
            raw = bytes.fromhex(cleaned)
        except ValueError:
            raise ValueError("thumbprint must be the certificate's SHA-1 thumbprint in hex") from None
        if len(raw) != 20:
            raise ValueError("thumbprint must be 40 hex digits (SHA-1)")
        return cleaned.upper()


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{what} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class SharePointOptions(Strict):
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr | None = None
    client_secret_file: SecretFile | None = None
    certificate: CertificateOptions | None = None
    site_url: str
    library: str | None = None  # id, webUrl, URL segment ("Shared Documents") or name; None = default
    folder: str = ""  # scope inside the library, e.g. /Drawings
    include: GlobList = Field(default_factory=lambda: ["**/*"])
    exclude: GlobList = Field(default_factory=list)
    max_file_mb: Megabytes | None = None
    graph_url: str = GRAPH_URL
    authority_url: str = AUTHORITY_URL
    max_requests_per_second: PerSecond | None = None
    download_content: bool = True  # false: metadata only (blob "", workers fetch source_url themselves)
    download_concurrency: int = Field(default=4, ge=1, le=32)
    page_size: int = Field(default=200, ge=1, le=1000)
    timeout: Duration = Duration(60)  # per HTTP request (connect/read)
    max_throttle_wait: Duration = Duration(900)  # give up after this much throttling in one request

    @field_validator("site_url", "graph_url", "authority_url")
    @classmethod
    def _urls(cls, value: str, info: ValidationInfo) -> str:
        return _http_url(value, info.field_name or "url")

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        parts = [p for p in value.replace("\\", "/").split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError("folder must not contain . or .. segments")
        return "/".join(parts)


    @model_validator(mode="after")
    def _one_credential(self) -> SharePointOptions:
        given = [n for n in ("client_secret", "client_secret_file", "certificate") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of client_secret, client_secret_file or certificate "
                             f"(got {', '.join(given) or 'none'})")
        return self

    @property
    def secret(self) -> SecretStr | None:
        from kmrl_sync.config.optiontypes import secret_from

        return secret_from(self.client_secret, self.client_secret_file)

    @property
    def max_bytes(self) -> int | None:
        return int(self.max_file_mb * 1024 * 1024) if self.max_file_mb else None


__all__ = ["AUTHORITY_URL", "GRAPH_URL", "CertificateOptions", "SharePointOptions"]
