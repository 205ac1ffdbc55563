"""A study configuration with its descriptions: commented TOML for ``nasopt config show``, and
the Markdown table of keys that docs/study-files.md holds.

Both are built from the schema (:class:`nasopt.config.schema.StudyConfig`, each key's
``Field(description=...)``), so a new key appears in them with no edit here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from nasopt.config.schema import StudyConfig


def keys(cfg: StudyConfig) -> Iterator[tuple[str, str, Any, str]]:
    """(section, key, value, description) for every key of the study file, in schema order."""
    for section in StudyConfig.model_fields:
        values = getattr(cfg, section)
        for key, key_field in type(values).model_fields.items():
            yield section, key, getattr(values, key), key_field.description or ""


def toml_value(value: Any) -> str:
    """``value`` in TOML syntax (strings as JSON strings, which TOML reads the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def to_toml(cfg: StudyConfig, origin: str) -> str:
    """The whole configuration as a study file, each key under its description; ``origin`` says
    where the values come from. Unset keys (TOML has no null) are commented out."""
    lines = [f"# Effective study configuration: {origin}.", "# Each key under its description."]
    current = None
    for section, key, value, description in keys(cfg):
        if section != current:
            current = section
            lines += ["", f"[{section}]  # {StudyConfig.model_fields[section].description}"]
        lines.append(f"# {description}")
        lines.append(f"# {key} (unset)" if value is None else f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def key_table(cfg: StudyConfig) -> str:
    """A Markdown table of every key: name, value (the defaults for a default config), meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section, key, value, description in keys(cfg):
        shown = "unset" if value is None else f"`{toml_value(value)}`"
        meaning = description.replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{section}.{key}` | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"
