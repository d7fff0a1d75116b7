"""The JSON Schemas in config/schemas/, generated from the config dataclasses: the one source of every field.

A field's type and default are its annotation and default; its description is the docstring under it; what JSON
Schema adds (ranges, choices, patterns) is in its metadata, written with ``setting``::

    learning_rate: float = setting(3e-4, minimum=0)
    \"\"\"Peak learning rate of AdamW.\"\"\"

A nested dataclass becomes an object inside its parent's schema (the field's docstring describes it), or a ``$ref``
where ``Generator.homes`` gives it a home of its own ($defs of one schema file, or a whole file): the first paragraph
of its class docstring is then its description, and the fields holding it carry none. A class attribute
``json_schema_extra`` adds keywords such as ``allOf``.
``scripts/config_docs.py`` names the files and writes them (``make config-docs``); a test fails when a committed
schema differs from what the dataclasses generate.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from utils.common.config import field_docstrings

DRAFT = "https://json-schema.org/draft/2020-12/schema"
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
              type(None): "null"}


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            **schema: Any) -> Any:
    """A dataclass field whose JSON Schema keywords (``minimum``, ``enum``, ``pattern``, ``type``...) are
    ``schema``: ``type`` replaces the one the annotation gives, ``enum`` stands instead of a type."""
    as_json = json.loads(json.dumps(schema))  # tuples of choices become the lists JSON holds
    return field(default=default, default_factory=default_factory, metadata={"schema": as_json})


@dataclass(frozen=True)
class Home:
    """Where a dataclass's schema lives when it is not written inline: ``def_name`` in the $defs of
    ``<schema>.schema.json``, or that whole file when def_name is None."""

    schema: str
    def_name: str | None = None
    nullable: bool = False
    """The definition itself admits null (a block that may be set to null wherever it is used)."""


@dataclass(frozen=True)
class SchemaFile:
    """One file config/schemas/<name>.schema.json: the dataclass at its top (None: only $defs) and its title."""

    name: str
    cls: type | None
    title: str
    description: str | None = None


class Generator:
    """Builds every schema file from its dataclasses; ``homes`` says which classes are referenced, not inlined."""

    def __init__(self, homes: dict[type, Home]) -> None:
        self.homes = homes
        self.current = ""

    def schema(self, spec: SchemaFile) -> dict:
        self.current = spec.name
        out: dict[str, Any] = {"$schema": DRAFT, "$id": f"{spec.name}.schema.json", "title": spec.title}
        if spec.description:
            out["description"] = spec.description
        if spec.cls is not None:
            out.update(self.object_node(spec.cls, nullable=False))
        defs = {home.def_name: self.def_node(cls, home) for cls, home in self.homes.items()
                if home.schema == spec.name and home.def_name}
        if defs:
            out["$defs"] = defs
        return out

    def def_node(self, cls: type, home: Home) -> dict:
        doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
        return {"description": " ".join(doc.split()), **self.object_node(cls, nullable=home.nullable)}

    def object_node(self, cls: type, nullable: bool) -> dict:
        hints = typing.get_type_hints(cls)
        docs = field_docstrings(cls)
        node: dict[str, Any] = {"type": ["object", "null"] if nullable else "object", "additionalProperties": False}
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if required:
            node["required"] = required
        node["properties"] = {f.name: self.field_node(f, hints[f.name], docs.get(f.name))
                              for f in dataclasses.fields(cls)}
        node.update(getattr(cls, "json_schema_extra", {}))
        return node

    def field_node(self, f: dataclasses.Field, hint: Any, doc: str | None) -> dict:
        inner = _dataclass_in(hint)
        if inner is not None and inner in self.homes:
            return {"$ref": self.ref(inner)}
        extra = dict(f.metadata.get("schema", {}))
        node: dict[str, Any] = {} if "enum" in extra and "type" not in extra else self.type_node(hint)
        if doc:
            node["description"] = doc
        node.update(extra)
        return node

    def type_node(self, hint: Any) -> dict:
        """The schema an annotation alone gives: types, list items, a nested dataclass's properties."""
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds, node = [], {}
        for arg in args:
            origin = typing.get_origin(arg) or arg
            if dataclasses.is_dataclass(arg):
                kinds.append("object")
                node.update({k: v for k, v in self.object_node(arg, nullable=False).items() if k != "type"})
            elif origin in JSON_TYPES:
                kinds.append(JSON_TYPES[origin])
                if origin is list and typing.get_args(arg):
                    node["items"] = self.item_node(typing.get_args(arg)[0])
        if not kinds:
            return {}
        return {"type": kinds[0] if len(kinds) == 1 else kinds, **node}

    def item_node(self, hint: Any) -> dict:
        if dataclasses.is_dataclass(hint) and hint in self.homes:
            return {"$ref": self.ref(hint)}
        return self.type_node(hint)

    def ref(self, cls: type) -> str:
        home = self.homes[cls]
        file = "" if home.schema == self.current and home.def_name else f"{home.schema}.schema.json"
        return file + (f"#/$defs/{home.def_name}" if home.def_name else "")


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass a field holds directly (``X`` or ``X | None``), else None."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    found = [a for a in args if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def dump(schema: dict) -> str:
    """The committed text of a schema file."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
