"""Short-text classification: a citizen's petition title in Korean in, one of the pilot's categories with
per-category probabilities out (pilot `petition-routing`)."""

from evaluation.families.text_classification import metrics, scenarios  # noqa: F401 - they register themselves
from evaluation.families.text_classification.contract import CLASSIFY
from evaluation.families.text_classification.data import Texts
from evaluation.families.text_classification.family import TextClassification

__all__ = ["CLASSIFY", "TextClassification", "Texts"]
