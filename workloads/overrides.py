"""`--set key.path=value` overrides applied to any pydantic settings model, validated as a whole (workload
presets here; the run config in harness.config uses the same)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from harness.errors import BadInput
from harness.inputs import parse_json
from workloads.model import format_validation_error

M = TypeVar("M", bound=BaseModel)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """'a.b.c=1.5' -> (['a', 'b', 'c'], 1.5). Values are JSON where they parse as JSON, else strings."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise BadInput(f"--set {text!r}: expected key=value, e.g. --set mars.window_min=4")
    try:
        value = parse_json(raw, "--set")
    except BadInput:  # not JSON (or nested past what the parser takes): the text itself
        value = raw
    return key.strip().split("."), value


def _known(node: Any) -> str:
    return ", ".join(str(k) for k in node) if isinstance(node, dict) else "none (not a group of settings)"


def set_path(data: dict[str, Any], path: list[str], value: Any, shown: str) -> None:
    """Assign into nested dicts. Every key must exist, except the last one inside a mapping setting
    (e.g. a new entry of `cores`); validation afterwards rejects any key the model does not know."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if not isinstance(node, dict) or (part not in node and (not last or node is data)):
            raise BadInput(f"--set {shown}: unknown setting {part!r} (known: {_known(node)})")
        if last:
            node[part] = value
        else:
            node = node[part]


def apply_overrides(model: M, assignments: Iterable[str]) -> M:
    """A copy of `model` with every assignment applied, validated; bad keys or values raise BadInput."""
    data = model.model_dump(mode="python")
    for text in assignments:
        path, value = parse_assignment(text)
        set_path(data, path, value, text)
    try:
        return type(model).model_validate(data)
    except ValidationError as e:
        raise BadInput(f"--set: {format_validation_error(e)}") from None
