"""A tiny hostile IMAP server on loopback: the server behaviours Dovecot does not have.

Dovecot never echoes a client's command and never hangs up in the middle of LOGIN, but servers
in the wild do both. This speaks just enough IMAP4rev1 for a client to get to its login
(greeting, CAPABILITY, NOOP, LOGIN with quoted strings or literals, AUTHENTICATE PLAIN, LOGOUT)
and then misbehaves as told:

- `echo`: every refusal repeats the client's command line, password included, the way some
  servers put "what you sent" into their error text (`a001 NO [AUTHENTICATIONFAILED] LOGIN ...`);
- `no`: a plain refusal, without the command;
- `drop`: the first `drops` logins are answered by closing the connection (after `drop_with`,
  e.g. a BYE), later ones as `then`.

It counts what it saw (`logins`, `connections`) so tests can tell a retry from a refusal.
"""

from __future__ import annotations

import base64
import re
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

HOST = "127.0.0.1"
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r\n$")


@dataclass
class Behaviour:
    mode: str = "echo"  # echo | no | drop
    drops: int = 1  # with mode "drop": how many logins are dropped before acting as `then`
    then: str = "no"
    drop_with: bytes = b""  # said before hanging up (e.g. b"* BYE shutting down"); nothing by default
    auth_plain: bool = True  # advertise AUTH=PLAIN
    leak: bytes = b""  # more text for every refusal (tests put other secrets here, in any encoding)
    logins: list[bytes] = field(default_factory=list)  # every LOGIN / AUTHENTICATE line received
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def capabilities(self) -> bytes:
        return b"IMAP4rev1" + (b" AUTH=PLAIN" if self.auth_plain else b"")


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def send(self, line: bytes) -> None:
        self.wfile.write(line + b"\r\n")
        self.wfile.flush()

    def read_command(self) -> bytes | None:
        """One command with its literals inlined (`{n}` answered with a continuation)."""
        line = self.rfile.readline()
        if not line:
            return None
        parts = [line]
        while (match := _LITERAL.search(parts[-1])) is not None:
            if not match.group(2):
                self.send(b"+ go ahead")
            parts.append(self.rfile.read(int(match.group(1))))
            parts.append(self.rfile.readline())
        return b"".join(parts).rstrip(b"\r\n")

    def handle(self) -> None:
        behaviour = self.server.behaviour
        with behaviour.lock:
            behaviour.connections += 1
        self.send(b"* OK [CAPABILITY " + behaviour.capabilities() + b"] hostile test server ready")
        while (command := self.read_command()) is not None:
            tag, _, rest = command.partition(b" ")
            verb = rest.split(b" ", 1)[0].upper()
            if verb == b"CAPABILITY":
                self.send(b"* CAPABILITY " + behaviour.capabilities())
                self.send(tag + b" OK CAPABILITY completed")
            elif verb == b"NOOP":
                self.send(tag + b" OK NOOP completed")
            elif verb == b"LOGOUT":
                self.send(b"* BYE logging out")
                self.send(tag + b" OK LOGOUT completed")
                return
            elif verb in (b"LOGIN", b"AUTHENTICATE"):
                if verb == b"AUTHENTICATE":
                    self.send(b"+ ")
                    response = self.rfile.readline().rstrip(b"\r\n")
                    command = command + b" " + response
                if not self.login(tag, command):
                    return
            else:
                self.send(tag + b" BAD not in this server: " + command[:200])

    def login(self, tag: bytes, command: bytes) -> bool:
        """Answer a login; False when the connection is to be dropped."""
        behaviour = self.server.behaviour
        with behaviour.lock:
            behaviour.logins.append(command)
            mode = behaviour.mode
            if mode == "drop":
                if len(behaviour.logins) <= behaviour.drops:
                    if behaviour.drop_with:
                        self.send(behaviour.drop_with)
                    return False
                mode = behaviour.then
        if mode == "echo":
            self.send(tag + b" NO [AUTHENTICATIONFAILED] " + command.split(b" ", 1)[1] + behaviour.leak)
        else:
            self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed." + behaviour.leak)
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    behaviour: Behaviour


@contextmanager
def hostile_imap(behaviour: Behaviour | None = None) -> Iterator[tuple[int, Behaviour]]:
    """Run the server on a free loopback port for the block: yields (port, behaviour)."""
    behaviour = behaviour or Behaviour()
    server = _Server((HOST, 0), _Handler)
    server.behaviour = behaviour
    thread = threading.Thread(target=server.serve_forever, name="hostile-imap", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def plain_response(user: str, password: str) -> bytes:
    """What an `AUTHENTICATE PLAIN` client sends (RFC 4616), as the server sees it."""
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
