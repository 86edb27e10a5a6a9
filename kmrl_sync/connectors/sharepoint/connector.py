"""SharePoint document libraries over Microsoft Graph `driveItem: delta`.

One run: resolve site and drive once (their ids live in the cursor), follow delta pages verbatim,
commit per page (the batch holding a page's last change carries the page's nextLink; the final one
the deltaLink), then resolve orphans, retry failed downloads and, after a full enumeration, sweep
what was not seen. A dead link (410) restarts a full enumeration whose sweep applies deletions.
The next page is requested in the background while the current one is applied (its link is known
from the current page; nothing about it is applied or committed earlier), so the server's page
time overlaps our downloads and commits.
See ref/graph-delta.md for the protocol and passes.py for the crash-safety argument.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from kmrl_sync.config.globs import PathFilter
from kmrl_sync.engine.connector import Connector, ConnectorError
from kmrl_sync.engine.documents import Batch
from kmrl_sync.engine.keys import ratelimit_key

from .auth import make_token_provider
from .cursor import Cursor, new_generation
from .delta import Page, fetch_page, initial_url
from .download import Downloader
from .http import USER_AGENT, GraphError, GraphHttp, ResyncRequired, StopRequested
from .options import SharePointOptions
from .passes import Packer, Passes
from .plan import Planner
from .ratelimit import SharedRateLimiter
from .reads import CommittedReads
from .tree import FolderTree

MAX_RESYNCS = 3  # 410 on a fresh full enumeration this often in one run = something is broken
MAX_REPEATS = 5  # the same nextLink served this often in a row = a looping server


class SharePointConnector(Connector):
    Options = SharePointOptions
    description = "SharePoint / OneDrive document libraries via Microsoft Graph delta (app-only auth)"
    pipelined_commits = True  # every read of its state waits for the batches in flight (reads.py)

    options: SharePointOptions

    def __init__(self, context: Any):
        super().__init__(context)
        self.filter = PathFilter(self.options.include, self.options.exclude)
        self._http: GraphHttp | None = None
        self._downloader: Downloader | None = None
        self._prefetcher: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def http(self) -> GraphHttp:
        if self._http is None:
            o = self.options
            state = self.context.state
            limiter = None
            if o.max_requests_per_second:
                limiter = SharedRateLimiter(state.client, ratelimit_key(state.prefix, o.tenant_id),
                                            o.max_requests_per_second, log=self.log)
            http = GraphHttp(o.graph_url, None, timeout=o.timeout, limiter=limiter, log=self.log,
                             should_stop=self.context.should_stop, max_throttle_wait=o.max_throttle_wait,
                             pool_size=o.download_concurrency)
            http.tokens = make_token_provider(o, user_agent=USER_AGENT)
            self._http = http
        return self._http

    @property
    def downloader(self) -> Downloader:
        if self._downloader is None:
            self._downloader = Downloader(self.http, self.context.blobs, max_bytes=self.options.max_bytes,
                                          concurrency=self.options.download_concurrency, log=self.log)
        return self._downloader

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
        if self._downloader is not None:
            self._downloader.close()
        if self._http is not None:
            self._http.close()

    def scope(self) -> str:
        """Fingerprint of the options that decide what is synced; a change forces a full round."""
        o = self.options
        key = [o.site_url.casefold(), o.library or "", o.folder, o.include, o.exclude, o.max_file_mb,
               o.download_content]
        return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ discovery

    def _get(self, url: str, what: str) -> dict[str, Any]:
        try:
            return self.http.get_json(url)
        except GraphError as exc:
            hint = {403: "the app lacks permission (Sites.Read.All / Files.Read.All or a Sites.Selected grant)",
                    404: "not found, or the app cannot see it"}.get(exc.status, f"{exc.code}: {exc.message}")
            raise ConnectorError(f"cannot read {what}: HTTP {exc.status}, {hint}") from None

    def resolve(self) -> tuple[str, str, str, str]:
        """(site id, drive id, root item id, drive webUrl) for site_url + library."""
        o = self.options
        parts = urlsplit(o.site_url)
        path = parts.path.rstrip("/")
        site_ref = f"sites/{parts.hostname}:{quote(path)}" if path else f"sites/{parts.hostname}"
        site = self._get(site_ref, f"site {o.site_url}")
        site_id = site["id"]
        if o.library is None:
            drive = self._get(f"sites/{site_id}/drive?$select=id,name,webUrl", f"default library of {o.site_url}")
        else:
            drive = self._pick_library(site_id, o.library)
        root = self._get(f"drives/{drive['id']}/root?$select=id", f"root of library {drive.get('name')}")
        return site_id, drive["id"], root["id"], str(drive.get("webUrl") or "").rstrip("/")

    def _pick_library(self, site_id: str, wanted: str) -> dict[str, Any]:
        """Match by id, full webUrl, URL segment ("Shared Documents"), then display name."""
        drives: list[dict[str, Any]] = []
        url: str | None = f"sites/{site_id}/drives?$select=id,name,webUrl,driveType"
        while url:
            body = self._get(url, f"libraries of {self.options.site_url}")
            drives += [d for d in body.get("value", []) if isinstance(d, dict) and d.get("id")]
            url = body.get("@odata.nextLink")
        want = unquote(wanted).rstrip("/").casefold()
        tests = [
            lambda d: d["id"] == wanted,
            lambda d: unquote(str(d.get("webUrl") or "")).rstrip("/").casefold() == want,
            lambda d: unquote(str(d.get("webUrl") or "")).rstrip("/").rsplit("/", 1)[-1].casefold() == want,
            lambda d: str(d.get("name") or "").casefold() == want,
        ]
        for test in tests:
            found = [d for d in drives if test(d)]
            if len(found) == 1:
                return found[0]
        names = ", ".join(f"{d.get('name')} ({unquote(str(d.get('webUrl') or ''))})" for d in drives) or "none"
        raise ConnectorError(f"library {wanted!r} not found on {self.options.site_url}; available: {names}")

    def check_connection(self) -> None:
        with contextlib.suppress(StopRequested):
            self.resolve()

    # ------------------------------------------------------------------ sync

    def sync(self, cursor: str | None, *, full: bool = False) -> Iterator[Batch]:
        try:
            reads = CommittedReads(self.context)
            for batch in self._sync(cursor, full, reads):
                reads.handed_over(batch)  # may be in flight when the generator resumes
                yield batch
        except StopRequested:
            return

    def _fresh(self, scope: str) -> Cursor:
        site_id, drive_id, root_id, web_url = self.resolve()
        return Cursor(site_id, drive_id, root_id, web_url, scope, phase="full",
                      next_link=initial_url(self.options.graph_url, drive_id, self.options.page_size),
                      gen=new_generation())

    def _sync(self, text: str | None, full: bool, reads: CommittedReads) -> Iterator[Batch]:
        scope = self.scope()
        cur = None if full else Cursor.loads(text)
        if text and cur is None and not full:
            self.log.warning("stored cursor unreadable; starting a full enumeration")
        if cur is not None and cur.scope != scope:
            self.log.info("site, library, folder or filters changed; starting a full enumeration")
            cur = None
        clear_stage = cur is None
        if cur is None:
            cur = self._fresh(scope)
        elif cur.phase == "incremental" and not cur.next_link:
            cur = cur.with_(next_link=cur.delta_link)
        run_marker = uuid.uuid4().hex[:12]
        tree = FolderTree(reads, cur.root_id)
        planner = Planner(reads, tree, self.downloader, graph_url=self.options.graph_url,
                          site_id=cur.site_id, drive_id=cur.drive_id, drive_web_url=cur.drive_web_url,
                          scope_folder=self.options.folder, path_filter=self.filter,
                          max_bytes=self.options.max_bytes, gen=cur.gen, run_marker=run_marker,
                          download=self.options.download_content)
        passes = Passes(self, reads, planner, tree, self.http)
        if cur.phase in ("full", "incremental"):
            done = False
            for after, batch in self._pages(cur, passes, planner, clear_stage):
                yield batch
                if self.context.should_stop():
                    return
                done = after.next_link is None
                cur = after
            if not done:
                return
        if cur.phase == "apply":
            cur = cur.with_(phase="incremental", next_link=None)
            yield from passes.apply_stage(cur.dumps())
        packer = Packer()
        yield from packer.feed(passes.orphans())
        yield from packer.feed(passes.retries(cur.drive_id))
        if cur.phase == "finish":
            yield from packer.feed(passes.sweep())
        yield packer.final(cur.with_(phase="incremental", next_link=None).dumps())

    def _pages(self, cur: Cursor, passes: Passes, planner: Planner,
               clear_stage: bool) -> Iterator[tuple[Cursor, Batch]]:
        """Follow links from cur.next_link; yields (cursor after the page, batch) pairs."""
        link = cur.next_link
        assert link is not None
        resyncs = repeats = 0
        ahead: tuple[str, Future[Page]] | None = None  # (link, its page being fetched)
        while True:
            try:
                # a 410 or ConnectorError of the prefetched request surfaces here, as if fetched now
                page = ahead[1].result() if ahead is not None and ahead[0] == link else fetch_page(self.http, link)
            except ResyncRequired as gone:
                resyncs += 1
                if resyncs > MAX_RESYNCS:
                    raise ConnectorError("Graph answers 410 resyncRequired even to a fresh enumeration") from None
                self.log.warning("delta link expired (410): enumerating the library again; documents not "
                                 "seen will be deleted", code=gone.code)
                start = gone.location if gone.location and self.http.is_graph(gone.location) else \
                    initial_url(self.options.graph_url, cur.drive_id, self.options.page_size)
                cur = cur.with_(phase="full", next_link=start, gen=new_generation())
                planner.gen = cur.gen
                clear_stage = True
                link = start
                continue
            finally:
                ahead = None
            repeats = repeats + 1 if page.next_link == link else 0
            if repeats > MAX_REPEATS:
                raise ConnectorError("Graph keeps returning the same delta nextLink; giving up this run")
            if page.next_link:
                after = cur.with_(next_link=page.next_link)
            elif cur.phase == "full":
                after = cur.with_(phase="finish", next_link=None, delta_link=page.delta_link)
            else:
                after = cur.with_(phase="apply", next_link=None, delta_link=page.delta_link)
            if page.next_link and page.next_link != link:
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="sp-page")
                ahead = (page.next_link, self._prefetcher.submit(fetch_page, self.http, page.next_link))
            if cur.phase == "incremental":
                cur = after
                yield cur, passes.stage_page(page, after.dumps())
            else:
                for batch in passes.page(page, after.dumps(), clear_stage):
                    if batch.cursor is None:
                        yield cur, batch
                    else:
                        cur = after
                        yield cur, batch
                clear_stage = False
            if page.next_link is None:
                return
            if self.context.should_stop():
                return
            link = page.next_link
