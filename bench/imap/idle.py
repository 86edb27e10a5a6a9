#!/usr/bin/env python3
"""idle.py [--mails M] [--rounds R] -- the daemon's IMAP IDLE path, timed (issue 16).

Runs `kmrl-sync run` with the bench connector in IDLE mode (`idle: true` on INBOX) against the
harness's Dovecot and the bench's Redis (the project `run.sh` made: $KMRL_BENCH_DIR), waits until
its watcher idles and its first scheduled run has finished, then, per round:

1. delivers one mail into the Maildir (as a delivery agent does: tmp/, then a rename into new/)
   and times delivery -> the mail's work item on the Redis queue (`kmrl-idle-1`, goal <= 1 s);
2. delivers M mails (populate.py's mails, all written to tmp/ first, then renamed into new/ within
   a few milliseconds) and times the server's IDLE announcement (`* N EXISTS`, seen by a second
   IMAP client idling on INBOX) -> the work item of the M-th mail on the queue (`kmrl-idle-M`,
   goal >= 1.0x mbsync's initial-sync msgs/s).

Dovecot 2.3 holds IDLE news back for a fixed 0.5 s, which is why the M mails are timed from the
announcement and not from the delivery. Queue pushes are seen through Redis keyspace
notifications (no polling). Results are appended to $IMAPBENCH_DIR/results.tsv like the other
phases (wall = the latency; rss = the daemon's peak RSS so far).
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

D = os.environ.get("IMAPBENCH_DIR", "/tmp/imapbench")
PORT = int(os.environ.get("IMAPBENCH_PORT", "10143"))
USER = os.environ.get("IMAPBENCH_USER", "bench")
MAILDIR = f"{D}/mail/{USER}/Maildir"
K = Path(os.environ["KMRL_BENCH_DIR"])
PY = os.environ.get("KMRL_BENCH_PY", sys.executable)
REDIS_PORT = int(os.environ["KMRL_BENCH_REDIS_PORT"])
REF = Path(os.environ.get("BENCH_REF", Path(__file__).resolve().parents[2].parent / "shared/bench-ref/imap"))
QUEUE = "document_processing"
DEADLINE = 60.0


def _populate_module():
    spec = importlib.util.spec_from_file_location("populate", REF / "populate.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


class Deliverer:
    """populate.py's mails, delivered one file at a time (tmp/ -> new/) with the moment of each."""

    def __init__(self) -> None:
        self.populate = _populate_module()
        self.st = os.stat(MAILDIR)
        have = len(os.listdir(f"{MAILDIR}/cur")) + len(os.listdir(f"{MAILDIR}/new"))
        self.rng = random.Random(7_000_003 + have)
        self.pool = self.populate.text_pool(self.rng)
        self.n = have

    def make(self, count: int) -> list[bytes]:
        now = time.time()
        return [self.populate.message(self.rng, self.pool, self.n + i, now, 86400)[0] for i in range(count)]

    def deliver(self, mails: list[bytes]) -> float:
        """Write the mails into tmp/, then rename them all into new/ (a few ms for 500, so that the
        server's one announcement covers them all); the moment the last one was renamed."""
        host, pid = socket.gethostname(), os.getpid()
        names = []
        for data in mails:
            base = f"{int(time.time())}.M{self.n}P{pid}Q{self.n}.{host},S={len(data)},W={len(data) + data.count(10)}"
            with open(f"{MAILDIR}/tmp/{base}", "wb") as fh:
                fh.write(data)
            os.chown(f"{MAILDIR}/tmp/{base}", self.st.st_uid, self.st.st_gid)
            names.append(base)
            self.n += 1
        for base in names:
            os.rename(f"{MAILDIR}/tmp/{base}", f"{MAILDIR}/new/{base}")
        return time.monotonic()


