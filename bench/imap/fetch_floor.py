#!/usr/bin/env python3
"""fetch_floor.py N -- the least a Python process built on imapclient spends on N new mails.

Interpreter start, `import imapclient`, LOGIN, EXAMINE and FETCH of the newest N mails (BODY[] and
INTERNALDATE, in kmrl-sync's 125-mail chunks) through `IMAPClient.fetch`, with imaplib's debug
formatting turned off as kmrl-sync does (imapclient_compat.py). Nothing is parsed, stored or
committed: the difference between this and `kmrl-sync sync` is kmrl-sync's own start-up and work,
not the IMAP exchange. Server and login come from the reference harness's
environment (common.sh).
"""

import os
import sys

import imapclient

from kmrl_sync.connectors.imap.imapclient_compat import quiet_imaplib

count = int(sys.argv[1])
client = imapclient.IMAPClient("127.0.0.1", port=int(os.environ["IMAPBENCH_PORT"]), ssl=False)
quiet_imaplib(client)
client.normalise_times = False
user = os.environ["IMAPBENCH_USER"]
client.login(user, user)
uidnext = int(client.select_folder("INBOX", readonly=True)[b"UIDNEXT"])
uids = list(range(max(1, uidnext - count), uidnext))
fetched = 0
for i in range(0, len(uids), 125):  # as kmrl_sync.connectors.imap.client.ImapSession.fetch_mails
    fetched += len(client.fetch(uids[i:i + 125], ["BODY.PEEK[]", "INTERNALDATE"]))
client.logout()
print(f"fetched {fetched} mails")
