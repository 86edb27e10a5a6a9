"""The IMAP connector on the lowest imapclient pyproject.toml allows (the suite's .venv has the newest).

imapclient_compat reaches into imapclient's internals, so both ends of the allowed range are run
against the real Dovecot: here the lowest release, installed by `scripts/bootstrap test` into
.venv/lowest/imapclient (tests/support/lowest.py), is put in front of the newest through PYTHONPATH
for a whole `kmrl-sync sync` and for the compat module's own check.
"""

from __future__ import annotations

import os
import subprocess
import sys

import imapclient
import pytest

from tests.integration.imap_helpers import counts, inbox_and_archive, write_connector
from tests.support.lowest import REPO, installed_version, is_installed, lowest_folder, lowest_version, release
from tests.support.mailcorpus import realistic_mailbox

CHECK_COMPAT = """
import sys
import imapclient
from kmrl_sync.connectors.imap.client import ImapSession
from kmrl_sync.connectors.imap.imapclient_compat import imaplib_debug_level
from kmrl_sync.connectors.imap.options import ImapOptions

port, user, password = sys.argv[1:4]
session = ImapSession(ImapOptions(host="127.0.0.1", port=int(port), tls=False, username=user,
                                  password=password)).connect()
try:
    print(imapclient.__version__, imapclient.__file__, imaplib_debug_level(session.client))
finally:
    session.close()
"""


@pytest.fixture(scope="module")
def lowest_env() -> dict[str, str]:
    if not is_installed("imapclient"):
        pytest.fail(f"imapclient {lowest_version('imapclient')} is not in {lowest_folder('imapclient')} "
                    f"(found {installed_version('imapclient')}): run scripts/bootstrap test")
    path = os.pathsep.join(p for p in (str(lowest_folder("imapclient")), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


def test_the_compat_module_takes_effect_on_the_lowest_imapclient(dovecot_mailbox, lowest_env) -> None:
    box = dovecot_mailbox
    run = subprocess.run([sys.executable, "-c", CHECK_COMPAT, str(box.port), box.user, box.password],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, **lowest_env}, timeout=60)
    assert run.returncode == 0, run.stderr
    version, module, debug_level = run.stdout.split()
    assert release(version) == release(lowest_version("imapclient")) != release(imapclient.__version__)
    assert module.startswith(str(lowest_folder("imapclient")))
    assert debug_level == "0"  # imaplib no longer formats every response for a debug log


def test_a_sync_on_the_lowest_imapclient_queues_every_mail_once(project, dovecot_mailbox, redis_client,
                                                                 lowest_env) -> None:
    box = dovecot_mailbox
    mails = list(realistic_mailbox(120, attachment_ratio=0.3, seed=41))
    inbox_and_archive(box, mails[:80], mails[80:])
    write_connector(project, "low", box, extra="  batch_size: 25\n")
    first = project.cli("sync", "low", env=lowest_env, check=True)
    assert "failed 0" in first.stdout, first.stdout
    once = counts(redis_client)
    mails_queued = sum(1 for (_task, doc_id) in once if "/att/" not in doc_id)
    assert mails_queued == 120 and all(n == 1 for n in once.values())
    box.expunge("Archive", box.uids("Archive")[0])
    second = project.cli("sync", "low", env=lowest_env, check=True)
    assert "deleted 1" in second.stdout and "created 0" in second.stdout, second.stdout
    assert all(n == 1 for n in counts(redis_client).values())