class Observer(threading.Thread):
    """A second IMAP client idling on INBOX: when Dovecot announces new mail (`* N EXISTS`)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", PORT))
        self.file = self.sock.makefile("rb")
        self.file.readline()
        for tag, command in ((b"a", b"LOGIN %s %s" % (USER.encode(), USER.encode())), (b"b", b"SELECT INBOX")):
            self.sock.sendall(tag + b" " + command + b"\r\n")
            while not self.file.readline().startswith(tag + b" "):
                pass
        self.sock.sendall(b"c IDLE\r\n")
        assert self.file.readline().startswith(b"+")
        self.announced: list[tuple[float, int]] = []
        self.event = threading.Event()

    def run(self) -> None:
        while True:
            line = self.file.readline()
            if not line:
                return
            parts = line.split()
            if len(parts) == 3 and parts[0] == b"*" and parts[2].upper() == b"EXISTS":
                self.announced.append((time.monotonic(), int(parts[1])))
                self.event.set()

    def since(self, index: int) -> tuple[float, int] | None:
        return self.announced[index] if len(self.announced) > index else None

    def close(self) -> None:
        try:
            self.sock.sendall(b"DONE\r\nd LOGOUT\r\n")
        finally:
            self.sock.close()


class QueueWatch(threading.Thread):
    """(moment, queue length) at every push onto the queue, from Redis keyspace notifications."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(daemon=True)
        self.client = client
        client.config_set("notify-keyspace-events", "Kl")
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(f"__keyspace@0__:{QUEUE}")
        self.pubsub.get_message(timeout=5)  # the subscription's confirmation
        self.pushes: list[tuple[float, int]] = []
        self.lock = threading.Condition()

    def run(self) -> None:
        for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            moment = time.monotonic()
            length = self.client.llen(QUEUE)
            with self.lock:
                self.pushes.append((moment, length))
                self.lock.notify_all()

    def wait_length(self, length: int, timeout: float = DEADLINE) -> float:
        """The moment the queue first held `length` items."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for moment, seen in self.pushes:
                    if seen >= length:
                        return moment
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"the queue never reached {length} items")
                self.lock.wait(left)


def mail_positions(client: redis.Redis, before: int, after: int) -> list[int]:
    """1-based positions (in push order, counted from `before`) of the mail documents among the
    work items pushed between queue lengths `before` and `after` (LPUSH: newest first)."""
    new = client.lrange(QUEUE, 0, after - before - 1)[::-1]
    out = []
    for position, raw in enumerate(new, 1):
        doc = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
        if "/att/" not in doc:
            out.append(position)
    return out


def daemon_project() -> Path:
    """A copy of the bench project whose connector idles on INBOX and whose first run is at once."""
    root = K / "idle"
    (root / "connectors").mkdir(parents=True, exist_ok=True)
    config = (K / "sync.yaml").read_text().replace("connectors_dir: connectors", f"connectors_dir: {root}/connectors")
    config = config.replace("log: {level: warning, format: json}", "log: {level: info, format: json}")
    (root / "sync.yaml").write_text(config + "daemon: {startup_jitter: 0}\n")
    connector = (K / "connectors" / "bench.yaml").read_text()
    (root / "connectors" / "bench.yaml").write_text(connector.rstrip("\n") + "\n  idle: true\n")
    return root


def wait_for_line(path: Path, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"the daemon never logged {text!r}; see {path}")


def settle(path: Path) -> None:
    """Wait until every run the daemon started has ended and none started for a second."""
    deadline = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        state = (text.count('"sync started"'), text.count('"sync finished"') + text.count('"sync failed"'))
        if state == last and state[0] == state[1]:
            return
        last = state
        time.sleep(1.0)
    raise SystemExit(f"the daemon kept syncing; see {path}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def record(label: str, msgs: int, seconds: float, rss: float) -> None:
    results = Path(D) / "results.tsv"
    if not results.exists() or not results.stat().st_size:
        results.write_text("when\tlabel\tmsgs\twall_s\trss_mb\tmsgs_per_s\tuser_s\tsys_s\tserver_cpu_s\trc\n")
    rate = msgs / seconds if seconds > 0 and msgs > 1 else 0
    with results.open("a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\t{label}\t{msgs}\t{seconds:.3f}\t{rss:.1f}\t{rate:.0f}"
                 "\t\t\t\t0\n")
    print(f"{label:<20} msgs={msgs:<6d} wall={seconds:7.3f}s rss={rss:6.1f}MB rate={rate:6.0f} msg/s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mails", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--label", default="kmrl-idle", help="results.tsv label prefix")
    args = parser.parse_args()
    client = redis.Redis(port=REDIS_PORT)
    root = daemon_project()
    log = root / "daemon.log"
    log.unlink(missing_ok=True)
    deliverer = Deliverer()
    with log.open("wb") as out:
        daemon = subprocess.Popen([PY, "-m", "kmrl_sync", "run", "-c", str(root / "sync.yaml")], cwd=root,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_line(log, '"idle watch started"')
        wait_for_line(log, '"sync finished"')  # the first scheduled run (nothing new) is over
        settle(log)
        watch = QueueWatch(client)
        watch.start()
        for _round in range(args.rounds):
            # one mail: delivery -> its work item on the queue
            observer = Observer()
            observer.start()
            mail = deliverer.make(1)
            before = client.llen(QUEUE)
            delivered = deliverer.deliver(mail)
            queued = watch.wait_length(before + 1)
            observer.event.wait(DEADLINE)
            announced = observer.since(0)
            record(f"{args.label}-1", 1, queued - delivered, peak_rss_mb(daemon.pid))
            if announced is not None:
                print(f"  (delivery -> IDLE announcement {announced[0] - delivered:.3f} s, "
                      f"announcement -> queued {queued - announced[0]:.3f} s)")
            settle(log)
            observer.close()
            # M mails: the server's announcement -> the M-th mail's work item on the queue
            observer = Observer()
            observer.start()
            mails = deliverer.make(args.mails)
            before = client.llen(QUEUE)
            delivered = deliverer.deliver(mails)
            deadline = time.monotonic() + DEADLINE
            positions: list[int] = []
            while len(positions) < args.mails and time.monotonic() < deadline:
                watch.wait_length(before + args.mails)
                time.sleep(0.05)
                positions = mail_positions(client, before, client.llen(QUEUE))
            if len(positions) < args.mails:
                raise SystemExit(f"only {len(positions)} of {args.mails} mails were queued")
            last = watch.wait_length(before + positions[args.mails - 1])
            announced = observer.since(0)
            assert announced is not None, "the observer saw no EXISTS"
            record(f"{args.label}-{args.mails}", args.mails, last - announced[0], peak_rss_mb(daemon.pid))
            print(f"  (last of {args.mails} delivered {announced[0] - delivered:+.3f} s before the first "
                  f"announcement, {len(observer.announced)} announcement(s); the first item queued "
                  f"{watch.wait_length(before + 1) - announced[0]:.3f} s after it)")
            observer.close()
            settle(log)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    return 0 if daemon.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
