"""A real S3 endpoint for tests: moto's server (the one S3 server installable here) on loopback.

It runs in the test process on its own free 127.0.0.1 port, like the Redis and Dovecot the tests
start, and is spoken to over HTTP by everything under test (in-process engines and `kmrl-sync`
subprocesses alike): nothing patches the S3 client. Built from the parts moto's `moto.server`
exports, served by werkzeug, so that `stop()` also closes the listening socket: an outage is a
refused connection, as when a real server goes down (ThreadedMotoServer leaves the socket listening
and clients hang instead). The buckets live in this process's moto backend, so they survive a
stop/start: the server comes back with its content, as a real one would.
"""

from __future__ import annotations

import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

ACCESS_KEY = "test-access-key-id"
SECRET_KEY = "test-secret-key-0123456789"  # moto accepts any; the tests check it is never shown
REGION = "us-east-1"


class _OneRequestPerConnection(MotoRequestHandler):
    """HTTP/1.0: the connection closes after each answer. With keep-alive, connections opened before
    `stop()` would go on being served by their threads, and a stopped server would not be down."""

    protocol_version = "HTTP/1.0"

    def log_request(self, *args: object, **kwargs: object) -> None:
        """A line per request on stderr would drown the tests' output."""


class S3Server:
    def __init__(self, port: int | None = None):
        self.port = port or 0  # 0: the first start binds a port the kernel picks (no window for a race)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=_OneRequestPerConnection)
        self.port = self._server.server_port  # kept by a restart: clients come back to the same address
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-server", daemon=True)
        self._thread.start()
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def new_bucket(self) -> str:
        name = f"kmrl-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def credentials(self, folder: Path) -> tuple[Path, Path]:
        """The access key and secret in files, as `blobs.access_key_file` / `secret_key_file` read them."""
        folder.mkdir(parents=True, exist_ok=True)
        access, secret = folder / "s3-access-key", folder / "s3-secret-key"
        access.write_text(ACCESS_KEY + "\n")
        secret.write_text(SECRET_KEY + "\n")
        return access, secret

    def blobs_yaml(self, bucket: str, folder: Path, prefix: str = "kmrl") -> str:
        """The `blobs:` section of a sync.yaml storing into `bucket` on this server."""
        access, secret = self.credentials(folder)
        return (f"blobs:\n  url: s3://{bucket}/{prefix}\n  endpoint_url: {self.endpoint_url}\n"
                f"  region: {REGION}\n  access_key_file: {access}\n  secret_key_file: {secret}\n")

    def keys(self, bucket: str) -> dict[str, bytes]:
        """Every object in the bucket: key -> content."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
        return found
