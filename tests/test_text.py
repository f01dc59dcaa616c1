"""What people and bundles wrote is shown written out, never obeyed (`testbed.text`)."""

import sys
import unicodedata

from testbed.text import _HIDDEN, cell, hidden, printable


def test_the_hidden_characters_are_exactly_unicodes_controls_and_formats():
    """The compiled class is the Cc and Cf categories of this Python's Unicode database: a character added to Cf
    by a newer Unicode would be shown raw, so this fails on the Python that brings one."""
    every = (chr(i) for i in range(sys.maxunicode + 1))
    expected = {c for c in every if unicodedata.category(c) in ("Cc", "Cf")}
    assert {c for c in map(chr, range(sys.maxunicode + 1)) if _HIDDEN.fullmatch(c)} == expected


def test_printable_writes_out_escapes_and_overrides_and_keeps_lines_and_hangul():
    text = "김지우\x1b[2J\r\u202eok\u200d\n\tend"
    assert printable(text) == "김지우\\x1b[2J\\r\\u202eok\\u200d\n\tend"
    assert hidden("Acme\nCo") and hidden("Acme\u2066") and not hidden("서울 AI Lab (주)")
    assert cell("[red]a\nb\x07") == "\\[red]a ⏎ b\\x07"
