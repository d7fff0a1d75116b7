"""Reliability: every bad config ends in one line naming the file and the field, generated from the schemas.

For every schema in config/schemas (the shared ones through their $refs) and the shipped configs it governs:
each required property is dropped (conditional ones of if/then/else included), and each property with a
simple type gets a value of a wrong type, at every level an instance reaches. Each case must be a UserError
of one line ``<file>: <field path>: ...`` from ``load_config``; one case of each kind also runs each script's
``main()`` under ``run_cli``: exit 2 and that line alone on stderr.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from reliability_helpers import ROOT, script
from utils.common.config import load_config, load_schema
from utils.common.errors import UserError, run_cli

SCHEMAS = {"tokenizer": "tokenizer", "pretrain": "pretrain", "sft_datasets": "sft_dataset",
           "sft_training": "sft_training"}
WRONG = [12345, "wrong", True, [1], {"x": 1}]
JSON_TYPES = {"integer": int, "number": (int, float), "string": str, "boolean": bool, "array": list,
              "object": dict, "null": type(None)}


def config_class(schema: str):
    from utils.data.prepare import SFTDatasetConfig
    from utils.train.config import PretrainConfig, SFTTrainingConfig
    from utils.data.tokenizer import TokenizerConfig

    return {"tokenizer": TokenizerConfig, "pretrain": PretrainConfig, "sft_dataset": SFTDatasetConfig,
            "sft_training": SFTTrainingConfig}[schema]


def resolve(node: dict, doc: dict) -> tuple[dict, dict]:
    """Follow ``$ref`` (``other.schema.json#/$defs/x`` or ``#/$defs/x``) to the node and its document."""
    while "$ref" in node:
        file, _, pointer = node["$ref"].partition("#")
        if file:
            doc = load_schema(file.removesuffix(".schema.json"))
        node = doc
        for part in filter(None, pointer.split("/")):
            node = node[part]
    return node, doc


def field_path(parts: list) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def is_wrong_type(value, sub: dict) -> bool:
    """``value`` fails the node by its JSON type (or enum), not by a range."""
    if "type" in sub:
        types = sub["type"] if isinstance(sub["type"], list) else [sub["type"]]
        allowed = tuple(t for name in types for t in (JSON_TYPES[name] if isinstance(JSON_TYPES[name], tuple)
                                                      else (JSON_TYPES[name],)))
        if isinstance(value, bool):
            return "boolean" not in types
        return not isinstance(value, allowed)
    return "enum" in sub and value not in sub["enum"]


def required_here(node: dict, instance: dict) -> list[str]:
    """``required``, plus the ``then``/``else`` requirements of if/then/else that apply to this instance."""
    names = list(node.get("required", []))
    for rule in node.get("allOf", []):
        if "if" in rule:
            applies = jsonschema.Draft202012Validator(rule["if"]).is_valid(instance)
            names += rule.get("then" if applies else "else", {}).get("required", [])
    return names


def cases(node: dict, doc: dict, instance, parts: list):
    """(kind, path parts, mutate(config) -> None, expected text) for every field reachable in ``instance``."""
    node, doc = resolve(node, doc)
    if isinstance(instance, list) and instance and "items" in node:
        yield from cases(node["items"], doc, instance[0], parts + [0])
        return
    if not isinstance(instance, dict) or "properties" not in node:
        return
    for name in required_here(node, instance):
        if name in instance:
            yield ("missing", parts + [name], lambda obj, n=name: obj.pop(n),
                   f"{field_path(parts)}: '{name}' is a required property")
    for name, sub in node["properties"].items():
        sub, sub_doc = resolve(sub, doc)
        if "type" in sub or "enum" in sub:
            value = next(v for v in WRONG if is_wrong_type(v, sub))
            yield ("wrong type", parts + [name], lambda obj, n=name, v=value: obj.__setitem__(n, v),
                   f"{field_path(parts + [name])}: ")
        if name in instance:
            yield from cases(sub, sub_doc, instance[name], parts + [name])


def generated(schema: str) -> list[tuple]:
    """The cases of every shipped config of ``schema``, each (kind, field path) once."""
    directory = next(d for d, s in SCHEMAS.items() if s == schema)
    seen, out = set(), []
    for path in sorted((ROOT / "config" / directory).glob("*.json")):
        instance = json.loads(path.read_text())
        for kind, parts, mutate, expected in cases(load_schema(schema), load_schema(schema), instance, []):
            key = (kind, field_path(parts))
            if key not in seen:
                seen.add(key)
                out.append((path, kind, parts, mutate, expected))
    return out


def mutated(path: Path, parts: list, mutate, tmp_path: Path) -> Path:
    config = copy.deepcopy(json.loads(path.read_text()))
    target = config
    for part in parts[:-1]:
        target = target[part]
    mutate(target)
    out = tmp_path / f"{path.parent.name}-{path.name}"
    out.write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("schema", sorted(set(SCHEMAS.values())))
def test_each_missing_field_and_wrong_type_is_one_line_naming_it(schema, tmp_path):
    found = generated(schema)
    kinds = {kind for _, kind, *_ in found}
    assert kinds == {"missing", "wrong type"} and len(found) >= 10
    wrong = []
    for source, kind, parts, mutate, expected in found:
        path = mutated(source, parts, mutate, tmp_path)
        try:
            load_config(path, schema, config_class(schema))
            wrong.append(f"{field_path(parts)} ({kind}): accepted")
        except UserError as err:
            message = str(err)
            if "\n" in message or not message.startswith(f"{path}: {expected}"):
                wrong.append(f"{field_path(parts)} ({kind}): {message}")
    assert not wrong, "\n".join(wrong)


def test_the_generator_reaches_nested_and_conditional_fields():
    paths = {(kind, field_path(parts)) for schema in SCHEMAS.values() for _, kind, parts, *_ in generated(schema)}
    assert {("wrong type", "training_params.learning_rate"), ("wrong type", "lora_config.r"),
            ("missing", "datasets[0].dataset_name"), ("missing", "datasets[0].participants"),
            ("wrong type", "datasets[0].participants.user"), ("wrong type", "data.sources[0].paths"),
            ("missing", "sources[0].type"), ("wrong type", "evaluation_config.generation_config.top_p"),
            ("missing", "training_params"), ("missing", "name")} <= paths


SCRIPT_CASES = {  # script -> (schema, other arguments: never reached, the config is checked first)
    "00_train_tokenizer": ("tokenizer", []),
    "01_pretrain": ("pretrain", ["--tokenizer_path", "nowhere"]),
    "02_prepare_sft_corpus": ("sft_dataset", ["--tokenizer_path", "nowhere", "--output_dir", "x"]),
    "03_sft_industrial": ("sft_training", ["--model_path", "m", "--data_dirs", "d", "--tokenizer_path", "t",
                                           "--output_dir", "o"]),
}


@pytest.mark.parametrize("stem", sorted(SCRIPT_CASES))
@pytest.mark.parametrize("kind", ["missing", "wrong type"])
def test_every_script_refuses_a_bad_config_with_one_line(stem, kind, tmp_path, capsys):
    schema, extra = SCRIPT_CASES[stem]
    source, _, parts, mutate, expected = next(c for c in generated(schema) if c[1] == kind)
    path = mutated(source, parts, mutate, tmp_path)
    assert run_cli(script(stem).main, ["--config", str(path), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {expected}"), lines
