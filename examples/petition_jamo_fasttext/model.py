"""A fastText-style classifier over hashed character and jamo n-grams (PyTorch EmbeddingBag): small, fast on
a CPU, and robust to the way citizens type (jamo n-grams survive typos inside syllables; the Latin keys of a
word typed in the wrong keyboard mode are mapped back to jamo)."""

import zlib

import torch
from torch import nn

BUCKETS = 1 << 17
LEADS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"
VOWELS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"
TAILS = ["", *"ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"]
KEYS = dict(zip("qwertyuiopasdfghjklzxcvbnmQWERTOP",
                "ㅂㅈㄷㄱㅅㅛㅕㅑㅐㅔㅁㄴㅇㄹㅎㅗㅓㅏㅣㅋㅌㅊㅍㅠㅜㅡㅃㅉㄸㄲㅆㅒㅖ", strict=True))


def jamo(text: str) -> str:
    """Hangul syllables split into their jamo; Latin letters read as two-set keyboard keys."""
    out = []
    for ch in text:
        code = ord(ch) - 0xAC00
        if 0 <= code < 11172:
            out.append(LEADS[code // 588] + VOWELS[code // 28 % 21] + TAILS[code % 28])
        else:
            out.append(KEYS.get(ch, ch.lower()))
    return "".join(out)


def ngrams(text: str) -> list[int]:
    """Hashed ids of character 1-3-grams and jamo 2-4-grams (each word padded with spaces)."""
    feats = []
    for kind, seq, sizes in (("c", f" {text.strip()} ", (1, 2, 3)), ("j", f" {jamo(text.strip())} ", (2, 3, 4))):
        for n in sizes:
            feats += [f"{kind}{seq[i:i + n]}" for i in range(len(seq) - n + 1)]
    return [zlib.crc32(f.encode()) % BUCKETS for f in feats] or [0]


def batch(texts: list[str] | None = None, ids: list[list[int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """EmbeddingBag input (flat ids, offsets) for `texts`, or for their precomputed `ids`."""
    ids = ids if ids is not None else [ngrams(t) for t in texts]
    offsets = torch.tensor([0, *[len(x) for x in ids[:-1]]]).cumsum(0)
    return torch.tensor([i for x in ids for i in x]), offsets


class FastText(nn.Module):
    def __init__(self, n_classes: int, dim: int = 48):
        super().__init__()
        self.embed = nn.EmbeddingBag(BUCKETS, dim, mode="mean", sparse=True)  # sparse: only used rows update
        nn.init.uniform_(self.embed.weight, -1 / dim, 1 / dim)
        self.out = nn.Linear(dim, n_classes)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids, offsets))
