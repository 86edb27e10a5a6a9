"""Prometheus metrics for the daemon (`metrics.listen: host:port`; off by default).

A private registry keeps the endpoint to what an operator alerts on: documents by connector and
event, run durations and results, the last success per connector, lease contention and Redis
reachability. Metrics are per daemon process; sum over instances for a fleet view.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from kmrl_sync.config.models import parse_listen

EVENTS = ("created", "updated", "deleted", "unchanged", "failed")


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # `*_created` series would read like our `event="created"` counts
        self.registry = CollectorRegistry()
        r = self.registry
        self.documents = Counter("kmrl_sync_documents", "Documents processed, by connector and event",
                                 ["connector", "event"], registry=r)
        self.runs = Counter("kmrl_sync_runs", "Finished runs by result (ok, partial, failed, interrupted)",
                            ["connector", "result"], registry=r)
        self.run_seconds = Histogram("kmrl_sync_run_duration_seconds", "Duration of sync runs", ["connector"],
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
                                     registry=r)
        self.failing = Gauge("kmrl_sync_connector_failing", "1 while the connector's last run failed",
                             ["connector"], registry=r)
        self.last_success = Gauge("kmrl_sync_last_success_timestamp_seconds",
                                  "Unix time of the connector's last successful run in this daemon",
                                  ["connector"], registry=r)
        self.lease_held = Gauge("kmrl_sync_lease_held", "1 while this daemon holds the connector's lease",
                                ["connector"], registry=r)
        self.lease_busy = Counter("kmrl_sync_lease_busy", "Runs skipped because another process held the lease",
                                  ["connector"], registry=r)
        self.watch_events = Counter("kmrl_sync_watch_notifications", "Change notifications from watch mode",
                                    ["connector"], registry=r)
        self.redis_up = Gauge("kmrl_sync_redis_up", "1 when the last heartbeat reached Redis", registry=r)
        self.connectors = Gauge("kmrl_sync_connectors_scheduled", "Connectors scheduled by this daemon",
                                registry=r)
        self._server: Any = None

    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe_run(self, summary: Any) -> None:
        name = summary.connector
        for event, count in summary.counts().items():
            if count:
                self.documents.labels(name, event).inc(count)
        self.runs.labels(name, summary.result).inc()
        self.run_seconds.labels(name).observe(summary.seconds)
        failed = summary.result == "failed"
        self.failing.labels(name).set(1 if failed else 0)
        if summary.result in ("ok", "partial"):
            self.last_success.labels(name).set(time.time())

    def forget(self, name: str) -> None:
        """Drop a removed connector's series so dashboards do not show it forever."""
        for metric in (self.failing, self.last_success, self.lease_held, self.lease_busy, self.watch_events,
                       self.run_seconds):
            with contextlib.suppress(KeyError):
                metric.remove(name)
