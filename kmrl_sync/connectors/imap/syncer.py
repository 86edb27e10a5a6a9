"""One sync run over the configured folders: UID-exact, batch-committed, resumable at any point.

Per folder, in order:
1. STATUS (one round trip): same UIDVALIDITY, same UIDNEXT and as many messages as UIDs we hold
   => nothing new and nothing expunged; skip the folder without selecting it.
2. EXAMINE, then `UID SEARCH UID last+1:*` (dropping the `N:*` echo of the last UID when nothing
   is new). When held + new != EXISTS, something was expunged (or an earlier fetch failed):
   `UID SEARCH ALL` and a diff against the UID map find both.
3. Fetch new UIDs ascending, in chunks bounded by count and bytes; every mail updates the folder
   state, the UID map and the document's locations; batches are yielded as they fill, each carrying
   the folder state that is true once it is committed.
A UIDVALIDITY change starts the folder's new incarnation from UID 1 and then purges the old UID map;
mails already sent are recognised by Message-ID (their document still has a location) and not
queued again. Documents that lost their last location become orphans, deleted only at the end of a
complete run (a move between folders is never a delete).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from kmrl_sync.connectors.imap.blobwriter import BlobWriter
from kmrl_sync.connectors.imap.client import CommandAborted, FolderMissing, ImapSession, UidValidityChanged
from kmrl_sync.connectors.imap.folders import (
    ATTS,
    FOLDERS,
    LOCS,
    ORPHANS,
    AuxView,
    FolderState,
    folder_id,
    location,
    split_locations,
    uid_map,
)
from kmrl_sync.connectors.imap.ids import header_hash_id, message_id_of
from kmrl_sync.connectors.imap.options import ImapOptions
from kmrl_sync.connectors.imap.pipeline import Prefetcher
from kmrl_sync.engine.connector import ConnectorContext
from kmrl_sync.engine.documents import BATCH_LIMIT, Batch, Change, Delete, Failure

AUX_LIMIT = 4000  # aux writes per batch: keeps one commit's ARGV bounded
SIZE_WINDOW = 1000  # UIDs per RFC822.SIZE request used to plan the fetch chunks
CHUNK_BYTES = 4 << 20  # bytes of mail per FETCH (memory bound), at least one mail
CHUNK_COMMIT = 100  # documents that make a fetched chunk worth its own commit


def in_utc(moment: Any) -> datetime | None:
    """A fetched INTERNALDATE in UTC (a zone-less one taken as UTC).

    Why convert here: imapclient's own offset class cannot be pickled, and mails may go to worker
    processes (makers.py).
    """
    if not isinstance(moment, datetime):
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class MailboxSync:
    def __init__(self, context: ConnectorContext, options: ImapOptions, session: ImapSession, full: bool):
        self.context = context
        self.options = options
        self.session = session
        self.full = full
        self.log = context.log
        self.aux = AuxView(context.state, lambda: context.wait_committed())
        self.changes: list[Change] = []
        self.failures: list[Failure] = []
        self.unchanged = 0
        self.states: dict[str, FolderState] = {}
        self.dirty: set[str] = set()
        self.incomplete = False  # a folder could not be read: do not resolve orphans this run
        self.progress_total: int | None = None
        self.writer: BlobWriter | None = None  # opened when the first folder has news
        self.maker: Any = None  # DocumentMaker while a folder's mails are being fetched
        self.processes: int | None = None  # worker processes for documents; None = by size and CPUs

    # ------------------------------------------------------------------ batching

    def _full_batch(self, chunk_done: bool = False) -> bool:
        """A batch is emitted when full, and at the end of a fetched chunk once it is worth a commit.

        Committing chunk by chunk lets each commit (sync, Lua) run while the next chunk is parsed;
        with one batch per BATCH_LIMIT, a 500-mail sync committed everything after the last mail.
        """
        pending = self.maker.pending_jobs if self.maker is not None else 0
        limit = CHUNK_COMMIT if chunk_done else BATCH_LIMIT - 64
        return len(self.changes) + pending >= limit or len(self.aux) >= AUX_LIMIT

    def _emit(self) -> Batch:
        cursor = self._cursor() if self.dirty else None
        for name in self.dirty:
            if name in self.states:
                self.aux.set(FOLDERS, name, self.states[name].dumps())
        self.dirty.clear()
        batch = Batch(changes=self.changes, aux=self.aux.writes(), failures=self.failures,
                      unchanged=self.unchanged, progress_total=self.progress_total, cursor=cursor)
        self.changes, self.failures, self.unchanged = [], [], 0
        return batch

    def _flush(self) -> Iterator[Batch]:
        """Yield what is pending; after the yield it is committed.

        Documents still being made are waited for first: a batch that records a mail's location
        (and moves the cursor past it) must carry the mail's documents, or a crash right after the
        commit would lose them. More than BATCH_LIMIT changes (a mail with hundreds of attachments)
        go first in batches of their own, without cursor or aux writes: replaying those is harmless.
        """
        if self.maker is not None:
            self._absorb(self.maker.collect())
        if self.writer is not None:
            self.writer.wait()
        while len(self.changes) > BATCH_LIMIT:
            head, self.changes = self.changes[:BATCH_LIMIT], self.changes[BATCH_LIMIT:]
            yield Batch(changes=head, progress_total=self.progress_total)
        batch = self._emit()
        yield batch
        self.aux.handed_over()

    def _maybe_flush(self, chunk_done: bool = False) -> Iterator[Batch]:
        if self._full_batch(chunk_done):
            yield from self._flush()

    def _cursor(self) -> str:
        """Human-readable summary for `kmrl-sync status`; the resumable state is in aux `folders`."""
        return json.dumps({n: f"{s.uidvalidity}:{s.last_uid}" for n, s in sorted(self.states.items())},
                          separators=(",", ":"), ensure_ascii=False)

    def _touch(self, name: str) -> None:
        self.dirty.add(name)

    # ------------------------------------------------------------------ folders

    def resolve_folders(self) -> list[str]:
        wanted = self.options.folders
        if "*" not in wanted:
            return list(dict.fromkeys(wanted))
        found: list[str] = []
        for flags, name in self.session.list_folders():
            if any(f.lower() in (b"\\noselect", b"\\nonexistent") for f in flags):
                continue
            if self._excluded(name):
                continue
            found.append(name)
        extra = [f for f in wanted if f != "*" and f not in found]
        return found + extra

    def _excluded(self, name: str) -> bool:
        lowered = name.lower()
        for pattern in self.options.exclude:
            p = pattern.lower()
            if fnmatch.fnmatchcase(lowered, p) or lowered.startswith(p.rstrip("/") + "/") \
                    or lowered.startswith(p.rstrip(".") + "."):
                return True
        return False

    def run(self) -> Iterator[Batch]:
        try:
            yield from self._run()
        finally:
            if self.writer is not None:
                self.writer.close()

    def _run(self) -> Iterator[Batch]:
        for name, text in self.aux.scan(FOLDERS):
            st = FolderState.loads(text)
            if st is not None:
                self.states[name] = st
        folders = self.resolve_folders()
        for name in folders:
            if self.context.should_stop():
                break
            yield from self._folder(name)
        stopped = self.context.should_stop()
        if not stopped:
            for name in [n for n in self.states if n not in folders]:
                yield from self._forget_folder(name)
        if self.changes or self.failures or len(self.aux) or self.dirty:
            yield from self._flush()
        if not stopped and not self.incomplete and not self.context.should_stop():
            yield from self._resolve_orphans()
        if self.changes or self.failures or len(self.aux) or self.unchanged:
            yield from self._flush()

    def _folder(self, name: str) -> Iterator[Batch]:
        for _attempt in range(3):
            try:
                yield from self._folder_once(name)
                return
            except UidValidityChanged:
                self.log.warning("UIDVALIDITY changed during the sync; rescanning", folder=name)
                self.session.selected = None
        self.incomplete = True
        self.failures.append(Failure(None, f"folder {name}: UIDVALIDITY keeps changing; skipped this run"))

    def _folder_once(self, name: str) -> Iterator[Batch]:
        st = self.states.get(name)
        try:
            status = self.session.status(name)
        except FolderMissing as exc:
            self.incomplete = True
            self.failures.append(Failure(None, f"folder {name} cannot be read: {exc}"))
            return
        if (st is not None and not self.full and not st.old and status.get("uidvalidity") == st.uidvalidity
                and status.get("uidnext") == st.uidnext and status.get("messages") == st.count):
            self.unchanged += st.count
            return
        if self.writer is None:  # mail may be coming
            self.writer = BlobWriter(self.context.blobs)
        info = self.session.select(name)
        validity = info["uidvalidity"]
        if st is None:
            st = FolderState(fid=folder_id(name), uidvalidity=validity)
        elif st.uidvalidity != validity:
            self.log.warning("UIDVALIDITY changed: rescanning the folder; mails already sent are kept",
                             folder=name, old=st.uidvalidity, new=validity)
            st = FolderState(fid=st.fid, uidvalidity=validity, old=[*st.old, st.uidvalidity])
        self.states[name] = st
        self._touch(name)
        new = [u for u in self.session.search_uids(["UID", f"{st.last_uid + 1}:*"]) if u > st.last_uid]
        retry: list[int] = []
        if self.full or st.count + len(new) != info["messages"]:
            all_uids = self.session.search_uids(["ALL"])
            removed_retry = yield from self._reconcile(name, st, all_uids)
            retry = removed_retry
            new = [u for u in all_uids if u > st.last_uid]
        self.progress_total = (self.progress_total or 0) + len(retry) + len(new)
        yield from self._fetch(name, st, retry, advance=False)
        yield from self._fetch(name, st, new, advance=True)
        if self.context.should_stop():
            return  # the committed cursor says how far we got; UIDNEXT is recorded once complete
        st.uidnext = max(info["uidnext"], st.last_uid + 1)
        st.highestmodseq = info.get("highestmodseq", 0)
        self._touch(name)
        for old in list(st.old):
            yield from self._purge(name, st.fid, old)
            st.old.remove(old)
            self._touch(name)

    def _reconcile(self, name: str, st: FolderState, all_uids: list[int]) -> Iterator[Batch]:
        """Drop UIDs that are gone from the server; return held-back UIDs to (re)fetch."""
        server = set(all_uids)
        key = uid_map(st.fid, st.uidvalidity)
        held: set[int] = set()
        for uid_text, doc in self.aux.scan(key):
            uid = int(uid_text)
            if uid in server:
                held.add(uid)
                continue
            self.aux.delete(key, uid_text)
            st.count -= 1
            self._remove_location(doc, location(st.fid, st.uidvalidity, uid))
            self._touch(name)
            yield from self._maybe_flush()
        st.count = len(held)  # authoritative after a full scan
        self._touch(name)
        if self.full:
            return [u for u in all_uids if u <= st.last_uid]
        return [u for u in all_uids if u <= st.last_uid and u not in held]

    # ------------------------------------------------------------------ fetching

    def _plan(self, uids: list[int]) -> Iterator[list[int]]:
        """Chunks of UIDs: at most batch_size mails and CHUNK_BYTES (at least one mail) each.

        The first chunk is a quarter of that: nothing can be parsed before it has arrived, and
        the later chunks arrive while earlier ones are parsed.
        """
        limit = CHUNK_BYTES // 4
        for start in range(0, len(uids), SIZE_WINDOW):
            window = uids[start:start + SIZE_WINDOW]
            try:
                sizes = self.session.fetch_sizes(window)
            except CommandAborted:  # a mail the server cannot read, whose size it must read too
                # sizes unknown: chunks by count alone; the fetch then finds that mail (_fetch_chunk)
                sizes = {uid: {} for uid in window}
            chunk: list[int] = []
            total = 0
            for uid in window:
                if uid not in sizes:
                    continue  # expunged meanwhile
                size = int(sizes[uid].get(b"RFC822.SIZE", 0))
                if chunk and (len(chunk) >= self.options.batch_size or total + size > limit):
                    yield chunk
                    chunk, total, limit = [], 0, CHUNK_BYTES
                chunk.append(uid)
                total += size
            if chunk:
                yield chunk
                limit = CHUNK_BYTES

    def _fetch_chunk(self, name: str, chunk: list[int]) -> Iterator[tuple[int, bytes | None, Any, str]]:
        """(uid, raw, internaldate, error) per UID.

        A chunk the server refuses (NO), or drops the connection over on a fresh connection too
        (Dovecot's answer to a mail file it cannot read), is fetched again mail by mail: only the
        mail it cannot serve fails, the rest of the folder goes on, and the next run tries that
        mail again (it is not in the UID map, see `_folder_once`).
        """
        try:
            data = self.session.fetch_mails(chunk)
        except IMAPClientAbortError:
            raise
        except (IMAPClientError, CommandAborted) as exc:
            if len(chunk) == 1:
                what = "FETCH refused" if isinstance(exc, IMAPClientError) else \
                    "the server closed the connection on fetching it, twice"
                yield chunk[0], None, None, f"{what}: {exc}"
                return
            for uid in chunk:
                yield from self._fetch_chunk(name, [uid])
            return
        for uid in chunk:
            item = data.get(uid)
            if item is None:
                continue  # expunged since the search: nothing to send
            raw = item.get(b"BODY[]")
            if raw is None:
                yield uid, None, None, "server returned no body"
                continue
            yield uid, bytes(raw), in_utc(item.get(b"INTERNALDATE")), ""

    def _fetch(self, name: str, st: FolderState, uids: list[int], *, advance: bool) -> Iterator[Batch]:
        if not uids:
            return
        from kmrl_sync.connectors.imap.makers import POOL_THRESHOLD, DocumentMaker  # only when mail arrives

        assert self.writer is not None, "opened before the folder was selected"
        self.maker = DocumentMaker(
            self.context.blobs, self.writer, attachments=self.options.attachments,
            max_bytes=self.options.max_attachment_bytes,
            processes=self.processes if self.processes is not None
            else DocumentMaker.default_processes() if len(uids) >= POOL_THRESHOLD else 0)

        def produce() -> Iterator[tuple[list[int], list[tuple[int, bytes | None, Any, str]]]]:
            for chunk in self._plan(uids):
                if self.context.should_stop():
                    return
                yield chunk, list(self._fetch_chunk(name, chunk))

        try:
            for chunk, fetched in Prefetcher(produce):
                if self.context.should_stop():
                    break
                ids = {uid: (message_id_of(raw) if raw is not None else None) for uid, raw, _d, _e in fetched}
                known = [i for i in ids.values() if i]
                self.aux.prefetch(LOCS, known)
                self.aux.prefetch(ATTS, known)
                jobs: list[Any] = []
                for uid, raw, internal, error in fetched:
                    if raw is None:
                        self.failures.append(Failure(f"{name}/UID {uid}", f"cannot fetch mail: {error}"))
                    else:
                        job = self._mail(name, st, uid, raw, ids[uid], internal)
                        if job is not None:
                            jobs.append(job)
                    if advance and uid > st.last_uid:
                        st.last_uid = uid
                if advance:
                    st.last_uid = max(st.last_uid, chunk[-1])
                self._touch(name)
                self.maker.submit(jobs)
                self._absorb(self.maker.collect(block=False))
                yield from self._maybe_flush(chunk_done=True)
            self._absorb(self.maker.collect())
        finally:
            self.maker.close()
            self.maker = None

    def _mail(self, name: str, st: FolderState, uid: int, raw: bytes, message_id: str | None,
              internal: datetime | None) -> Any:
        """Record where the mail is; return a job when it must become a document (None: known)."""
        here = location(st.fid, st.uidvalidity, uid)
        same_folder = f"{st.fid}:{st.uidvalidity}:"
        doc = message_id or header_hash_id(raw)
        locs = split_locations(self.aux.get(LOCS, doc))
        if message_id and any(loc.startswith(same_folder) and loc != here for loc in locs):
            doc = header_hash_id(raw)  # Message-ID duplicated in this folder: a different mail
            locs = split_locations(self.aux.get(LOCS, doc))
        others = [loc for loc in locs if loc != here]
        if here not in locs:
            self.aux.set(LOCS, doc, " ".join([*locs, here]))
            self.aux.set(uid_map(st.fid, st.uidvalidity), str(uid), doc)
            st.count += 1
        if others and not self.full:
            self.unchanged += 1  # already a document (moved, copied, or a renumbered folder)
            return None
        from kmrl_sync.connectors.imap.mails import MailSource
        from kmrl_sync.connectors.imap.makers import Job

        source = MailSource(self.context.name, self.options.username, self.options.host,
                            self.options.effective_port, name, st.uidvalidity, uid)
        old_atts = json.loads(self.aux.get(ATTS, doc) or "[]")
        return Job(raw, doc, message_id if doc == message_id else None, source, internal, context=old_atts)

    def _absorb(self, done: list[Any]) -> None:
        """Add finished documents to the batch, and record (or drop) the mails' attachment lists."""
        for job, (upserts, failures) in done:
            self.changes.extend(upserts)
            self.failures.extend(failures)
            new_atts = [u.native_id for u in upserts[1:]]
            old_atts: list[str] = job.context
            for stale in [a for a in old_atts if a not in new_atts]:
                self.changes.append(Delete(stale))
            if new_atts:
                self.aux.set(ATTS, job.doc_id, json.dumps(new_atts, ensure_ascii=False))
            elif old_atts:
                self.aux.delete(ATTS, job.doc_id)

    # ------------------------------------------------------------------ removals

    def _remove_location(self, doc: str, loc: str) -> None:
        locs = split_locations(self.aux.get(LOCS, doc))
        if loc not in locs:
            return
        locs.remove(loc)
        if locs:
            self.aux.set(LOCS, doc, " ".join(locs))
        else:
            self.aux.delete(LOCS, doc)
            self.aux.set(ORPHANS, doc, "1")

    def _purge(self, name: str, fid: str, uidvalidity: int) -> Iterator[Batch]:
        """Forget one incarnation of a folder: its locations go, its UID map is dropped."""
        key = uid_map(fid, uidvalidity)
        for uid_text, doc in self.aux.scan(key):
            self._remove_location(doc, location(fid, uidvalidity, int(uid_text)))
            self.aux.delete(key, uid_text)
            yield from self._maybe_flush()
        self.aux.drop(key)

    def _forget_folder(self, name: str) -> Iterator[Batch]:
        """A folder no longer synced (removed from the config, or gone from the server's list)."""
        st = self.states[name]
        self.log.info("folder no longer synced; its mails count as removed from it", folder=name)
        for validity in [*st.old, st.uidvalidity]:
            yield from self._purge(name, st.fid, validity)
        del self.states[name]
        self.dirty.discard(name)
        self.dirty.add("")  # make the batch carry the updated cursor summary
        self.aux.delete(FOLDERS, name)
        yield from self._flush()

    def _resolve_orphans(self) -> Iterator[Batch]:
        page: list[str] = []
        for doc, _ in self.aux.scan(ORPHANS):
            page.append(doc)
            if len(page) >= 200:
                yield from self._orphan_page(page)
                page = []
        if page:
            yield from self._orphan_page(page)

    def _orphan_page(self, docs: list[str]) -> Iterator[Batch]:
        self.aux.prefetch(LOCS, docs)
        self.aux.prefetch(ATTS, docs)
        for doc in docs:
            self.aux.delete(ORPHANS, doc)
            if split_locations(self.aux.get(LOCS, doc)):
                continue  # it reappeared somewhere (moved): not a deletion
            if not self.options.propagate_deletes:
                continue
            for att in json.loads(self.aux.get(ATTS, doc) or "[]"):
                self.changes.append(Delete(att))
            self.aux.delete(ATTS, doc)
            self.changes.append(Delete(doc))
            yield from self._maybe_flush()
