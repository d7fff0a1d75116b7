"""Each config dataclass and its JSON Schema agree field by field: name, type, default and enum.

The dataclass is what the code reads; the schema is what load_config checks (and where the
descriptions in docs/CONFIG.md come from). A field added to one and not the other fails here.
TrainingParams documents each field in a docstring; the schema's description must say the same.
"""
from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from utils.common.config import field_docstrings, load_schema
from utils.data.sources import FORMATS, TYPES
from utils.data.templates import TEMPLATES, TRAIN_ON
from utils.data.text_sources import _READERS, TextSource
from scripts_loader import load_script
from utils.common.config_docs import child_class, local_ref
from utils.train.config import COMPUTE_DTYPES, QUANT_TYPES, SCHEDULERS, QuantizationParams, TrainingParams

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
              tuple: "array", type(None): "null"}
# enums written in code as well as in a schema: (schema, dotted field path) -> the code's tuple
CODE_ENUMS = {
    ("sft_dataset", "template"): TEMPLATES,
    ("sft_dataset", "train_on"): TRAIN_ON,
    ("sft_dataset", "datasets[].type"): TYPES,
    ("sft_dataset", "datasets[].format"): FORMATS,
    ("pretrain", "training_params.scheduler"): SCHEDULERS,
    ("sft_training", "training_params.scheduler"): SCHEDULERS,
    ("text_source", "type"): tuple(_READERS),
    ("sft_training", "quantization.bnb_4bit_quant_type"): QUANT_TYPES,
    ("sft_training", "quantization.bnb_4bit_compute_dtype"): tuple(COMPUTE_DTYPES),
}


def json_types(hint) -> set[str]:
    """The JSON types a dataclass field's annotation admits."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(json_types(arg) for arg in typing.get_args(hint)))
    if dataclasses.is_dataclass(hint):
        return {"object"}
    if origin is typing.Literal:
        return {JSON_TYPES[type(v)] for v in typing.get_args(hint)}
    base = origin or hint
    kind = JSON_TYPES.get(base)
    if kind is None and base is typing.Any:
        return {"string", "integer", "number", "boolean", "array", "object", "null"}
    return {kind} | ({"integer"} if kind == "number" else set())


def schema_types(node: dict) -> set[str]:
    if "type" in node:
        kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    elif "enum" in node:
        kinds = [{bool: "boolean", str: "string", int: "integer", float: "number", type(None): "null"}[type(v)]
                 for v in node["enum"]]
    elif "properties" in node:
        kinds = ["object"]
    else:
        return set()
    return set(kinds) | ({"integer"} if "number" in kinds else set())


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def pairs(schema_name: str, node: dict, root: dict, cls, prefix: str = ""):
    """(path, schema node, dataclass) for every object level that has a dataclass behind it."""
    node = local_ref(node, root)
    if cls is not None and dataclasses.is_dataclass(cls):
        yield prefix, node, cls
    for name, sub in node.get("properties", {}).items():
        sub = local_ref(sub, root)
        child = child_class(cls, name)
        if "properties" in sub:
            yield from pairs(schema_name, sub, root, child, f"{prefix}{name}.")
        elif isinstance(sub.get("items"), dict) and local_ref(sub["items"], root).get("properties"):
            yield from pairs(schema_name, sub["items"], root, child, f"{prefix}{name}[].")


def all_pairs():
    out = []
    for schema_name, _title, cls, _where in load_script("config_docs").KINDS:
        schema = load_schema(schema_name)
        out += [(schema_name, path, node, level) for path, node, level in pairs(schema_name, schema, schema, cls)]
    text = load_schema("text_source")
    out += [("text_source", path, node, level) for path, node, level in pairs("text_source", text, text, TextSource)]
    return out


PAIRS = all_pairs()


DOCUMENTED = [p for p in PAIRS if p[3] in (TrainingParams, QuantizationParams)]
"""Levels whose dataclass is the source of the descriptions (other dataclasses' docstrings are notes for readers)."""


@pytest.mark.parametrize("schema_name,path,node,cls", DOCUMENTED, ids=[f"{s}:{p}" for s, p, _, _ in DOCUMENTED])
def test_field_docstrings_are_the_schema_descriptions(schema_name, path, node, cls):
    """Every field has one docstring, and the schema (and so docs/CONFIG.md) says exactly that."""
    docs = field_docstrings(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}, \
        f"{cls.__name__} fields without a docstring: {sorted({f.name for f in dataclasses.fields(cls)} - set(docs))}"
    root = load_schema(schema_name)
    for name, doc in docs.items():
        described = local_ref(node["properties"][name], root).get("description")
        assert described == doc, (f"{schema_name}.schema.json {path}{name}: description {described!r}, "
                                  f"docstring of {cls.__name__}.{name} {doc!r}; the docstring is the source: "
                                  "copy it into the schema")


def test_every_config_has_its_dataclass_levels():
    assert len(PAIRS) >= 10, [f"{s}:{p}" for s, p, _, _ in PAIRS]


@pytest.mark.parametrize("schema_name,path,node,cls", PAIRS, ids=[f"{s}:{p or '<root>'}" for s, p, _, _ in PAIRS])
def test_dataclass_and_schema_agree(schema_name, path, node, cls):
    props = node.get("properties", {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = f"{schema_name}.schema.json {path or '<root>'} vs {cls.__name__}"
    assert set(props) == set(fields), f"{where}: only in schema {set(props) - set(fields)}, " \
                                      f"only in dataclass {set(fields) - set(props)}"
    hints = typing.get_type_hints(cls)
    required = set(node.get("required", []))
    root = load_schema(schema_name)
    for name, field in fields.items():
        sub = local_ref(props[name], root)
        allowed, declared = schema_types(sub), json_types(hints[name])
        assert allowed <= declared, f"{where}.{name}: schema allows {sorted(allowed)}, " \
                                    f"the dataclass type {hints[name]} holds {sorted(declared)}"
        default = default_of(field)
        if default is dataclasses.MISSING:
            assert name in required, f"{where}.{name}: required in the dataclass, optional in the schema"
        elif "default" in sub:
            assert sub["default"] == default, f"{where}.{name}: default {sub['default']!r} in the schema, " \
                                              f"{default!r} in the dataclass"
        if "enum" in sub and default is not dataclasses.MISSING and not dataclasses.is_dataclass(default):
            assert default in sub["enum"] or default is None, \
                f"{where}.{name}: default {default!r} is not one of {sub['enum']}"


@pytest.mark.parametrize("schema_name,dotted", sorted(CODE_ENUMS))
def test_enums_written_in_code_match_the_schema(schema_name, dotted):
    root = load_schema(schema_name)
    node = root
    for part in dotted.split("."):
        name = part.removesuffix("[]")
        node = local_ref(local_ref(node, root)["properties"][name], root)
        if part.endswith("[]"):
            node = local_ref(node["items"], root)
    assert tuple(node["enum"]) == tuple(CODE_ENUMS[(schema_name, dotted)]), \
        f"{schema_name}.schema.json {dotted}: enum {node['enum']} vs the code's {CODE_ENUMS[(schema_name, dotted)]}"
