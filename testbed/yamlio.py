"""Load YAML into pydantic models with errors a person can act on (file, field path, fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from testbed.errors import SpecError

__all__ = ["load_model", "validation_error"]

M = TypeVar("M", bound=BaseModel)


def _describe(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The docstring of the field at `loc`, following nested models."""
    current: Any = model
    description = None
    for part in loc:
        fields = getattr(current, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            continue
        info = fields[part]
        description = info.description
        annotation = info.annotation
        args = getattr(annotation, "__args__", ()) or ()
        nested = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        current = nested[0] if nested else None
    return description


def validation_error(where: str, model: type[BaseModel], error: ValidationError) -> SpecError:
    """Turn a pydantic error into one SpecError listing every bad field with its meaning."""
    lines, fixes = [], []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"field `{path}`: {item['msg']}")
        doc = _describe(model, tuple(item["loc"]))
        fixes.append(f"`{path}` is {doc[0].lower() + doc[1:]}" if doc else f"correct `{path}`")
    return SpecError("; ".join(lines), where=where, fix=" | ".join(fixes))


def load_model(path: Path, model: type[M], **context: Any) -> M:
    """Read `path` as YAML and validate it as `model` (context goes to validators)."""
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("file not found", where=where, fix="check the path") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"not valid UTF-8 YAML ({exc})".replace("\n", " "), where=where,
                        fix="fix the YAML syntax at the line shown") from None
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping of fields at the top level", where=where,
                        fix=f"write the {model.__name__} fields as `key: value` lines") from None
    try:
        return model.model_validate(raw, context=context or None)
    except ValidationError as exc:
        raise validation_error(where, model, exc) from None
