"""Pytest fixtures around tests.support.redis_topologies: one Sentinel group and one Cluster per
test session (starting them costs seconds), each handed to a test healthy and empty.

* ``sentinel_group``: a master, its replica and three Sentinels; a test may SIGKILL the master,
  the next test gets the group back with the killed server restarted as a replica.
* ``redis_cluster``: three masters with every slot assigned, flushed for each test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_topologies import Cluster, SentinelGroup


@pytest.fixture(scope="session")
def _sentinel_group_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    yield group
    group.stop()


@pytest.fixture
def sentinel_group(_sentinel_group_session: SentinelGroup) -> SentinelGroup:
    _sentinel_group_session.flush()
    return _sentinel_group_session


@pytest.fixture(scope="session")
def _cluster_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(_cluster_session: Cluster) -> Cluster:
    _cluster_session.flush()
    return _cluster_session
