"""Example vendor bundle for the petition-routing pilot: MeCab-ko morphemes + character n-grams, TF-IDF and
a logistic regression (see model.py and train.py). It needs python-mecab-ko, which the testbed itself does not
have: the bundle declares it in bentofile.yaml and the testbed installs it into the bundle's environment."""

import pickle
from pathlib import Path

import bentoml
import model  # noqa: F401 - the pickled pipeline refers to model.morphemes

HERE = Path(__file__).parent


@bentoml.service(resources={"cpu": "1"})
class PetitionMecabTfidf:
    def __init__(self):
        with open(HERE / "model.pt", "rb") as fh:
            saved = pickle.load(fh)
        self.model, self.categories = saved["model"], saved["categories"]
        self.columns = [list(self.model.classes_).index(c) if c in self.model.classes_ else None
                        for c in self.categories]

    @bentoml.api
    def classify(self, texts: list[str]) -> list[dict]:
        if not texts:
            return []
        probs = self.model.predict_proba(texts)
        out = []
        for row in probs:
            scores = {c: float(row[k]) if k is not None else 0.0 for c, k in zip(self.categories, self.columns,
                                                                                  strict=True)}
            out.append({"label": max(scores, key=scores.get), "scores": scores})
        return out
