"""Morpheme features from MeCab-ko (python-mecab-ko, with its bundled mecab-ko-dic) plus character n-grams,
TF-IDF weighted, and a logistic regression (scikit-learn): a classic Korean text-classification pipeline."""

import functools

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import make_pipeline, make_union


@functools.cache
def _mecab():
    import mecab

    return mecab.MeCab()


def morphemes(text: str) -> list[str]:
    """Morphemes and morpheme bigrams of `text` (e.g. 반려견 학대 -> 반려, 견, 학대, 반려_견, 견_학대)."""
    try:
        tokens = _mecab().morphs(text)
    except Exception:  # noqa: BLE001 - an odd input must not take the service down
        tokens = text.split()
    return tokens + [f"{a}_{b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def pipeline():
    features = make_union(TfidfVectorizer(analyzer=morphemes, min_df=2, sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True))
    return make_pipeline(features, SGDClassifier(loss="log_loss", alpha=3e-5, max_iter=20, tol=None, random_state=0))
