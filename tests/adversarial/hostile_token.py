"""A hostile OAuth2 token endpoint on loopback: refuses every client and quotes what it was sent.

Entra ID's real answers never contain the client secret, but a proxy or a misconfigured identity
provider may put the request it refused into its error description. The SharePoint connector
turns that description into its error message, so the client secret (URL-encoded, as the form
carried it, and decoded) travels the same paths as the IMAP password does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        """The authority metadata MSAL reads first: endpoints named https on the host asked, as Entra does."""
        tenant = self.path.strip("/").split("/")[0]
        base = f"https://{self.headers.get('Host')}/{tenant}"
        self._send(200, {"token_endpoint": f"{base}/oauth2/v2.0/token",
                         "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                         "issuer": f"{base}/v2.0"})

    def _send(self, status: int, body: dict) -> None:
        answer = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        secret = (parse_qs(body).get("client_secret") or [""])[0]
        self.server.requests.append(body)
        self._send(401, {
            "error": "invalid_client",
            "error_description": f"AADSTS7000215: Invalid client secret provided. Request: {body}; "
                                 f"secret was {secret}; {self.server.leak}",
        })

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[str]
    leak: str


@contextmanager
def hostile_token_endpoint(leak: str = "") -> Iterator[tuple[str, list[str]]]:
    """Serve for the block: yields (authority URL, the request bodies received)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.requests, server.leak = [], leak
    thread = threading.Thread(target=server.serve_forever, name="hostile-token", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
