"""The config dataclasses are the one source of every field: config/schemas/*.schema.json and docs/CONFIG.md are
what they generate (``make config-docs``), and each field carries one description."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts_loader import load_script
from utils.common.config import field_docstrings
from utils.common.config_schema import Generator, Home, SchemaFile, setting

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOCS = load_script("config_docs")
GENERATED = CONFIG_DOCS.generated()


@pytest.mark.parametrize("rel", sorted(GENERATED))
def test_committed_file_is_what_the_dataclasses_generate(rel):
    committed = (ROOT / rel).read_text(encoding="utf-8")
    assert committed == GENERATED[rel], f"{rel} differs from what the config dataclasses generate: run " \
                                        "`make config-docs` (edit the dataclass, never the generated file)"


def test_every_schema_file_is_generated():
    shipped = {f"config/schemas/{p.name}" for p in (ROOT / "config" / "schemas").glob("*.json")}
    assert shipped == {rel for rel in GENERATED if rel.startswith("config/schemas/")}


def _config_classes() -> list[type]:
    """Every dataclass reachable from the schema files' top classes."""
    seen: list[type] = []
    todo = [spec.cls for spec in CONFIG_DOCS.SCHEMAS if spec.cls] + list(CONFIG_DOCS.HOMES)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for hint in typing.get_type_hints(cls).values():
            for arg in (hint, *typing.get_args(hint), *(a for h in typing.get_args(hint) for a in typing.get_args(h))):
                if dataclasses.is_dataclass(arg):
                    todo.append(arg)
    return sorted(seen, key=lambda c: c.__name__)


def _referenced(hint) -> bool:
    """The field holds a class written once elsewhere ($ref): its class docstring describes it."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return any(arg in CONFIG_DOCS.HOMES for arg in (typing.get_args(hint) if union else (hint,)))


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_field_has_one_description(cls):
    docs, hints = field_docstrings(cls), typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    missing = sorted(name for name in fields if name not in docs and not _referenced(hints[name]))
    assert not missing, f"{cls.__name__}: fields without a docstring (their description): {missing}"
    twice = sorted(name for name in fields if name in docs and _referenced(hints[name]))
    assert not twice, f"{cls.__name__}: {twice} hold a class described by its own docstring; drop the field's copy"


@dataclass
class _Inner:
    """A shared block."""

    depth: int = setting(2, minimum=1)
    """How deep."""


@dataclass
class _Toy:
    name: str = setting(pattern="^[a-z]+$")
    """The name."""
    mode: bool | str = setting("auto", enum=(True, False, "auto"))
    """A switch."""
    ratio: float | None = setting(None, exclusiveMinimum=0)
    """A share."""
    tags: list[str] = field(default_factory=list)
    """Labels."""
    inner: _Inner | None = None
    """Not written here: referenced."""
    inline: _Inner = field(default_factory=_Inner)
    """Written here."""


def test_generator_turns_annotations_and_metadata_into_schema():
    schema = Generator({_Inner: Home("toy", "inner", nullable=True)}).schema(SchemaFile("toy", _Toy, "Toy"))
    assert schema["$id"] == "toy.schema.json" and schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["name"] == {"type": "string", "description": "The name.", "pattern": "^[a-z]+$"}
    assert props["mode"] == {"description": "A switch.", "enum": [True, False, "auto"]}
    assert props["ratio"] == {"type": ["number", "null"], "description": "A share.", "exclusiveMinimum": 0}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "description": "Labels."}
    assert props["inner"] == {"$ref": "#/$defs/inner"}
    assert props["inline"] == {"$ref": "#/$defs/inner"}
    assert schema["$defs"]["inner"] == {
        "description": "A shared block.", "type": ["object", "null"], "additionalProperties": False,
        "properties": {"depth": {"type": "integer", "description": "How deep.", "minimum": 1}}}


def test_generator_writes_unhomed_dataclasses_inline():
    props = Generator({}).schema(SchemaFile("toy", _Toy, "Toy"))["properties"]
    assert props["inline"]["type"] == "object" and props["inline"]["description"] == "Written here."
    assert props["inner"]["type"] == ["object", "null"]
    assert props["inline"]["properties"]["depth"]["minimum"] == 1


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(CONFIG_DOCS, "ROOT", tmp_path)
    monkeypatch.setattr(CONFIG_DOCS, "generated", lambda: {"docs/CONFIG.md": "new\n"})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "CONFIG.md").write_text("old\n")
    monkeypatch.setattr("sys.argv", ["config_docs.py", "--check"])
    assert CONFIG_DOCS.main() == 1
    assert "stale: docs/CONFIG.md; run `make config-docs`" in capsys.readouterr().err
    assert (tmp_path / "docs" / "CONFIG.md").read_text() == "old\n"
    monkeypatch.setattr("sys.argv", ["config_docs.py"])
    assert CONFIG_DOCS.main() == 0
    assert (tmp_path / "docs" / "CONFIG.md").read_text() == "new\n"
