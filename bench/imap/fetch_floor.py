#!/usr/bin/env python3
"""fetch_floor.py N -- the least a Python process built on imapclient spends on N new mails.

Interpreter start, `import imapclient`, LOGIN, EXAMINE and FETCH of the newest N mails (BODY[] and
INTERNALDATE, in kmrl-sync's 125-mail chunks), with the two imaplib settings kmrl-sync makes (no
debug formatting of each literal, 1 MiB reads). The answers are read by imaplib, as kmrl-sync's
fetch reads them, and not parsed any further (kmrl-sync then spends ~5 µs a mail in fetched.py).
Nothing is stored or committed: the difference between this and `kmrl-sync sync` is kmrl-sync's
own start-up and work, not the IMAP exchange. Server and login come from the reference harness's
environment (common.sh).
"""

import os
import sys

import imapclient

count = int(sys.argv[1])
client = imapclient.IMAPClient("127.0.0.1", port=int(os.environ["IMAPBENCH_PORT"]), ssl=False)
client._imap.debug = 0  # as kmrl_sync.connectors.imap.client.quiet_imaplib
client.normalise_times = False
user = os.environ["IMAPBENCH_USER"]
client.login(user, user)
client._imap.file = client._imap.sock.makefile("rb", buffering=1 << 20)  # as read_in_large_gulps
uidnext = int(client.select_folder("INBOX", readonly=True)[b"UIDNEXT"])
uids = list(range(max(1, uidnext - count), uidnext))
fetched = 0
for i in range(0, len(uids), 125):  # as kmrl_sync.connectors.imap.client._fetch_mails
    tag = client._imap._command("UID", "FETCH", ",".join(map(str, uids[i:i + 125])), "(BODY.PEEK[] INTERNALDATE)")
    typ, data = client._imap._command_complete("FETCH", tag)
    fetched += sum(isinstance(item, tuple) for item in client._imap._untagged_response(typ, data, "FETCH")[1])
client.logout()
print(f"fetched {fetched} mails")
