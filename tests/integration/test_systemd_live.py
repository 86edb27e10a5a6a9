"""The unit under a live systemd: install.sh, start, reload, watchdog, stop, in a booted container.

One Debian 12 container (systemd as PID 1, tests/support/systemd_container.py) per module: install.sh
installs this checkout into it exactly as on a server, the test writes a sync.yaml pointing at a
redis-server it runs on the host (the container shares the host's network) and filesystem connectors
on folders inside the container, and drives the service with systemctl. Each test makes sure the
service runs (or starts it), so any one can run alone; in file order they follow a service's life.

Needs root, systemd-nspawn and debootstrap (scripts/test installs them and sets
KMRL_REQUIRE_SYSTEMD=1, so there a missing piece fails instead of skipping). Select with
`-m systemd`. The first run builds the container's root file system (1-2 minutes, cached).
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import systemd_container
from tests.support.celery_messages import decode_queue
from tests.support.redis_server import RedisServer
from tests.support.systemd_container import (
    REQUIRE_ENV,
    Container,
    Recipe,
    build_wheels,
    cached_rootfs,
    copy_checkout,
    require_systemd_container,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.systemd

REPO = Path(__file__).resolve().parents[2]
UNIT = "kmrl-sync.service"
ETC = "/etc/kmrl-sync"
# The shipped unit's watchdog is 60 s; the test shortens it in a drop-in (the only change it makes
# to the unit) so a wedged daemon is restarted within seconds.
WATCHDOG_DROP_IN = "[Service]\nWatchdogSec=6s\n"
# What systemd itself logs about a unit it finds fault with: unit file parsing ("Unknown key",
# "Failed to parse ..., ignoring", deprecated settings) and set-up of the service's environment
# ("... already exists but the mode is different").
SYSTEMD_WARNING = re.compile(r"mode is different|unknown|ignoring|deprecated|please use|will be removed"
                             r"|not supported|failed to parse|invalid", re.IGNORECASE)
# Expected while the watchdog test makes the daemon wedge; anything else in that window still counts.
WATCHDOG_EXPECTED = re.compile(r"Watchdog timeout|Killing process \d+ \(\S+\) with signal SIGABRT"
                               r"|Main process exited, code=(killed|dumped), status=6/ABRT"
                               r"|Failed with result 'watchdog'")


class LiveUnit:
    """The installed service in the container, and the host-side Redis it syncs into."""

    def __init__(self, container: Container, redis_server: RedisServer):
        self.c = container
        self.redis = redis_server
        self.install_runs: list[str] = []
        self.default_config = ""  # the sync.yaml install.sh writes
        self.config = ""  # the test's sync.yaml
        self.expected_warnings: set[str] = set()  # journal cursors of what the watchdog test provoked

    def install(self) -> None:
        result = self.c.run(["/src/systemd/install.sh"], timeout=600, check=True,
                            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels",
                                 "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        self.install_runs.append(result.stdout + result.stderr)

    def configure(self) -> None:
        self.default_config = self.c.run(["cat", f"{ETC}/sync.yaml"], check=True).stdout
        self.write_config(textwrap.dedent(f"""\
            redis: {{url: "{self.redis.url}", key_prefix: kmrl}}
            state_dir: /var/lib/kmrl-sync
            connectors_dir: connectors
            log: {{level: info, format: json}}
            daemon: {{startup_jitter: 0s, expected: true}}
            """))
        self.c.run(["mkdir", "-p", "/etc/systemd/system/kmrl-sync.service.d"], check=True)
        self.c.write("/etc/systemd/system/kmrl-sync.service.d/test-watchdog.conf", WATCHDOG_DROP_IN)
        self.c.run(["systemctl", "daemon-reload"], check=True)
        # As an operator does (README: enable --now); it also keeps the unit loaded once stopped,
        # so its main process's exit status can still be read.
        self.c.run(["systemctl", "enable", UNIT], check=True)

    def write_config(self, text: str) -> None:
        self.config = text
        self.c.write(f"{ETC}/sync.yaml", text, owner="root:kmrl-sync", mode="0640")

    def add_folder_connector(self, name: str, files: dict[str, str]) -> None:
        root = f"/srv/{name}"
        self.c.run(["mkdir", "-p", root], check=True)
        for file, text in files.items():
            self.c.write(f"{root}/{file}", text)
        self.c.write(f"{ETC}/connectors/{name}.yaml",
                     f"type: filesystem\nschedule: {{every: 1h}}\noptions: {{root: {root}}}\n",
                     owner="root:kmrl-sync", mode="0640")

    def state(self) -> dict[str, str]:
        return self.c.show(UNIT, "ActiveState", "SubState", "MainPID", "NRestarts", "StatusText", "Result",
                           "ExecMainCode", "ExecMainStatus", "Type", "NotifyAccess")

    def ensure_running(self) -> None:
        if self.state()["ActiveState"] != "active":
            self.c.run(["systemctl", "start", UNIT], check=True, timeout=120)

    def daemon_log(self, after: str = "") -> list[dict[str, object]]:
        """The daemon's own JSON log lines (stdout, in the journal)."""
        args = ["-u", "kmrl-sync", "--output-fields=MESSAGE,_COMM,SYSLOG_IDENTIFIER"]
        if after:
            args += ["--after-cursor", after]
        lines = []
        for entry in self.c.journal(*args):
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("{"):
                lines.append(json.loads(message))
        return lines

    def unit_messages(self, after: str = "") -> list[dict[str, object]]:
        """What systemd (PID 1, or the service's process before it execs) logged about the unit."""
        args = ["--after-cursor", after] if after else []
        found = []
        for entry in self.c.journal(*args):
            ident = str(entry.get("SYSLOG_IDENTIFIER", ""))
            from_systemd = ident == "systemd" or ident.startswith("(") or entry.get("_PID") == "1"
            about_unit = (UNIT in (entry.get("UNIT"), entry.get("_SYSTEMD_UNIT"))
                          or "kmrl-sync" in str(entry.get("CONFIG_FILE", ""))
                          or "kmrl-sync" in str(entry.get("MESSAGE", "")))
            if from_systemd and about_unit:
                found.append(entry)
        return found

    def synced(self, connector: str, after: str = "") -> dict[str, object] | None:
        return next((line for line in self.daemon_log(after) if line.get("event") == "sync finished"
                     and line.get("connector") == connector), None)

    def queued_ids(self) -> set[str]:
        client = self.redis.client()
        try:
            return {task.document_id for task in decode_queue(client)}
        finally:
            client.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveUnit]:
    require_systemd_container()
    work = tmp_path_factory.mktemp("systemd-live")
    copy_checkout(REPO, work / "src")
    build_wheels(work / "src", work / "wheels")
    server = RedisServer(work / "redis").start()
    try:
        with cached_rootfs(work / "debootstrap.log") as rootfs:
            container = Container(rootfs, work / "boot.log", binds=[(work / "src", "/src")],
                                  ro_binds=[(work / "wheels", "/wheels")]).start()
            try:
                unit = LiveUnit(container, server)
                unit.install()
                unit.configure()
                unit.add_folder_connector("docs-a", {"one.txt": "first document\n"})
                unit.install()  # a re-run (an upgrade) must work and keep the operator's config
                yield unit
            finally:
                container.stop()
    finally:
        server.stop()


