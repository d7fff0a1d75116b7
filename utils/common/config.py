"""Schema-checked JSON configs loaded into typed dataclasses.

The JSON Schemas in config/schemas/ say what is allowed (types, ranges, names);
the dataclasses hold the defaults, once. A bad config ends in one line:
``config/pretrain/tiny.json: training_params.learning_rate: -1 is less than the minimum of 0``.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import referencing
from referencing.jsonschema import DRAFT202012

from utils.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "config" / "schemas"

T = TypeVar("T")


def load_schema(name: str) -> dict:
    """The JSON Schema ``config/schemas/<name>.schema.json``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


def schema_registry() -> referencing.Registry:
    """All schemas in config/schemas, so one can ``$ref`` another by file name."""
    resources = [
        (path.name, referencing.Resource.from_contents(
            json.loads(path.read_text(encoding="utf-8")), default_specification=DRAFT202012))
        for path in sorted(SCHEMA_DIR.glob("*.schema.json"))
    ]
    return referencing.Registry().with_resources(resources)


def read_json_dict(path: Path) -> dict:
    """A JSON object from ``path``, or {} when the file is missing, unreadable, not JSON or not an object (an
    optional record: a cache, a training summary, a manifest that may have moved)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except (ValueError, RecursionError) as err:  # a 5000-digit number, lists nested 10^5 deep
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
        raise UserError(f"{path}: cannot parse JSON ({reason})") from None


def field_path(error: jsonschema.ValidationError) -> str:
    """``training_params.lr`` / ``datasets[2].name`` for a validation error."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def validate(data: Any, schema_name: str, source: str | Path) -> None:
    """Raise UserError naming the source and field of the most relevant schema error."""
    schema = load_schema(schema_name)
    validator = jsonschema.validators.validator_for(schema)(schema, registry=schema_registry())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        raise UserError(f"{source}: {field_path(error)}: {error.message}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a validated dict, recursing into nested dataclasses."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in data:
            kwargs[field.name] = _convert(hints[field.name], data[field.name], f"{where}{field.name}.")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where.rstrip('.') or cls.__name__}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return value if value is None or len(args) != 1 else _convert(args[0], value, where)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        return [_convert(item, v, f"{where.rstrip('.')}[{i}].") for i, v in enumerate(value)]
    return value


def load_config(path: str | Path, schema_name: str, cls: type[T], settings: list[tuple[str, str]] = ()) -> T:
    """Read, validate and type a config file, with ``settings`` (``--set`` pairs: dotted field, JSON value)
    applied first, so they are checked like the file; every problem is a one-line UserError."""
    data = read_json(path)
    for field_name, raw in settings:
        _set_field(data, field_name, raw)
    validate(data, schema_name, f"{path} with --set" if settings else path)
    try:
        return from_dict(cls, data)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def _set_field(data: Any, dotted: str, raw: str) -> None:
    """``training_params.micro_batch_tokens`` = the JSON value ``raw`` (a bare word is a string)."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        if not isinstance(node, dict) or not isinstance(node.get(part, {}), dict):
            raise UserError(f"--set {dotted}: {part} is not a section of the config")
        node = node.setdefault(part, {})
    if not isinstance(node, dict) or not leaf:
        raise UserError(f"--set {dotted}: not a field of the config")
    node[leaf] = value


def to_dict(obj: Any) -> Any:
    """The resolved config (defaults filled in) as plain JSON-ready data."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def field_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (``name: type = default`` then ``\"\"\"text\"\"\"``),
    whitespace folded to single spaces: the one description of the field (litgpt's style)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def load_eval_prompts(path: str | Path, flag: str = "--eval_prompts") -> list[str]:
    """A file of evaluation prompts: ``{"eval_prompts": ["...", ...]}`` (the SFT guide's layout) or a JSON list."""
    data = read_json(path)
    prompts = data.get("eval_prompts") if isinstance(data, dict) else data
    if not isinstance(prompts, list) or not prompts:
        raise UserError(f"{flag} {path}: expected {{\"eval_prompts\": [\"...\", ...]}} with at least one prompt")
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt.strip():
            what = "empty" if isinstance(prompt, str) else "not a string"
            raise UserError(f"{flag} {path}: eval_prompts[{index}] is {what}; give non-empty text prompts")
    return prompts
