"""Short texts for the text-classification family: the pilot's options, reading a split from a CSV file,
and the groups (category, title length)."""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pilots.spec import Encoding
from testbed.errors import SpecError

__all__ = ["TextOptions", "Texts", "read_texts", "length_groups"]


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    categories: dict[str, str] = Field(min_length=2)
    """The categories, in the contract's order: the label as written in the data (and in answers) -> a short
    ASCII name used for groups, plots and MLflow metric names."""
    text_column: str = "title"
    """CSV column holding the text to classify."""
    label_column: str = "category"
    """CSV column holding the true category."""
    time_column: str = "expiryDate"
    """CSV column (a date, or a date and time) the splits' `start`/`end` cut on."""
    time_format: str | None = None
    """strptime format of the time column (e.g. `%Y.%m.%d %H:%M`, `%d/%m/%Y`); default: ISO 8601, its first ten
    characters read as YYYY-MM-DD."""
    id_column: str = "id"
    """CSV column identifying an item; a repeated id keeps its first row."""
    length_bins: list[int] = Field(default_factory=lambda: [20, 40], min_length=1)
    """Text lengths (characters) where the `length` groups split: [20, 40] gives the groups 0-19, 20-39 and 40_plus."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Texts per request in the clean and scenario phases."""
    offline_batch_size: int = Field(default=512, ge=1, le=8192)
    """Texts per request in the offline (throughput) phase."""
    single_stream_requests: int = Field(default=100, ge=1)
    """One-text requests sent one after another to measure latency."""
    calibration_bins: int = Field(default=15, ge=2, le=100)
    """Equal-width confidence bins of the expected calibration error."""
    encoding: Encoding = "utf-8"
    """Text encoding of the CSV file (a Python codec name, e.g. `cp949` for many Korean public files); a UTF-8
    byte-order mark is skipped."""

    @field_validator("categories")
    @classmethod
    def _ascii_names(cls, value: dict[str, str]) -> dict[str, str]:
        names = list(value.values())
        if len(set(names)) != len(names) or not all(n.isascii() and n.replace("_", "").isalnum() for n in names):
            raise ValueError("short names must be unique ASCII identifiers (letters, digits, _)")
        return value

    @field_validator("time_format")
    @classmethod
    def _a_format(cls, value: str | None) -> str | None:
        sample = datetime(2001, 12, 31, 23, 59, 58)
        try:
            readable = value is None or datetime.strptime(sample.strftime(value), value).date() == sample.date()
        except ValueError:
            readable = False
        if not readable:
            raise ValueError(f"{value!r} is not a strptime format that reads back a date (e.g. %Y.%m.%d, %d/%m/%Y "
                             "%H:%M)")
        return value

    @field_validator("length_bins")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(value, value[1:], strict=False)) or value[0] <= 0:
            raise ValueError("length bins must be positive and increasing")
        return value


@dataclass
class Texts:
    """Model inputs and harness-only truth for one split."""

    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    """True category index of each text, in the options' category order."""
    times: list[str]
    """The time column of each text (YYYY-MM-DD)."""
    categories: list[str]
    """The category labels, in the contract's order."""
    groups: dict[str, np.ndarray]
    """`category` and `length` group of each text."""
    split: str = ""


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _date(value: str, fmt: str | None) -> date:
    return datetime.strptime(value.strip(), fmt).date() if fmt else date.fromisoformat(value[:10])


def length_groups(texts: list[str], bins: list[int]) -> np.ndarray:
    edges = [0, *bins]
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{bins[-1]}_plus"]
    return np.array([names[int(np.searchsorted(bins, len(t), side="right"))] for t in texts])


def read_texts(path: Path, o: TextOptions, start: datetime | None, end: datetime | None, split: str,
               where: str) -> tuple[Texts, list[str]]:
    """The rows of `path` whose time falls in [start, end] (days, inclusive), a repeated id only by its first row
    in the file (a later row of it, whatever its date, belongs to no split: an item is never in two); also the
    labels found that are not among the categories (the caller decides what that means). A missing column or
    a row without a date is a SpecError at `where`, naming the column or the line."""
    categories = list(o.categories)
    index = {c: k for k, c in enumerate(categories)}
    first, last = _day(start), _day(end)
    seen: dict[str, tuple[str, int]] = {}  # id -> (category, line) of its first row in the file
    ids, texts, labels, times, unknown = [], [], [], [], []
    encoding = "utf-8-sig" if codecs.lookup(o.encoding).name == "utf-8" else o.encoding
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [o.id_column, o.time_column, o.text_column, o.label_column]
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise SpecError(f"{path.name} has no column {absent[0]!r} (its columns: {(reader.fieldnames or [])[:12]})",
                            where=where, fix="name the data's columns in task.text_column / label_column / "
                                             "time_column / id_column")
        for row in reader:
            short = [c for c in columns if row.get(c) is None]  # the row ended before these columns
            if short:
                raise SpecError(f"{path.name} line {reader.line_num}: the row has "
                                f"{sum(k is not None and v is not None for k, v in row.items())} of the "
                                f"{len(reader.fieldnames)} fields, and no `{short[0]}`", where=where,
                                fix="give every row all the header's fields (quote a text holding commas or "
                                    "line breaks), or remove the row")
            try:
                when = _date(row[o.time_column] or "", o.time_format)
            except ValueError:
                raise SpecError(f"{path.name} line {reader.line_num} (id {row[o.id_column]!r}): `{o.time_column}` is "
                                f"{row[o.time_column]!r}, not a date {o.time_format or 'YYYY-MM-DD'}", where=where,
                                fix=f"correct the row's {o.time_column}, or remove the row; if the whole column is "
                                    "written another way, give its format as task.time_format (e.g. %Y.%m.%d)"
                                ) from None
            key, label = row[o.id_column], row[o.label_column]
            if key in seen and seen[key][0] != label:  # a repeated row (a crawl's duplicate) keeps its category
                raise SpecError(f"{path.name}: `{o.id_column}` value {key[:40]!r} is on line {seen[key][1]} (category "
                                f"{seen[key][0][:40]}) and line {reader.line_num} (category {label[:40]}): it does not "
                                "identify one text", where=where,
                                fix="set task.id_column to a column that identifies each text (a repeated id keeps "
                                    "its first row)")
            if key in seen:  # its first row, and that row's date alone, decide its split
                continue
            seen[key] = (label, reader.line_num)
            if (first and when < first) or (last and when > last):
                continue
            if row[o.label_column] not in index:
                unknown.append(row[o.label_column])
                continue
            ids.append(row[o.id_column])
            texts.append(row[o.text_column])
            labels.append(index[row[o.label_column]])
            times.append(when.isoformat())
    y = np.array(labels, int)
    short = np.array(list(o.categories.values()))
    groups = {"category": short[y] if len(y) else np.array([], str), "length": length_groups(texts, o.length_bins)}
    return Texts(ids, texts, y, times, categories, groups, split), sorted(set(unknown))