def test_install_sh_is_idempotent_and_leaves_config_and_modes_alone(live: LiveUnit) -> None:
    assert len(live.install_runs) == 2
    for output in live.install_runs:
        assert "kmrl-sync installed in /opt/kmrl-sync" in output
        assert "systemd-analyze verify reported problems" not in output, output
    modes = live.c.run(["stat", "-c", "%n %U:%G %a", ETC, f"{ETC}/connectors", f"{ETC}/credentials",
                        f"{ETC}/sync.yaml", f"{ETC}/kmrl-sync.env", "/var/lib/kmrl-sync",
                        "/etc/systemd/system/kmrl-sync.service"], check=True).stdout.splitlines()
    assert modes == [
        f"{ETC} root:kmrl-sync 750",
        f"{ETC}/connectors root:kmrl-sync 750",
        f"{ETC}/credentials root:root 700",
        f"{ETC}/sync.yaml root:kmrl-sync 640",
        f"{ETC}/kmrl-sync.env root:kmrl-sync 640",
        "/var/lib/kmrl-sync kmrl-sync:kmrl-sync 750",
        "/etc/systemd/system/kmrl-sync.service root:root 644",
    ]
    # The second run kept the sync.yaml written after the first one.
    assert live.redis.url in live.c.run(["cat", f"{ETC}/sync.yaml"], check=True).stdout
    verify = live.c.run(["systemd-analyze", "verify", UNIT])
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_start_reaches_ready_and_the_first_sync_is_in_the_journal(live: LiveUnit) -> None:
    start = live.c.cursor()
    live.ensure_running()  # Type=notify: systemctl start returns once the daemon sent READY=1
    state = live.state()
    assert (state["Type"], state["NotifyAccess"]) == ("notify", "main")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
    assert "connector(s)" in state["StatusText"], state
    wait_until(lambda: live.synced("docs-a", start), 60, lambda: f"docs-a to sync: {live.daemon_log(start)}",
               interval=0.2)
    run = live.synced("docs-a", start)
    assert run is not None and run["result"] == "ok"
    assert "docs-a:one.txt" in live.queued_ids()
    wait_until(lambda: "redis up" in live.state()["StatusText"], 30, lambda: f"'redis up': {live.state()}",
               interval=0.2)


