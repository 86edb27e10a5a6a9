"""Validation of the `imap` connector's options: refuse mistakes before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kmrl_sync.connectors.imap.options import ImapOptions

BASE = {"host": "mail.example.org", "username": "kmrl-sync@example.org", "password": "s3cret-pw"}


def test_defaults_are_implicit_tls_on_993_inbox_attachments_and_deletes() -> None:
    opts = ImapOptions(**BASE)
    assert opts.tls and not opts.starttls and opts.effective_port == 993
    assert opts.folders == ["INBOX"] and opts.attachments and opts.propagate_deletes
    assert opts.idle_folder is None and opts.max_attachment_bytes == 50 * 1024 * 1024
    assert opts.secret.get_secret_value() == "s3cret-pw"


def test_plain_and_starttls_ports() -> None:
    assert ImapOptions(**BASE, tls=False).effective_port == 143
    assert ImapOptions(**BASE, tls=False, starttls=True).effective_port == 143
    assert ImapOptions(**BASE, port=10993).effective_port == 10993


@pytest.mark.parametrize("bad, message", [
    ({"tls": True, "starttls": True}, "exclude each other"),
    ({"password": None}, "password"),
    ({"exclude": ["Trash"]}, "exclude only applies"),
    ({"surprise": 1}, "Extra inputs"),
    ({"folders": []}, "at least 1"),
    ({"folders": [" "]}, "empty folder name"),
    ({"batch_size": 0}, "greater than or equal"),
    ({"max_attachment_mb": 0}, "greater than"),
    ({"idle": ""}, "folder name"),
    ({"timeout": "soon"}, "duration"),
])
def test_mistakes_are_refused(bad: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        ImapOptions(**{**BASE, **bad})
    assert message in str(info.value)


def test_password_or_password_file_not_both(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    opts = ImapOptions(**{**BASE, "password": None, "password_file": secret})
    assert opts.secret.get_secret_value() == "from-file"
    with pytest.raises(ValidationError, match="only one"):
        ImapOptions(**BASE, password_file=secret)
    with pytest.raises(ValidationError, match="does not exist"):
        ImapOptions(**{**BASE, "password": None, "password_file": tmp_path / "missing"})


def test_relative_password_file_is_relative_to_the_connector_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    opts = ImapOptions.model_validate({**BASE, "password": None, "password_file": "pw"},
                                      context={"base_dir": tmp_path})
    assert opts.password_file == tmp_path / "pw"


def test_all_folders_with_exclude_and_idle_folder() -> None:
    opts = ImapOptions(**BASE, folders=["*"], exclude=["Trash", "Junk"], idle="Alerts", timeout="30s")
    assert opts.idle_folder == "Alerts" and opts.timeout == 30
    assert ImapOptions(**BASE, idle=True).idle_folder == "INBOX"


def test_password_never_shown() -> None:
    opts = ImapOptions(**BASE)
    assert "s3cret-pw" not in repr(opts) and "s3cret-pw" not in str(opts)
    assert "s3cret-pw" not in opts.model_dump_json()
