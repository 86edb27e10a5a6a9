"""The compact stored form of a document reads back as exactly the metadata that was committed."""

from __future__ import annotations

import pytest

from kmrl_sync.engine.docview import BLOB, MIME_DEFAULTS_KEPT, ROOT, Compactor, document_view

NOW = "2026-12-07T20:00:00.000Z"
SHA = "ab" * 32
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
COMMON = {"department": "engineering", "source": "filesystem", "priority": "normal"}
WANTED = {**COMMON, BLOB: "file:///var/lib/kmrl-sync/blobs/sha256", ROOT: "/srv/docs"}


def _fs(rel: str, blob: str = "") -> dict[str, str]:
    return {"filename": rel.rpartition("/")[2], "path": rel, "absolute_path": f"/srv/docs/{rel}",
            "source_url": "file:///srv/docs/" + rel.replace(" ", "%20"), "sha256": SHA, "size": "12",
            "mime_type": "application/pdf", "modified_at": "2026-01-01T00:00:00Z", "blob": blob, **COMMON}


SAMPLES = {
    "file": ("fs", "dept/a b.pdf", _fs("dept/a b.pdf"), SHA),
    "stored file": ("fs", "x.pdf", _fs("x.pdf", f"file:///var/lib/kmrl-sync/blobs/sha256/ab/{SHA}"), SHA),
    "file in another store": ("fs", "y.pdf", _fs("y.pdf", f"s3://bucket/ab/{SHA}"), SHA),
    "mail": ("mail", "<id@x>", {"filename": "Hello.eml", "sha256": SHA, "size": "3", "mime_type": "message/rfc822",
                                 "blob": f"file:///var/lib/kmrl-sync/blobs/sha256/ab/{SHA}", "source_url": "imap://h/INBOX",
                                 "subject": "Hello", "from": "a@b", "to": '["c@d"]', "uid": "7", **COMMON}, SHA),
    "sharepoint": ("sp", "01ABC", {"filename": "r.docx", "path": "/Shared/r.docx", "sha256": SHA, "size": "9",
                                    "mime_type": DOCX,
                                    "blob": "", "source_url": "https://t/r.docx", "web_url": "https://t/r.docx",
                                    "item_id": "01ABC", **COMMON}, "cv1|d1"),
    "renamed file": ("fs", "z.pdf", {**_fs("z.pdf"), "filename": "other name.pdf"}, SHA),
    "no metadata": ("fs", "e", {"filename": "e", "blob": "", **COMMON}, "v1"),
}


