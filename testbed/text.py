"""Text that people or bundles wrote (a vendor's name, an evaluator's note, a service's log), made safe to show
on a terminal, a page or in a message: control and formatting characters (a terminal's escape sequences,
carriage returns, bidirectional overrides) are written out as they would be typed, never obeyed."""

from __future__ import annotations

import re

from rich.markup import escape

__all__ = ["blank", "hidden", "printable", "cell"]

_HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")
"""Unicode's control (Cc) and format (Cf) characters (Unicode 14, Python 3.11's `unicodedata`; a test checks
the class against it)."""


def hidden(text: str) -> bool:
    """Whether `text` holds a control or formatting character (a line break too): a name that must read as one
    plain line cannot."""
    return _HIDDEN.search(text) is not None


def blank(text: str) -> bool:
    """Whether `text` says nothing: only white space and control or formatting characters (a zero-width space)."""
    return not _HIDDEN.sub("", text).strip()


def printable(text: str) -> str:
    """`text` safe to show: control and formatting characters written out (`\\x1b`, `\\r`, `\\u202e`…), new
    lines and tabs kept, every other character (Hangul too) as it is."""
    return _HIDDEN.sub(lambda m: m.group() if m.group() in "\n\t" else ascii(m.group())[1:-1], text)


def cell(text: str) -> str:
    """`text` as one cell of a Rich table or line: `printable`, its markup escaped and its line breaks shown as ⏎,
    so it cannot pass for rows, markup or output of its own."""
    return escape(printable(text)).replace("\n", " ⏎ ")