def test_reload_starts_an_added_connector(live: LiveUnit) -> None:
    live.ensure_running()
    before = live.state()
    start = live.c.cursor()
    live.add_folder_connector("docs-b", {"two.txt": "added by a reload\n"})
    live.c.run(["systemctl", "reload", UNIT], check=True)
    wait_until(lambda: live.synced("docs-b", start), 60, lambda: f"docs-b to sync: {live.daemon_log(start)}",
               interval=0.2)
    reloaded = [line for line in live.daemon_log(start) if line.get("event") == "configuration reloaded"]
    assert reloaded and reloaded[0]["added"] == ["docs-b"], reloaded
    assert "docs-b:two.txt" in live.queued_ids()
    wait_until(lambda: live.state()["SubState"] == "running", 30, lambda: f"running: {live.state()}", interval=0.2)
    after = live.state()
    assert (after["MainPID"], after["NRestarts"]) == (before["MainPID"], before["NRestarts"])  # not restarted


def test_a_wedged_daemon_is_restarted_by_the_watchdog(live: LiveUnit) -> None:
    live.ensure_running()
    before = live.state()
    start = live.c.cursor()
    live.c.run(["kill", "-STOP", before["MainPID"]], check=True)  # alive, but no WATCHDOG=1 any more

    def restarted() -> bool:
        now = live.state()
        return (now["NRestarts"] == str(int(before["NRestarts"]) + 1) and now["SubState"] == "running"
                and now["MainPID"] not in ("0", before["MainPID"]))

    wait_until(restarted, 60, lambda: f"a watchdog restart: {live.state()}", interval=0.25)
    messages = live.unit_messages(start)
    live.expected_warnings |= {str(e["__CURSOR"]) for e in messages if WATCHDOG_EXPECTED.search(str(e.get("MESSAGE")))}
    said = [str(e.get("MESSAGE")) for e in messages]
    assert any("Watchdog timeout" in m for m in said), said
    assert any("Failed with result 'watchdog'" in m for m in said), said
    assert not any("SIGKILL" in m for m in said), said
    assert any(line.get("event") == "daemon starting" for line in live.daemon_log(start))


def test_stop_is_clean(live: LiveUnit) -> None:
    live.ensure_running()
    pid = live.state()["MainPID"]
    start = live.c.cursor()
    live.c.run(["systemctl", "stop", UNIT], check=True, timeout=120)
    state = live.state()
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    # Exited by itself with status 0 (CLD_EXITED = 1), not by the SIGTERM systemd would also call clean.
    assert (state["ExecMainCode"], state["ExecMainStatus"]) == ("1", "0"), state
    said = [str(e.get("MESSAGE")) for e in live.unit_messages(start)]
    assert any("Deactivated successfully" in m for m in said), said
    assert not any(re.search(r"SIGKILL|timed out|Killing process", m) for m in said), said
    events = [line.get("event") for line in live.daemon_log(start)]
    assert "daemon stopped" in events, events  # it ran its shutdown to the end, not killed by a signal
    assert live.c.run(["kill", "-0", pid]).returncode != 0  # the daemon is gone


def test_install_sh_default_config_syncs_into_the_embedded_redis(live: LiveUnit) -> None:
    """The sync.yaml install.sh writes (`redis.url: embedded`) works as shipped: the bundled Redis runs
    inside the sandbox, under /var/lib/kmrl-sync, and the README's check (as the service's user, with
    its credentials) reaches it beside the daemon."""
    assert "url: embedded" in live.default_config
    live.c.run(["systemctl", "stop", UNIT], check=True, timeout=120)
    test_config = live.config
    try:
        live.write_config(live.default_config)
        start = live.c.cursor()
        live.c.run(["systemctl", "start", UNIT], check=True, timeout=120)
        # the default daemon.startup_jitter is 10 s
        wait_until(lambda: live.synced("docs-a", start), 60, lambda: f"docs-a to sync: {live.daemon_log(start)}",
                   interval=0.5)
        run = live.synced("docs-a", start)
        assert run is not None and (run["result"], run["created"]) == ("ok", 1), run  # a new, empty Redis
        check = live.c.run(["systemd-run", "--quiet", "--wait", "--pipe", "-p", "User=kmrl-sync",
                            "-p", f"LoadCredential=kmrl:{ETC}/credentials", "/opt/kmrl-sync/bin/kmrl-sync",
                            "check", "--connect", "-c", f"{ETC}/sync.yaml"], timeout=120)
        assert check.returncode == 0 and "docs-a (filesystem): ok" in check.stdout, check
    finally:
        live.c.run(["systemctl", "stop", UNIT], timeout=120)
        live.write_config(test_config)