def _commit(compactor: Compactor, connector: str, native: str, metadata: dict, version: str,
            defaults: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The doc hash commit_batch.lua writes, and the defaults hash after the batch."""
    stored, same = compactor.compact(native, metadata, version)
    doc = {"status": "created", "synced_at": NOW, **({} if same else {"version": version}), **stored}
    for name, value in compactor.relied_on():
        assert defaults.setdefault(name, value) == value  # the script refuses a changed default
    return doc, defaults


@pytest.mark.parametrize("name", SAMPLES)
def test_the_stored_form_reads_back_as_the_metadata_committed(name):
    connector, native, metadata, version = SAMPLES[name]
    wanted = WANTED if connector == "fs" else {k: v for k, v in WANTED.items() if k != ROOT}
    doc, defaults = _commit(Compactor({}, wanted), connector, native, metadata, version, {})
    view = document_view(f"{connector}:{native}", doc, defaults)
    assert view == {**metadata, "document_id": f"{connector}:{native}", "connector": connector,
                    "status": "created", "synced_at": NOW, "version": version}
    assert "document_id" not in doc and "department" not in doc and "connector" not in doc
    if name != "file in another store":  # whose blob URI cannot be derived: stored as it is
        assert all(len(v.encode()) <= 64 for v in doc.values())


RUNS = {
    "the run's own values": COMMON,
    "another department than stored": {**COMMON, "department": "ops"},
    "no department": {**COMMON, "department": None},
}


@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("name", SAMPLES)
def test_compacting_for_a_run_is_compacting_the_metadata_with_the_run_fields_merged_in(name, run):
    """The commit compacts with the run's fields given apart (worked out once per batch); the
    result is exactly that of compacting each document with them merged over its own."""
    _connector, native, metadata, version = SAMPLES[name]
    own = {k: v for k, v in metadata.items() if k not in COMMON} | {"department": "document's own"}
    merged, apart = Compactor(dict(COMMON), WANTED), Compactor(dict(COMMON), WANTED)
    assert apart.compact_for_run(RUNS[run])(native, own, version) == merged.compact(native, {**own, **RUNS[run]},
                                                                                    version)
    assert apart.relied_on() == merged.relied_on()


def test_a_file_stores_neither_its_paths_nor_its_version_nor_what_the_connector_shares():
    doc, defaults = _commit(Compactor({}, WANTED), "fs", "dept/a b.pdf", _fs("dept/a b.pdf"), SHA, {})
    assert set(doc) == {"status", "synced_at", "sha256", "size", "modified_at", "blob"}
    assert defaults == {**COMMON, ROOT: "/srv/docs", "@mime.pdf": "application/pdf"}


def test_defaults_once_stored_never_change_documents_then_store_their_own_values():
    """Another department, root or store after the first sync: the earlier documents still read back
    as they were, the new ones carry their values themselves."""
    first = Compactor({}, WANTED)
    old_doc, defaults = _commit(first, "fs", "a.pdf", _fs("a.pdf", f"{WANTED[BLOB]}/ab/{SHA}"), SHA, {})
    assert defaults[BLOB] == WANTED[BLOB]
    moved = {**COMMON, "department": "ops", ROOT: "/mnt/docs", BLOB: "s3://b/p"}
    second = Compactor(defaults, moved)
    meta = {**_fs("b.pdf"), "department": "ops", "absolute_path": "/mnt/docs/b.pdf",
            "source_url": "file:///mnt/docs/b.pdf", "blob": f"s3://b/p/ab/{SHA}"}
    new_doc, defaults = _commit(second, "fs", "b.pdf", meta, SHA, defaults)
    assert {"department", "path", "absolute_path", "source_url", "blob"} <= set(new_doc)
    assert document_view("fs:b.pdf", new_doc, defaults) == {
        **meta, "document_id": "fs:b.pdf", "connector": "fs", "status": "created", "synced_at": NOW, "version": SHA}
    assert document_view("fs:a.pdf", old_doc, defaults)["absolute_path"] == "/srv/docs/a.pdf"
    assert document_view("fs:a.pdf", old_doc, defaults)["department"] == "engineering"
    assert document_view("fs:a.pdf", old_doc, defaults)["blob"] == f"{WANTED[BLOB]}/ab/{SHA}"


def test_a_connector_s_mime_table_stays_small():
    compactor = Compactor({}, WANTED)
    defaults: dict[str, str] = {}
    for i in range(MIME_DEFAULTS_KEPT + 10):
        rel = f"f.x{i}"
        doc, defaults = _commit(compactor, "fs", rel, {**_fs(rel), "mime_type": f"type/{i}"}, SHA, defaults)
        assert document_view(f"fs:{rel}", doc, defaults)["mime_type"] == f"type/{i}"
    assert sum(1 for k in defaults if k.startswith("@mime")) == MIME_DEFAULTS_KEPT
    assert "mime_type" in doc


def test_a_hash_of_an_earlier_release_reads_as_it_was_written():
    old = {"document_id": "fs:a.txt", "connector": "fs", "status": "updated", "version": SHA, "sha256": SHA,
           "synced_at": NOW, "filename": "a.txt", "path": "a.txt", "absolute_path": "/old/a.txt",
           "source_url": "file:///old/a.txt", "blob": "", **COMMON}
    assert document_view("fs:a.txt", old, {ROOT: "/srv/docs", "department": "ops"}) == old


def test_an_unknown_document_is_empty():
    assert document_view("fs:nothing", {}, {"department": "x"}) == {}

