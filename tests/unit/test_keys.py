"""Key names: a document's hash carries its connector's hash tag, and maps back to its id."""

from __future__ import annotations

import pytest

from kmrl_sync.engine.keys import ConnectorKeys, doc_key, document_id_of


@pytest.mark.parametrize("native", ["a.txt", "dir/b c.txt", "x:y:z", "{odd}", "new\nline", "", "ü/ß"])
def test_a_document_hash_carries_its_connector_s_tag_and_maps_back_to_the_id(native):
    document_id = f"fs:{native}"
    key = doc_key("kmrl", document_id)
    assert key == "kmrl:doc:{fs}:" + native
    assert key == ConnectorKeys("kmrl", "fs").doc_prefix + native == ConnectorKeys("kmrl", "fs").doc(document_id)
    assert document_id_of("kmrl", key) == document_id


@pytest.mark.parametrize("bad", ["no-colon", ":native", "{x}:a"])
def test_what_is_no_document_id_is_refused(bad):
    with pytest.raises(ValueError, match="not a document id"):
        doc_key("kmrl", bad)


def test_a_hash_tag_in_the_native_id_does_not_move_the_document_to_another_slot():
    """Redis hashes the first {...} of a name: the connector's tag comes first, whatever the id holds."""
    assert doc_key("kmrl", "fs:{other}").startswith("kmrl:doc:{fs}:")
