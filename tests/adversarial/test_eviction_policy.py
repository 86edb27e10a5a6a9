"""Every Redis eviction policy gets the same verdict from `status`, `health` and `check --connect`.

Found: `check --connect` said `redis ...: ok` for an `allkeys-*` policy, which `status` warns about
and `health` fails on: an operator checking a new install before starting it was told all is well.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

POLICIES = ["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
            "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]


@pytest.fixture
def policy_client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client
    redis_client.config_set("maxmemory-policy", "noeviction")  # the session's server is shared


def _verdicts(project, run) -> dict[str, tuple[int, str]]:
    return {command: run(*command.split()) for command in ("status", "health", "check --connect")}


@pytest.fixture
def own_logging() -> Iterator[None]:
    """The commands point structlog at the captured stderr, closed after the test: put it back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def _in_process(project, capsys):
    from kmrl_sync.cli.main import main

    def run(*args: str) -> tuple[int, str]:
        code = main([*args, "-c", str(project.config)])
        return code, capsys.readouterr().out
    return run


def _assert_agree(verdicts: dict[str, tuple[int, str]], policy: str) -> None:
    unhealthy = policy.startswith("allkeys-")
    warned = policy != "noeviction"
    sentence = f"Redis maxmemory-policy is {policy}"
    (status_code, status), (health_code, health), (check_code, check) = verdicts.values()
    assert status_code == 0 and (sentence in status) == warned, status
    assert health_code == (1 if unhealthy else 0) and (sentence in health) == unhealthy, health
    assert check_code == (1 if unhealthy else 0) and (sentence in check) == warned, check


@pytest.mark.parametrize("policy", POLICIES)
def test_status_health_and_check_agree_on_the_eviction_policy(project, policy_client, capsys, own_logging,
                                                              policy: str) -> None:
    policy_client.config_set("maxmemory-policy", policy)

    _assert_agree(_verdicts(project, _in_process(project, capsys)), policy)


def test_the_commands_agree_as_an_operator_runs_them(project, policy_client) -> None:
    policy_client.config_set("maxmemory-policy", "allkeys-lru")

    def run(*args: str) -> tuple[int, str]:
        result = project.cli(*args)
        assert "Traceback" not in result.stderr
        return result.returncode, result.stdout

    _assert_agree(_verdicts(project, run), "allkeys-lru")
