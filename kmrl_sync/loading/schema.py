"""JSON Schemas of the configuration files, for editors (`kmrl-sync schema`).

They come from the same pydantic models that validate the files, so an editor flags what
`kmrl-sync check` would refuse: unknown keys, wrong types, values out of range. A connector file's
schema includes the `options` of its type; the one for every installed type picks the options by
the file's `type` (if/then), which YAML language servers understand.

`${VAR}` interpolation happens before validation, so a number written as `${PORT}` is a string to
an editor; such a line may be flagged although `check` accepts it.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kmrl_sync.config.models import ConnectorFile, SyncFile

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def sync_schema() -> dict[str, Any]:
    schema = SyncFile.model_json_schema(mode="validation")
    return {"$schema": DIALECT, **schema, "title": "kmrl-sync sync.yaml"}


def connector_schema(type_name: str | None = None) -> dict[str, Any]:
    """The schema of a connector file of `type_name`, or of any installed type when None.

    Raises UnknownConnectorType for a type that is not installed or does not load.
    """
    from kmrl_sync.engine.registry import available_types, load_connector_type

    names = [type_name] if type_name is not None else sorted(available_types())
    options: dict[str, type[BaseModel]] = {name: load_connector_type(name).Options for name in names}
    models = [(ConnectorFile, "validation"), *((model, "validation") for model in options.values())]
    refs, top = models_json_schema(models, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    defs = top.get("$defs", {})
    file_ref = refs[(ConnectorFile, "validation")]["$ref"].rsplit("/", 1)[-1]
    schema = copy.deepcopy(defs.pop(file_ref))
    properties = schema["properties"]
    option_refs = {name: refs[(model, "validation")] for name, model in options.items()}
    if type_name is not None:
        properties["type"] = {"const": type_name, "title": "Type"}
        properties["options"] = {**option_refs[type_name], "description": f"options of a {type_name} connector"}
        title = f"kmrl-sync connector file (type: {type_name})"
    else:
        properties["type"] = {"enum": names, "title": "Type", "description": "the connector type"}
        properties["options"] = {"type": "object", "description": "the options of the connector's type"}
        schema["allOf"] = [
            {"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
             "then": {"properties": {"options": ref}}}
            for name, ref in option_refs.items()
        ]
        title = "kmrl-sync connector file"
    return {"$schema": DIALECT, **schema, "title": title, "$defs": defs}
