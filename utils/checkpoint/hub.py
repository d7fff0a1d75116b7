"""Hub names: the Hugging Face id of a model when it is known (never a guess), and the card's YAML front matter."""
from __future__ import annotations

import json
import re
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a path on this disk."""
    return bool(name) and _HUB_ID.fullmatch(str(name)) is not None and not Path(str(name)).exists()


def hub_id_of(model_path: str | Path | None) -> str | None:
    """The Hub id of ``model_path``: itself when it is one, else the ``_name_or_path`` its config.json recorded
    when that is one; None when neither is (a model built here, or a GGUF file)."""
    if model_path is None:
        return None
    if is_hub_id(str(model_path)):
        return str(model_path)
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("_name_or_path") if isinstance(config, dict) else None
    return name if is_hub_id(name) else None


def front_matter(fields: dict) -> list[str]:
    """``---`` YAML lines for the Hub's model card metadata; every value is JSON (valid YAML), lists one a line."""
    lines = ["---"]
    for key, value in fields.items():
        if value in (None, [], ""):
            continue
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {json.dumps(v, ensure_ascii=False)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return lines + ["---", ""]
