"""A document's metadata: the full form workers see, and the compact form its Redis hash stores.

Redis memory is what grows with the corpus (DESIGN: Running it), so a document hash stores only
what cannot be derived, in values that keep Redis' compact listpack encoding (at most 64 bytes per
value, by Redis' defaults). Everything else is restored by `document_view`, the one reader of the
stored form (status and queue views, the hub API, tests):

- `document_id` and `connector`: from the hash's name (`keys.doc_key`), never stored.
- `version`: absent when it equals `sha256` (the content hash is the version of stored content).
- `filename`: absent when it is the last segment of `path`.
- What every document of a connector shares lives once in the connector's defaults hash
  (`ConnectorKeys.docdefaults`): the run-wide fields (`department`, `source`, `priority`), and
  the bases derived fields are built from: `@root` (a folder connector's root: `path` is the native
  id, `absolute_path` is root/id, `source_url` its file:// URL), `@blob` (the content store's URI
  base: `blob` is base/ab/<sha256>), `@mime<.ext>` (the `mime_type` of a file name ending so).
  A stored field wins over a default.

Defaults are written once and never changed (the commit script refuses a batch relying on a
default that differs from the stored one, writing nothing), so a document compacted against a
default always reads back as it was written. When a connector's configuration changes (another
department, root or store), new documents store those fields themselves: correct, just larger.

`compact` drops a field only when `document_view` would restore exactly its value, so the round trip
is lossless by construction; what a document never had and the view adds is one of the fields
DESIGN promises every document (filename, blob, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from functools import partial
from urllib.parse import quote

import redis

from kmrl_sync.engine.keys import ConnectorKeys, doc_key

# The fields a commit adds to every document, named by the run's configuration.
RUN_FIELDS = ("department", "source", "priority")
ROOT = "@root"
BLOB = "@blob"
MIME = "@mime"  # + the file name's suffix, lower-cased ("@mime.pdf"; "@mime" for none)
MIME_SUFFIX_CHARS = 16  # longer suffixes are no file type: such documents store their mime_type
MIME_DEFAULTS_KEPT = 256  # a connector's table of suffixes stays small, whatever names it meets
# Fields the commit script writes itself, never compacted here.
SCRIPT_FIELDS = ("status", "version", "synced_at", "deleted_at")
# Never stored in a document hash: derived from its key, or written by the script.
_NOT_STORED = frozenset(("document_id", "connector", *SCRIPT_FIELDS))

_to_json = json.JSONEncoder(ensure_ascii=False).encode
_URL_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*")  # paths quote() would return unchanged


def file_url(path: str) -> str:
    """The `file://` URL of an absolute path (the filesystem connector's `source_url`)."""
    return "file://" + (path if _URL_SAFE.fullmatch(path) else quote(path))


def blob_uri(base: str, sha256: str) -> str:
    """Where a content store with URI base `base` keeps `sha256` (content.store.ContentStore.uri)."""
    return f"{base}/{sha256[:2]}/{sha256}"


def mime_default(filename: str) -> str | None:
    """The defaults field holding the mime type of files named like `filename`, or None."""
    name = filename.rpartition("/")[2]
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    return MIME + suffix if len(suffix) <= MIME_SUFFIX_CHARS else None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def document_view(document_id: str, stored: Mapping[bytes | str, bytes | str],
                  defaults: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """The full metadata of `document_id` from its stored hash and its connector's defaults hash
    (both as HGETALL returns them, bytes or str); {} for a document that is not stored."""
    if not stored:
        return {}
    fields = {_text(k): _text(v) for k, v in stored.items()}
    base = {_text(k): _text(v) for k, v in defaults.items()}
    connector, _, native = document_id.partition(":")
    view = {"document_id": document_id, "connector": connector}
    for name in RUN_FIELDS:
        if name in base:
            view[name] = base[name]
    view.update(fields)
    root = base.get(ROOT)
    if root is not None and "path" not in fields:
        view["path"] = native
        view.setdefault("absolute_path", f"{root}/{native}")
        view.setdefault("source_url", file_url(view["absolute_path"]))
    if "filename" not in fields and "path" in view:
        view["filename"] = view["path"].rpartition("/")[2]
    sha256 = view.get("sha256", "")
    if "version" not in fields and "sha256" in fields:
        view["version"] = sha256
    if "blob" not in fields:
        view["blob"] = blob_uri(base[BLOB], sha256) if sha256 and BLOB in base else ""
    if "mime_type" not in fields and "filename" in view:
        key = mime_default(view["filename"])
        if key is not None and key in base:
            view["mime_type"] = base[key]
    return view


class Compactor:
    """Compacts one connector's documents against its defaults, learning new ones as it goes.

    `stored`: the defaults hash as read at the start of the run (under the connector's lease, so no
    other commit changes it meanwhile); `wanted`: this run's values (run fields, `@root`, `@blob`).
    A wanted value that differs from the stored one is not used. What a batch relies on is sent
    with it (`relied_on`), for the commit script to check and write once.
    """

    def __init__(self, stored: Mapping[str, str], wanted: Mapping[str, str]):
        self.defaults = dict(stored)
        for name, value in wanted.items():
            self.defaults.setdefault(name, value)
        self.usable = {name for name, value in wanted.items() if self.defaults[name] == value}
        self.usable.update(n for n in stored if n.startswith(MIME))
        self._mimes = sum(1 for n in self.defaults if n.startswith(MIME))
        self._relied: set[str] = set()
        # Only @mime names join `usable` later: what compact() needs of the rest is fixed here.
        self._root = self.defaults[ROOT] if ROOT in self.usable else None
        self._blob = self.defaults[BLOB] if BLOB in self.usable else None
        self._run_plans: dict[tuple[tuple[str, str | None], ...], tuple[frozenset[str], dict[str, str], set[str]]] = {}

    def relied_on(self) -> list[tuple[str, str]]:
        """The defaults the documents compacted since the last call rely on (then forgotten)."""
        pairs = [(name, self.defaults[name]) for name in sorted(self._relied)]
        self._relied.clear()
        return pairs

    def _learn_mime(self, name: str, value: str) -> bool:
        """Take `value` as the default mime type of a suffix no default names yet, while the
        connector's table of them has room; True when it did (the document then relies on it)."""
        if self._mimes < MIME_DEFAULTS_KEPT:
            self.defaults[name] = value
            self.usable.add(name)
            self._mimes += 1
            self._relied.add(name)
            return True
        return False

    def _run_plan(self, run_fields: Mapping[str, object]) -> tuple[frozenset[str], dict[str, str], set[str]]:
        """For run fields overriding a document's own: the names not taken from the document, the
        values to store (not a usable default), and the defaults relied on. A run has one set of
        run fields, so this is worked out once, not per document."""
        key = tuple((name, value if value is None or isinstance(value, str) else _str(value))
                    for name, value in run_fields.items())
        plan = self._run_plans.get(key)
        if plan is None:
            stored: dict[str, str] = {}
            relied: set[str] = set()
            for name, text in key:
                if text is None:
                    continue
                if name in self.usable and self.defaults[name] == text:
                    relied.add(name)
                else:
                    stored[name] = text
            plan = self._run_plans[key] = (_NOT_STORED | run_fields.keys(), stored, relied)
        return plan

    def compact(self, native: str, metadata: Mapping[str, object], version: str) -> tuple[dict[str, str], bool]:
        """The fields to store for an upsert of `native` (values as strings, None left out) and
        whether `version` may be left out (it equals the stored sha256)."""
        run_fields = {name: metadata[name] for name in RUN_FIELDS if name in metadata}
        return self._compact(self._run_plan(run_fields), native, metadata, version)

    def compact_for_run(self, run_fields: Mapping[str, object]) -> Callable[[str, Mapping[str, object], str],
                                                                          tuple[dict[str, str], bool]]:
        """`compact` for documents whose run fields (department, source, priority) are `run_fields`,
        overriding their own, as if merged into their metadata: worked out once for a batch."""
        return partial(self._compact, self._run_plan(run_fields))

    def _compact(self, plan: tuple[frozenset[str], dict[str, str], set[str]], native: str,
                 metadata: Mapping[str, object], version: str) -> tuple[dict[str, str], bool]:
        # Run once per document of every commit: plain dict and set operations, helpers only
        # off the common path.
        left_out, run_stored, run_relied = plan
        out = {k: v if v.__class__ is str else _str(v) for k, v in metadata.items()
               if v is not None and k not in left_out}
        if run_stored:
            out.update(run_stored)
        relied = self._relied
        if run_relied:
            relied |= run_relied
        path = out.get("path")
        root = self._root
        if (path == native and root is not None and out.get("absolute_path") == f"{root}/{native}"
                and out.get("source_url") == file_url(out["absolute_path"])):
            relied.add(ROOT)
            del out["path"], out["absolute_path"], out["source_url"]
        filename = out.get("filename")
        if path is not None:
            last = path.rpartition("/")[2]
            if filename == last:
                del out["filename"]
            elif filename is None:
                filename = last
        sha256 = out.get("sha256")
        blob = out.get("blob")
        if blob and sha256 and self._blob is not None and blob == blob_uri(self._blob, sha256):
            relied.add(BLOB)
            del out["blob"]
        mime = out.get("mime_type")
        if mime is not None and filename is not None:  # the view's filename: stored, or the path's last segment
            key = mime_default(filename)
            if key is not None:
                known = self.defaults.get(key)
                if known is not None:  # a stored or learned @mime default: always usable
                    if known == mime:
                        relied.add(key)
                        del out["mime_type"]
                elif self._learn_mime(key, mime):
                    del out["mime_type"]
        return out, sha256 is not None and sha256 == version


def _str(value: object) -> str:
    # Hash fields are strings; lists/dicts travel as JSON (as the queue messages carry them).
    if isinstance(value, list | dict):
        return _to_json(value)
    return str(value)


def read_document(client: redis.Redis, prefix: str, document_id: str) -> dict[str, str] | None:
    """The full metadata of `document_id` as stored in Redis (one round trip), None when unknown.

    ValueError for what is no document id (keys.doc_key). Callers reading many documents of one
    connector may read its defaults hash once: they only ever gain fields, never change.
    """
    connector = document_id.partition(":")[0]
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(doc_key(prefix, document_id))
    pipe.hgetall(ConnectorKeys(prefix, connector).docdefaults)
    stored, defaults = pipe.execute()
    return document_view(document_id, stored, defaults) if stored else None
