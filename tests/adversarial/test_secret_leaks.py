"""No secret the process loaded ever leaves it, through any output path.

The attack: servers that put secrets into their error text (an IMAP server echoing the LOGIN
command, a token endpoint quoting the request it refused), Redis URLs that carry the password in
odd places (an unencoded `@` in the userinfo, a `?password=` query parameter). For each source
of a secret (Redis password_file, Redis URL userinfo, Redis URL query, IMAP password, SharePoint
client secret) the secret is pushed through every path out of the process, and each path is read:

- CLI stdout and stderr of check, check --connect, sync (JSON logs, console logs, --json),
  status, status --json, health and queue, with Redis up and with Redis down;
- everything in Redis (the connectors' stats with last_error, the events on pub/sub, subscribed
  before the runs);
- exception text (ConnectorError) and a traceback that escapes the CLI.

"Appears" means the secret itself or any common encoding of it: URL-quoted, Python and JSON
escapes, an IMAP quoted string, and base64 (HTTP Basic `user:secret`, AUTHENTICATE PLAIN), which
`assert_clean` checks by decoding every base64-looking run of the output at every alignment.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import redis

from tests.adversarial.hostile_imap import Behaviour, hostile_imap
from tests.adversarial.hostile_token import hostile_token_endpoint
from tests.conftest import Project
from tests.support.redis_server import RedisServer, free_port
from tests.support.waiting import wait_until

REDIS_PASSWORD = "R3d1s@pa55:w0rd!"  # an `@` and a `:` in it: a URL's userinfo must not be cut there
IMAP_USER = "docs@kmrl.example"
IMAP_PASSWORD = 'Im4p-"q\\t"-pw'  # quotes and a backslash: IMAP's quoted string escapes them
SP_SECRET = "Sp~Secret+/=value.42"  # form-encoded as Sp%7ESecret%2B%2F%3Dvalue.42
SOURCES = ("redis password_file", "redis url userinfo", "redis url query", "imap password",
           "sharepoint client secret")


# --------------------------------------------------------------------------- checking output


def encodings(secret: str) -> list[str]:
    raw = secret.encode()
    return list(dict.fromkeys([
        secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
        re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(secret, safe="")),
        repr(secret)[1:-1], repr(raw)[2:-1],
        json.dumps(secret)[1:-1], json.dumps(repr(raw)[2:-1])[1:-1],
        secret.replace("\\", "\\\\").replace('"', '\\"'),
        json.dumps(secret.replace("\\", "\\\\").replace('"', '\\"'))[1:-1],
    ]))


_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def _base64_decodings(text: str) -> Iterator[bytes]:
    """Every base64-looking run of `text` decoded, from each of its first 4 characters on."""
    for match in _BASE64_RUN.finditer(text):
        run = match.group(0).rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):
            part = run[start:]
            part = part[:len(part) - len(part) % 4]
            if part:
                with contextlib.suppress(binascii.Error, ValueError):
                    yield base64.b64decode(part)


def find_leaks(where: str, text: str, secrets: list[str]) -> list[str]:
    found = []
    for secret in secrets:
        for form in encodings(secret):
            if form in text:
                found.append(f"{where}: {secret!r} appears as {form!r}")
        if any(secret.encode() in decoded for decoded in _base64_decodings(text)):
            found.append(f"{where}: {secret!r} appears in base64")
    return found


def assert_clean(where: str, text: str, secrets: list[str]) -> None:
    leaks = find_leaks(where, text, secrets)
    assert not leaks, "\n".join(leaks) + f"\n--- {where}:\n{text}"


def leak_text(secrets: list[str]) -> str:
    """What a hostile server adds to its refusal: every secret, in every encoding checked for."""
    parts = []
    for secret in secrets:
        parts += encodings(secret)
        parts.append(base64.b64encode(f"{IMAP_USER}:{secret}".encode()).decode())  # HTTP Basic
        parts.append(base64.b64encode(f"\0{IMAP_USER}\0{secret}".encode()).decode())  # AUTH PLAIN
        parts.append(base64.b64encode(f"x{secret}y".encode()).decode())
    return " | ".join(parts)


# --------------------------------------------------------------------------- the set-up


class PasswordRedis(RedisServer):
    """The test redis-server, with `requirepass`."""

    def __init__(self, base_dir: Path, password: str):
        super().__init__(base_dir, extra=("--requirepass", password))
        self.password = password

    def client(self, **kwargs) -> redis.Redis:
        return super().client(password=self.password, **kwargs)


@pytest.fixture(scope="module")
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PasswordRedis]:
    server = PasswordRedis(tmp_path_factory.mktemp("redis-pw"), REDIS_PASSWORD).start()
    yield server
    server.stop()


def redis_settings(source: str, port: int, secret_dir: Path) -> str:
    """The `redis:` mapping of sync.yaml that gives the password by `source`."""
    host = f"127.0.0.1:{port}/0"
    if source == "redis url userinfo":
        return f"{{url: 'redis://:{REDIS_PASSWORD}@{host}', key_prefix: kmrl}}"  # `@` not encoded
    if source == "redis url query":
        return f"{{url: 'redis://{host}?password={REDIS_PASSWORD}', key_prefix: kmrl}}"
    (secret_dir / "redis-password").write_text(REDIS_PASSWORD + "\n")
    return f"{{url: 'redis://{host}', password_file: {secret_dir / 'redis-password'}, key_prefix: kmrl}}"


@dataclass
class Outputs:
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, result: subprocess.CompletedProcess[str]) -> None:
        self.texts[f"{where}: stdout"] = result.stdout
        self.texts[f"{where}: stderr"] = result.stderr


def write_main(project: Project, redis_yaml: str, log_format: str) -> None:
    project.config.write_text(textwrap.dedent(f"""\
        redis: {redis_yaml}
        state_dir: ./state
        connectors_dir: connectors
        log: {{level: info, format: {log_format}}}
        daemon: {{alert_after: 1ms}}
        """))


def dump_redis(client: redis.Redis, skip: set[bytes]) -> str:
    """Every key and value in Redis, as text."""
    lines = []
    for key in client.scan_iter(count=1000):
        if key in skip:
            continue
        kind = client.type(key).decode()
        if kind == "string":
            value: object = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        else:
            value = client.xrange(key) if kind == "stream" else kind
        lines.append(f"{key!r}: {value!r}")
        lines.append(f"{key.decode('utf-8', 'replace')}: " + "".join(
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in (value.items() if isinstance(value, dict) else value if isinstance(value, list | set) else [value])
            for v in (v if isinstance(v, tuple) else (v,))))
    return "\n".join(lines)


@pytest.mark.parametrize("source", SOURCES)
def test_no_secret_leaves_the_process(source: str, tmp_path: Path, password_redis: PasswordRedis) -> None:
    client = password_redis.client()
    client.flushall()
    redis_source = source if source.startswith("redis") else "redis password_file"
    secrets = [REDIS_PASSWORD, IMAP_PASSWORD, SP_SECRET]
    leak = leak_text(secrets)
    project = Project(tmp_path / "project", password_redis.url)
    secret_dir = tmp_path / "secrets"
    secret_dir.mkdir()
    redis_yaml = redis_settings(redis_source, password_redis.port, secret_dir)
    write_main(project, redis_yaml, "json")
    (secret_dir / "imap").write_text(IMAP_PASSWORD + "\n")
    (secret_dir / "graph").write_text(SP_SECRET + "\n")
    # the IMAP password and the client secret: from a file, or inline from the environment
    imap_secret = "password: ${IMAP_PW}" if source == "imap password" else f"password_file: {secret_dir / 'imap'}"
    sp_secret = ("client_secret: ${SP_SECRET}" if source == "sharepoint client secret"
                 else f"client_secret_file: {secret_dir / 'graph'}")
    env = {"IMAP_PW": IMAP_PASSWORD, "SP_SECRET": SP_SECRET}
    outputs = Outputs()
    events: list[str] = []
    subscribed = threading.Event()
    done = threading.Event()

    def listen() -> None:
        pubsub = password_redis.client().pubsub()
        pubsub.subscribe("kmrl:events")
        while not subscribed.is_set():  # the server confirmed: no event of the runs can be missed
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "subscribe":
                subscribed.set()
        while not done.is_set():
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                events.append(message["data"].decode("utf-8", "replace"))
        pubsub.close()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert subscribed.wait(10)

    with hostile_imap(Behaviour(mode="echo", leak=(" | " + leak).encode())) as (imap_port, behaviour), \
            hostile_token_endpoint(leak) as (authority, token_requests):
        project.connector("mail", f"""\
            type: imap
            options:
              host: 127.0.0.1
              port: {imap_port}
              tls: false
              username: "{IMAP_USER}"
              {imap_secret}
              timeout: 10s
            """)
        project.connector("sp", f"""\
            type: sharepoint
            options:
              tenant_id: tenant-kmrl
              client_id: client-kmrl
              {sp_secret}
              site_url: https://kmrl.sharepoint.com/sites/Engineering
              graph_url: {authority}/v1.0
              authority_url: {authority}
            """)
        outputs.add("check", project.cli("check", env=env))
        outputs.add("check --connect", project.cli("check", "--connect", env=env))
        result = project.cli("sync", "mail", env=env)
        assert result.returncode == 1
        outputs.add("sync mail (JSON log)", result)
        outputs.add("sync sp --json", project.cli("sync", "sp", "--json", env=env))
        write_main(project, redis_yaml, "console")
        outputs.add("sync --all (console log)", project.cli("sync", "--all", env=env))
        # a message on the work queue that is not ours, as `queue` shows it
        client.lpush("document_processing", f"foreign message {leak}".encode())
        write_main(project, redis_yaml, "json")
        for command in (["status"], ["status", "--json"], ["health"], ["queue"]):
            outputs.add(" ".join(command), project.cli(*command, env=env))
        wait_until(lambda: sum('"run_failed"' in e for e in events) >= 4, 10, lambda: f"4 run_failed events: {events}")
        done.set()
        listener.join(5)
        # the servers did get the secrets, and said them back
        assert any(IMAP_PASSWORD.replace("\\", "\\\\").replace('"', '\\"').encode() in line
                   for line in behaviour.logins)
        assert any(quote_plus(SP_SECRET) in body for body in token_requests)

    # the same commands with Redis down: the URL and the error are shown
    down = redis_yaml.replace(f":{password_redis.port}/", f":{free_port()}/")
    write_main(project, down, "json")
    for command in (["status"], ["status", "--json"], ["health"], ["check", "--connect"]):
        outputs.add(f"{' '.join(command)} (Redis down)", project.cli(*command, env=env, timeout=120))

    # the output paths were taken: errors and the Redis URL were shown
    status = json.loads(outputs.texts["status --json: stdout"])
    assert {c["name"]: bool(c["last_error"]) for c in status["connectors"]} == {"mail": True, "sp": True}
    assert "refused" in status["connectors"][0]["last_error"] + status["connectors"][1]["last_error"]
    assert "127.0.0.1" in outputs.texts["status (Redis down): stdout"]
    assert "refused" in outputs.texts["sync mail (JSON log): stderr"]
    stats = {k.decode(): v.decode() for k, v in client.hgetall("kmrl:{mail}:stats").items()}
    assert stats["last_error"].startswith("IMAP login to")

    outputs.texts["redis (every key and value)"] = dump_redis(client, skip={b"document_processing"})
    outputs.texts["pub/sub events"] = "\n".join(events)
    own = {"imap password": IMAP_PASSWORD, "sharepoint client secret": SP_SECRET}.get(source, REDIS_PASSWORD)
    leaks = [leak for where, text in outputs.texts.items() for leak in find_leaks(where, text, [own])]
    leaks += [leak for where, text in outputs.texts.items() for leak in find_leaks(where, text, secrets)]
    assert not leaks, f"{len(leaks)} leak(s) with the secret from {source}:\n" + "\n".join(dict.fromkeys(leaks))


def test_exceptions_and_tracebacks_carry_no_secret(tmp_path: Path, redis_server: RedisServer) -> None:
    """A ConnectorError's text, and a traceback that escapes the CLI (stderr), are scrubbed too."""
    from kmrl_sync import redaction
    from kmrl_sync.connectors.imap.client import ImapSession
    from kmrl_sync.connectors.imap.options import ImapOptions

    secret_file = tmp_path / "imap"
    secret_file.write_text(IMAP_PASSWORD + "\n")
    leak = leak_text([IMAP_PASSWORD])
    with hostile_imap(Behaviour(mode="echo", leak=(" | " + leak).encode())) as (port, _behaviour):
        options = ImapOptions(host="127.0.0.1", port=port, tls=False, username=IMAP_USER,
                              password_file=secret_file)
        with pytest.raises(Exception) as caught:
            ImapSession(options, attempts=1).connect()
    text = f"{caught.value}\n{caught.value!r}\n{caught.value.args!r}"
    assert "refused" in text
    assert_clean("ConnectorError", text, [IMAP_PASSWORD])
    redaction.forget_all()

    project = Project(tmp_path / "project", redis_server.url)
    project.connector("mail", f"""\
        type: imap
        options: {{host: 127.0.0.1, username: u, password_file: {secret_file}}}
        """)
    crash = textwrap.dedent(f"""\
        import sys
        from kmrl_sync.cli import main as cli
        from kmrl_sync.loading.loader import load_config

        def boom(args):
            load_config({str(project.config)!r})
            print("leaking " + {leak!r}, file=sys.stderr)
            raise RuntimeError("crashed with the password: " + {leak!r})

        cli.COMMANDS["connectors"] = boom
        cli.run()
        """)
    result = subprocess.run([sys.executable, "-c", crash, "connectors"], capture_output=True, text=True,
                            timeout=60, cwd=project.root)
    assert result.returncode == 1
    assert "RuntimeError: crashed with the password: ***" in result.stderr
    assert "Traceback" in result.stderr and "leaking ***" in result.stderr
    assert_clean("traceback", result.stdout + result.stderr, [IMAP_PASSWORD])


