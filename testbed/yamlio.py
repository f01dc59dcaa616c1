"""Load YAML into pydantic models with errors a person can act on (file, field path, fix)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from testbed.errors import SpecError

__all__ = ["load_model", "validation_error", "repeated", "safe_load_bounded"]

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 1 << 20
"""Vendor profiles, rubrics and specs are a few KiB; a bigger file is a mistake (or /dev/zero)."""
SHOWN_ERRORS = 5


def repeated(names: Iterable[str]) -> list[str]:
    """The names given more than once, sorted: what a "give each once" check reports."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _describe(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str | None, Any]:
    """The docstring of the field at `loc`, and the model that field holds (if any), following nested models."""
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
    return description, current


def _given(item: dict) -> str:
    """` (given: VALUE)` for a scalar the file gave (shortened), so the message shows what was read."""
    value = item.get("input")
    if item["type"] in ("missing", "extra_forbidden") or isinstance(value, dict | list) or value is None:
        return ""
    return f" (given: {repr(value)[:60]})"


def _fix(model: type[BaseModel], item: dict, path: str) -> str:
    """What to do about one pydantic error at `path`: what to give there (as the message says), with the field's
    meaning; for an unknown field, the fields that may stand there."""
    if item["type"] == "extra_forbidden":
        parent = _describe(model, tuple(item["loc"][:-1]))[1]
        names = ", ".join(getattr(parent, "model_fields", None) or ())
        return f"remove `{path}` or correct its name" + (f" (the fields there: {names[:300]})" if names else "")
    if item["type"] == "invalid_key":  # `null:`, `1:` or `true:` read as no name
        return (f"name the field at `{path}` with a word (YAML reads `null:`, a number or `true:` as no name), or "
                "remove it")
    if item["loc"][-1] == "[key]":  # a key of a mapping of names that YAML read as a number, `true`, a date…
        return (f"quote the key at `{path.removesuffix('.[key]')}` ('{item.get('input')}': …): YAML reads an unquoted "
                "number, `true`, `null` or a date as no text")
    doc = _describe(model, tuple(item["loc"]))[0]
    todo = f"add `{path}`" if item["type"] == "missing" else f"give `{path}` a value as the message says"
    if not doc:
        return todo
    first = (doc.split() or [""])[0]
    return f"{todo}; it is {doc[0].lower() + doc[1:] if first[1:].islower() or len(first) == 1 else doc}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last one silently). A
    merge key (`<<: *defaults`) is no key of its own: the safe loader merges it, the keys beside it overriding."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {str(key)[:60]!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A scalar that reads as no value (a date such as 2018-09-31, an integer past Python's 4,300 digits) is
        a YAML error at its line, not the constructor's bare ValueError."""
        try:
            return super().construct_object(node, deep=deep)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, str(exc)[:200], node.start_mark) from None


def validation_error(where: str, model: type[BaseModel], error: ValidationError, prefix: str = "") -> SpecError:
    """Turn a pydantic error into one SpecError listing every bad field with its meaning (`prefix`: where the
    model stands in its file, e.g. `task.`)."""
    lines, fixes, errors = [], [], error.errors()
    for item in errors[:SHOWN_ERRORS]:
        if not item["loc"]:  # a check across fields: its message says what disagrees
            lines.append(item["msg"].removeprefix("Value error, "))
            fixes.append("make those fields agree")
            continue
        path = prefix + ".".join(str(p) for p in item["loc"])[:60]  # names from the file: never echoed whole
        lines.append(f"field `{path}`: {item['msg'].removeprefix('Value error, ')}{_given(item)}")
        fixes.append(_fix(model, item, path))
    if len(errors) > SHOWN_ERRORS:
        lines.append(f"and {len(errors) - SHOWN_ERRORS} more")
    return SpecError("; ".join(lines), where=where, fix=" | ".join(fixes))


def safe_load_bounded(data: bytes | str, budget: int = 1_000_000) -> Any:
    """`yaml.safe_load` for YAML someone else wrote (a bundle's files): yaml.YAMLError when its aliases expand
    it beyond `budget` (each node counts 1, text its length). Nested aliases of a few hundred bytes otherwise
    make gigabytes once the value is walked or printed ("billion laughs")."""
    value = yaml.safe_load(data)
    stack, left = [value], budget
    while stack:
        node = stack.pop()
        left -= 1 + (len(node) if isinstance(node, str | bytes) else 0)
        if left < 0:
            raise yaml.YAMLError(f"its aliases expand it beyond {budget:,} nodes and characters")
        if isinstance(node, dict):
            stack += [*node.keys(), *node.values()]
        elif isinstance(node, list):
            stack += node
    return value


def load_model(path: Path, model: type[M], **context: Any) -> M:
    """Read `path` as YAML and validate it as `model` (context goes to validators)."""
    where, path = str(path), Path(path)
    if not path.exists():
        raise SpecError("file not found", where=where, fix="check the path")
    if not path.is_file() or path.stat().st_size > MAX_YAML_BYTES:
        raise SpecError("a folder or a special file" if not path.is_file() else "larger than 1 MiB", where=where,
                        fix=f"give a YAML file of {model.__name__} fields")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", where=where, fix="save the file as UTF-8") from None
    except OSError as exc:  # e.g. another account's file: one bad file, never every command that reads a folder
        raise SpecError(f"cannot be read ({exc.strerror or exc})", where=where,
                        fix="make the file readable by the account running the testbed") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML ({exc})".replace("\n", " "), where=where,
                        fix="fix the YAML syntax at the line shown") from None
    except RecursionError:  # YAML's parser recurses once per level of brackets
        raise SpecError("not readable YAML: its values are nested too deeply", where=where,
                        fix=f"write the {model.__name__} fields as `key: value` lines, each value plain") from None
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping of fields at the top level", where=where,
                        fix=f"write the {model.__name__} fields as `key: value` lines") from None
    try:
        return model.model_validate(raw, context=context or None)
    except ValidationError as exc:
        raise validation_error(where, model, exc) from None
