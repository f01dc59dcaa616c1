"""Hangul arithmetic for the Korean-aware scenarios: a syllable is 0xAC00 + (lead × 21 + vowel) × 28 + tail
(Unicode's composition rule), and the standard two-set (두벌식) keyboard maps each jamo to a Latin key."""

from __future__ import annotations

__all__ = ["LEADS", "VOWELS", "TAILS", "is_syllable", "decompose", "compose", "to_keys", "KEY_OF"]

BASE, N_VOWELS, N_TAILS = 0xAC00, 21, 28
LEADS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
VOWELS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
TAILS = ("", "ㄱ", "ㄲ", "ㄳ", "ㄴ", "ㄵ", "ㄶ", "ㄷ", "ㄹ", "ㄺ", "ㄻ", "ㄼ", "ㄽ", "ㄾ", "ㄿ", "ㅀ", "ㅁ", "ㅂ",
         "ㅄ", "ㅅ", "ㅆ", "ㅇ", "ㅈ", "ㅊ", "ㅋ", "ㅌ", "ㅍ", "ㅎ")
KEY_OF = dict(zip("ㅂㅈㄷㄱㅅㅛㅕㅑㅐㅔㅁㄴㅇㄹㅎㅗㅓㅏㅣㅋㅌㅊㅍㅠㅜㅡㅃㅉㄸㄲㅆㅒㅖ",
                  "qwertyuiopasdfghjklzxcvbnmQWERTOP", strict=True))
"""Two-set keyboard: compatibility jamo -> the Latin key that types it (shifted keys for ㅃㅉㄸㄲㅆㅒㅖ)."""
COMPOUND = {"ㅘ": "ㅗㅏ", "ㅙ": "ㅗㅐ", "ㅚ": "ㅗㅣ", "ㅝ": "ㅜㅓ", "ㅞ": "ㅜㅔ", "ㅟ": "ㅜㅣ", "ㅢ": "ㅡㅣ",
            "ㄳ": "ㄱㅅ", "ㄵ": "ㄴㅈ", "ㄶ": "ㄴㅎ", "ㄺ": "ㄹㄱ", "ㄻ": "ㄹㅁ", "ㄼ": "ㄹㅂ", "ㄽ": "ㄹㅅ",
            "ㄾ": "ㄹㅌ", "ㄿ": "ㄹㅍ", "ㅀ": "ㄹㅎ", "ㅄ": "ㅂㅅ"}
"""Jamo typed as two keys."""


def is_syllable(ch: str) -> bool:
    return BASE <= ord(ch) < BASE + len(LEADS) * N_VOWELS * N_TAILS


def decompose(ch: str) -> tuple[str, str, str]:
    """A precomposed syllable -> (lead, vowel, tail) as compatibility jamo (tail "" when none)."""
    code = ord(ch) - BASE
    return LEADS[code // (N_VOWELS * N_TAILS)], VOWELS[code // N_TAILS % N_VOWELS], TAILS[code % N_TAILS]


def compose(lead: str, vowel: str, tail: str = "") -> str:
    """(lead, vowel, tail) -> the syllable; the jamo written out one by one when they do not make one."""
    if lead in LEADS and vowel in VOWELS and tail in TAILS:
        return chr(BASE + (LEADS.index(lead) * N_VOWELS + VOWELS.index(vowel)) * N_TAILS + TAILS.index(tail))
    return lead + vowel + tail


def to_keys(text: str) -> str:
    """What the keyboard left in Latin mode gives for `text` (한/영 not switched): 청원 -> cjddnjs."""
    out = []
    for ch in text:
        jamo = "".join(decompose(ch)) if is_syllable(ch) else ch
        out.append("".join(KEY_OF.get(j, j) for part in jamo for j in COMPOUND.get(part, part)))
    return "".join(out)
