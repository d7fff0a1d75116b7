"""docs/CONFIG.md, rendered from the JSON Schemas generated from the config dataclasses (utils/common/config_schema.py)
and from the dataclasses' defaults.

``scripts/config_docs.py`` names the config kinds and writes the file with the schemas (``make config-docs``); a test
fails when a committed file is stale.
"""
from __future__ import annotations

import dataclasses
import json
import typing

HEADER = """# Configuration reference

Generated from the config dataclasses in `utils/` (types, defaults, ranges and descriptions), like
`config/schemas/*.schema.json`, by `make config-docs`; do not edit by hand.
A value outside what is listed stops the stage with one line naming the file and the field.
"""


ConfigKind = tuple[str, str, type, str]
"""(schema name, section title, config dataclass, which files and which stage)."""


def local_ref(node: dict, root: dict, schemas: dict[str, dict]) -> dict:
    """``node`` with its ``$ref`` (to ``root`` or to another of ``schemas``) followed."""
    ref = node.get("$ref")
    if not ref:
        return node
    file, _, pointer = ref.partition("#")
    target = schemas[file.removesuffix(".schema.json")] if file else root
    for part in [p for p in pointer.split("/") if p]:
        target = target[part]
    return {**target, **{k: v for k, v in node.items() if k != "$ref"}}


def _type_text(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{v}`" if not isinstance(v, bool) else f"`{str(v).lower()}`" for v in node["enum"])
    kind = node.get("type", "object" if "properties" in node else "any")
    kinds = kind if isinstance(kind, list) else [kind]
    bounds = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    return " \\| ".join(kinds) + (f" ({', '.join(bounds)})" if bounds else "")


def _default_text(cls: type | None, name: str) -> str:
    if cls is None or not dataclasses.is_dataclass(cls):
        return ""
    field = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if field is None:
        return ""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "**required**"
    if dataclasses.is_dataclass(value):
        return "(object)"
    return f"`{json.dumps(value, default=str)}`"


def child_class(cls: type | None, name: str) -> type | None:
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    hint = typing.get_type_hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        for inner in (candidate, *typing.get_args(candidate)):
            if dataclasses.is_dataclass(inner):
                return inner
    return None


def _rows(node: dict, root: dict, cls: type | None, prefix: str, out: list[str], schemas: dict[str, dict]) -> None:
    node = local_ref(node, root, schemas)
    for name, sub in node.get("properties", {}).items():
        sub = local_ref(sub, root, schemas)
        path = f"{prefix}{name}"
        description = " ".join(sub.get("description", "").split())
        items = local_ref(sub.get("items", {}), root, schemas) if isinstance(sub.get("items"), dict) else {}
        type_text = _type_text(sub) + (f" of {_type_text(items)}" if items and "array" in str(sub.get("type")) else "")
        out.append(f"| `{path}` | {type_text} | {_default_text(cls, name)} | {description} |")
        child = child_class(cls, name)
        if "properties" in sub:
            _rows(sub, root, child, f"{path}.", out, schemas)
        elif items.get("properties"):
            _rows(items, root, child, f"{path}[].", out, schemas)


def render(kinds: list[ConfigKind], schemas: dict[str, dict]) -> str:
    """The whole CONFIG.md text, a section per config kind; ``schemas`` by name (as generated)."""
    parts = [HEADER]
    for schema_name, title, cls, where in kinds:
        schema = schemas[schema_name]
        rows = ["| field | type | default | description |", "|---|---|---|---|"]
        _rows(schema, schema, cls, "", rows, schemas)
        required = ", ".join(f"`{r}`" for r in schema.get("required", []))
        parts.append(f"## {title}\n\n{where} — schema `config/schemas/{schema_name}.schema.json`"
                     f"{'; required: ' + required if required else ''}.\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)