def test_the_admin_command_runs_as_the_service_with_its_credentials(live: LiveUnit) -> None:
    """Once a config reads ${CREDENTIALS_DIRECTORY}, the CLI run by hand refuses it and names the way
    out; `kmrl-sync` as root (install.sh's /usr/local/sbin/kmrl-sync, first on root's PATH) runs
    each command as the service does, with the credentials, and keeps the command's exit code."""
    live.ensure_running()
    live.c.write(f"{ETC}/credentials/imap-test", "not-a-real-password\n", mode="0600")
    live.c.write(f"{ETC}/connectors/mail.yaml",
                 "type: imap\nenabled: false\noptions: {host: mail.invalid, username: u,\n"
                 "  password_file: '${CREDENTIALS_DIRECTORY}/kmrl_imap-test'}\n", owner="root:kmrl-sync", mode="0640")
    try:
        direct = live.c.run(["/opt/kmrl-sync/bin/kmrl-sync", "status"], timeout=120)
        assert direct.returncode == 2, direct
        assert "CREDENTIALS_DIRECTORY is not set" in direct.stderr and "sudo kmrl-sync" in direct.stderr, direct
        check = live.c.run(["kmrl-sync", "check"], timeout=120)
        assert check.returncode == 0 and f"{ETC}/sync.yaml: ok (" in check.stdout, check
        status = live.c.run(["kmrl-sync", "status", "--json"], timeout=120)
        assert status.returncode == 0 and json.loads(status.stdout)["redis"]["ok"], status
        health = live.c.run(["kmrl-sync", "health"], timeout=120)
        assert health.returncode == 0 and health.stdout.strip() == "healthy", health
        unknown = live.c.run(["kmrl-sync", "sync", "no-such-connector"], timeout=120)
        assert unknown.returncode == 2 and "unknown connector" in unknown.stderr, unknown
    finally:
        live.c.run(["rm", "-f", f"{ETC}/connectors/mail.yaml", f"{ETC}/credentials/imap-test"])


def test_no_systemd_warning_about_the_unit_and_exposure_at_most_2(live: LiveUnit) -> None:
    live.ensure_running()  # at least one start in the journal, whatever ran before
    live.c.run(["systemctl", "stop", UNIT], check=True, timeout=120)
    warnings = [str(entry.get("MESSAGE")) for entry in live.unit_messages()
                if (int(str(entry.get("PRIORITY", "6"))) <= 4 or SYSTEMD_WARNING.search(str(entry.get("MESSAGE"))))
                and str(entry["__CURSOR"]) not in live.expected_warnings]
    assert warnings == []
    security = live.c.run(["systemd-analyze", "security", "--no-pager", UNIT])
    exposure = re.search(r"Overall exposure level for kmrl-sync\.service: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0, security.stdout


# --------------------------------------------------------------------------- the harness itself


def test_the_root_file_system_is_rebuilt_only_when_its_recipe_changes(tmp_path: Path) -> None:
    builds: list[Recipe] = []

    def build(target: Path, recipe: Recipe, _log: Path) -> None:
        target.mkdir()
        (target / "built").write_text(str(len(builds)))
        builds.append(recipe)

    path = tmp_path / "machines" / "rootfs"
    more = Recipe(include=(*Recipe().include, "curl"))
    for recipe, generation in ((Recipe(), "0"), (Recipe(), "0"), (more, "1"), (more, "1"), (Recipe(), "2")):
        with cached_rootfs(tmp_path / "log", path=path, recipe=recipe, build=build) as rootfs:
            assert rootfs == path and (rootfs / "built").read_text() == generation
    assert builds == [Recipe(), more, Recipe()]
    assert sorted(p.name for p in path.parent.iterdir()) == [".rootfs.lock", "rootfs"]  # no half-built trees


def test_an_interrupted_build_is_never_used(tmp_path: Path) -> None:
    def broken(target: Path, _recipe: Recipe, _log: Path) -> None:
        target.mkdir()
        (target / "half").write_text("")
        raise RuntimeError("debootstrap failed")

    path = tmp_path / "rootfs"
    with pytest.raises(RuntimeError, match="debootstrap failed"), cached_rootfs(tmp_path / "log", path, build=broken):
        pass
    assert not path.exists()
    with cached_rootfs(tmp_path / "log", path, build=lambda target, *_: target.mkdir()) as rootfs:
        assert rootfs.is_dir() and not (rootfs / "half").exists()


def test_a_machine_that_cannot_boot_the_container_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_container, "unavailable_reason", lambda: "systemd-nspawn not installed")
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"set {REQUIRE_ENV}=1"):
        require_systemd_container()
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_ENV} is set"):
        require_systemd_container()
