"""What citizens' typing does to a petition title, seeded and Korean-aware.

Each scenario gets one clean text, a severity in [0, 1] (0 leaves it as it is) and the item's own numpy
Generator, and returns the text as a citizen might have typed it; the true category stays valid. Hangul is
edited through its jamo (`hangul.py`: decomposed and recomposed arithmetically), not as opaque characters.
"""

from __future__ import annotations

import re

import numpy as np

from evaluation.families.text_classification.hangul import compose, decompose, is_syllable, to_keys
from evaluation.registry import scenario

__all__ = ["typos", "missing_spaces", "jamo_noise", "informal_endings", "mixed_latin"]

FAMILY = "text-classification"
VOWEL_SLIPS = {"ㅐ": "ㅔ", "ㅔ": "ㅐ", "ㅒ": "ㅖ", "ㅖ": "ㅔ", "ㅚ": "ㅙ", "ㅙ": "ㅚ", "ㅞ": "ㅙ", "ㅢ": "ㅣ",
               "ㅕ": "ㅓ", "ㅛ": "ㅗ"}
"""Vowels citizens confuse in writing (되/돼, 애/에, 의/이) or on the keyboard."""
TAIL_SLIPS = {"ㅆ": "ㅅ", "ㅅ": "ㅆ", "ㄲ": "ㄱ", "ㄶ": "ㄴ", "ㄺ": "ㄱ", "ㄼ": "ㄹ", "ㅄ": "ㅂ", "ㄷ": "ㅅ"}
"""Final consonants written the way they sound (했/햇, 않/안, 읽/익)."""
KEY_ROWS = ("ㅂㅈㄷㄱㅅ", "ㅁㄴㅇㄹㅎ", "ㅋㅌㅊㅍ")
"""Consonant keys of the two-set keyboard, row by row: a finger slips to the next key."""
INFORMAL = [  # formal ending at the end of a title -> what people type instead
    (r"해\s*주십시오$|해\s*주세요$", ["해주셈", "해줘요", "해주세여", "해줘"]),
    (r"주십시오$|주세요$", ["주셈", "줘요", "주세여", "줘"]),
    (r"바랍니다$", ["바람", "바래요", "바랍니당"]),
    (r"입니다$", ["임", "이에요", "이에여"]),
    (r"합니다$", ["함", "해요", "합니당"]),
    (r"습니다$", ["음", "어요"]),
    (r"하라$|하십시오$", ["하셈", "해라", "하세여"]),
    (r"드립니다$", ["드려요", "드림"]),
    (r"니다$", ["니당", "니다ㅠ"]),
]
TAILS_ADDED = ["ㅠㅠ", " ㅠㅠ", "ㅜㅜ", "!!", "...", "ㅋㅋ", "!!!"]


@scenario("typos", family=FAMILY)
def typos(text: str, severity: float, rng: np.random.Generator) -> str:
    """Fast-typing slips: each character (spaces excepted) is, with probability 0.12 × severity, dropped,
    doubled, or swapped with the next one."""
    chars, out, i = list(text), [], 0
    while i < len(chars):
        ch = chars[i]
        if ch != " " and rng.random() < 0.12 * severity:
            op = rng.integers(3)
            if op == 1:
                out += [ch, ch]
            elif op == 2 and i + 1 < len(chars):
                out += [chars[i + 1], ch]
                i += 1
            elif op == 2:
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


@scenario("missing_spaces", family=FAMILY)
def missing_spaces(text: str, severity: float, rng: np.random.Generator) -> str:
    """Spacing (띄어쓰기) left out, as on a phone: each space is dropped with probability `severity`."""
    return "".join(ch for ch in text if ch != " " or rng.random() >= severity)


def _neighbour_key(jamo: str, rng: np.random.Generator) -> str:
    for row in KEY_ROWS:
        if jamo in row:
            k = row.index(jamo)
            options = [row[j] for j in (k - 1, k + 1) if 0 <= j < len(row)]
            return options[rng.integers(len(options))]
    return jamo


@scenario("jamo_noise", family=FAMILY)
def jamo_noise(text: str, severity: float, rng: np.random.Generator) -> str:
    """Errors inside syllables: each Hangul syllable is, with probability 0.25 × severity, decomposed into its
    jamo and given one slip, then recomposed: a confused vowel (되→돼, 애→에), a final consonant written as
    it sounds (했→햇) or dropped, the initial consonant's neighbouring key (ㄱ→ㄷ), or the syllable left
    unfinished as loose jamo (ㅊㅓㅇ)."""
    out = []
    for ch in text:
        if not is_syllable(ch) or rng.random() >= 0.25 * severity:
            out.append(ch)
            continue
        lead, vowel, tail = decompose(ch)
        op = rng.integers(4)
        if op == 0 and vowel in VOWEL_SLIPS:
            out.append(compose(lead, VOWEL_SLIPS[vowel], tail))
        elif op == 1 and tail:
            out.append(compose(lead, vowel, TAIL_SLIPS.get(tail, "")))
        elif op == 2:
            out.append(compose(_neighbour_key(lead, rng), vowel, tail))
        elif op == 3:
            out.append(lead + vowel + tail)
        else:
            out.append(compose(lead, vowel, ""))  # the final consonant forgotten
    return "".join(out)


@scenario("informal_endings", family=FAMILY)
def informal_endings(text: str, severity: float, rng: np.random.Generator) -> str:
    """Informal register: with probability `severity` a title loses its formal ending (합니다→함/해요,
    해주세요→해주셈/해줘요, 입니다→임) and, half of the time, gains ㅠㅠ, ㅋㅋ, !! or an ellipsis."""
    if rng.random() >= severity:
        return text
    body = text.rstrip(" .!?")
    for pattern, options in INFORMAL:
        match = re.search(pattern, body)
        if match:
            body = body[:match.start()] + options[rng.integers(len(options))]
            break
    if rng.random() < 0.5:
        body += TAILS_ADDED[rng.integers(len(TAILS_ADDED))]
    return body


@scenario("mixed_latin", family=FAMILY)
def mixed_latin(text: str, severity: float, rng: np.random.Generator) -> str:
    """Latin script mixed in: each Hangul word is, with probability 0.4 × severity, typed with the keyboard
    still in Latin mode (한/영 not switched: 청원 → cjddnjs), the most common way Latin letters enter a Korean
    title by accident."""
    words = text.split(" ")
    return " ".join(to_keys(w) if any(map(is_syllable, w)) and rng.random() < 0.4 * severity else w for w in words)