def test_check_warns_about_secrets_too_short_to_redact(project: Project, tmp_path: Path) -> None:
    """A 3-character secret is not scrubbed (it would garble all output): `check` says so."""
    short = tmp_path / "short"
    short.write_text("abc\n")
    project.connector("mail", f"""\
        type: imap
        options: {{host: 127.0.0.1, username: u, password_file: {short}}}
        """)
    result = project.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: secret file {short}: the secret is shorter than 4 characters" in result.stderr
    long_enough = tmp_path / "long"
    long_enough.write_text("abcd\n")
    project.connector("mail", f"""\
        type: imap
        options: {{host: 127.0.0.1, username: u, password_file: {long_enough}}}
        """)
    assert "warning" not in project.cli("check", check=True).stderr


@pytest.mark.parametrize("offset", [0, 480, 490, 495])
def test_failed_documents_list_carries_no_secret(redis_client: redis.Redis, offset: int) -> None:
    """A document's failure reason (server text, any length) is stored without the secret, also
    when the secret straddles the point where the reason is cut (500 characters)."""
    import json as json_module

    from kmrl_sync import redaction
    from kmrl_sync.config.models import QueueConfig
    from kmrl_sync.engine.documents import Batch, Failure
    from kmrl_sync.engine.queues import CeleryMessages, queue_target
    from kmrl_sync.engine.scripts import Scripts
    from kmrl_sync.engine.state import ConnectorState

    redaction.register(IMAP_PASSWORD, "test")
    state = ConnectorState(redis_client, Scripts.register(redis_client), "kmrl", "mail")
    queue = QueueConfig()
    reason = "x" * offset + f"{IMAP_PASSWORD} | {leak_text([IMAP_PASSWORD])}"
    state.commit(Batch(failures=[Failure("INBOX/1", reason), Failure(None, reason)]),
                 target=queue_target(queue, "normal", state.keys), celery=CeleryMessages(queue, "normal"))
    stored = {k.decode(): json_module.loads(v) for k, v in redis_client.hgetall(state.keys.failures).items()}
    assert set(stored) == {"INBOX/1", ""}
    for entry in stored.values():
        assert entry["reason"].startswith("x" * offset + "***")
        assert_clean("failures list", json_module.dumps(entry, ensure_ascii=False), [IMAP_PASSWORD])
        head = entry["reason"].rstrip("\u2026")
        assert not any(head.endswith(IMAP_PASSWORD[:n]) for n in range(4, len(IMAP_PASSWORD))), head[-40:]
