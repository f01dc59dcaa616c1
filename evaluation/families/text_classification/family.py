"""Short-text classification (citizen petition routing): texts in, a category with probabilities out."""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.equity import assess_groups
from evaluation.families.text_classification.contract import CLASSIFY, decode_response, encode_request
from evaluation.families.text_classification.data import TextOptions, Texts, read_texts
from evaluation.families.text_classification.metrics import ClassEval, class_f1
from evaluation.family import UNDER_LOAD, Outcome, TaskFamily
from evaluation.registry import SCENARIOS, family
from pilots.spec import PilotSpec, ScenarioSpec, require_split_kind
from sandbox.runner import SandboxResult
from testbed.errors import ContractViolation, SpecError

__all__ = ["TextClassification", "tfidf_baseline"]


@functools.lru_cache(maxsize=4)
def _fit_baseline(texts: tuple[str, ...], labels: tuple[int, ...]):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier
    from sklearn.pipeline import make_pipeline

    logistic = SGDClassifier(loss="log_loss", alpha=2e-5, max_iter=20, tol=None, random_state=0)  # seeded, ~5 s
    model = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), min_df=2, sublinear_tf=True),
                          logistic)
    return model.fit(list(texts), list(labels))


@functools.lru_cache(maxsize=4)
def _baseline_probs(train_texts: tuple[str, ...], train_labels: tuple[int, ...], texts: tuple[str, ...],
                    n_classes: int) -> np.ndarray:
    model = _fit_baseline(train_texts, train_labels)
    probs = np.zeros((len(texts), n_classes))
    probs[:, model.classes_] = model.predict_proba(list(texts))
    probs.setflags(write=False)  # shared by every later call
    return probs


def _labels(phase: str) -> str:
    """The predictions' key of phase `phase`'s answered labels (beside its probabilities, keyed `phase`)."""
    return f"{phase}/label"


def tfidf_baseline(train: Texts, texts: list[str], n_classes: int) -> np.ndarray:
    """The non-deep-learning reference: TF-IDF of character 1-3-grams (within words) and a logistic regression
    (one-vs-rest, fitted by seeded SGD) on the public splits; (items, categories) probabilities
    (read-only: computed once per process for the same texts)."""
    return _baseline_probs(tuple(train.texts), tuple(int(y) for y in train.labels), tuple(texts), n_classes)


@family("text-classification")
class TextClassification(TaskFamily):
    contract = CLASSIFY
    Options = TextOptions
    group_keys = ("category", "length")
    primary_metric = "macro_f1"
    technology_fields = ("nlp",)
    baseline_name = "tfidf_char_ngrams_logistic_regression"

    @classmethod
    def validate_spec(cls, spec: PilotSpec, where: str) -> None:
        """Also: splits cut by date (`start`/`end` on `task.time_column`), never by `members`."""
        super().validate_spec(spec, where)
        require_split_kind(spec, where, cls.name, "dates")
        day = lambda value: value.date() if value is not None else None  # noqa: E731
        splits = spec.dataset.splits
        for name, split in splits.items():
            for other, seen in splits.items():
                if split.public or not seen.public:
                    continue
                first, last, seen_first, seen_last = day(split.start), day(split.end), day(seen.start), day(seen.end)
                if (first is None or seen_last is None or first <= seen_last) and \
                        (seen_first is None or last is None or seen_first <= last):
                    shared = max(d for d in (first, seen_first) if d) if first or seen_first else None
                    raise SpecError(f"field `dataset.splits.{name}`: the {cls.name} family cuts splits by whole days "
                                    f"(`task.time_column` is a date), so the sequestered `{name}` split and the public "
                                    f"`{other}` split share {shared or 'days'}: vendors would have seen its items",
                                    where=where, fix=f"start the `{name}` split on a day after the `{other}` split's "
                                                     "last day (dates at midnight)")

    @classmethod
    def contract_details(cls, spec: PilotSpec) -> dict[str, Any]:
        return {"categories": list(TextOptions.model_validate(spec.task).categories)}

    @property
    def answer_bytes_per_item(self) -> int:
        """A label and one probability per category: 256 bytes a category leaves room for long names."""
        return 256 * (len(self.options.categories) + 1)

    def read(self, split: str) -> Texts:
        window, where = self.spec.dataset.splits[split], f"pilot {self.spec.id}: dataset"
        try:
            data, unknown = read_texts(self.data_path, self.options, window.start, window.end, split, where)
        except UnicodeError as exc:
            at = f" (byte {exc.start})" if isinstance(exc, UnicodeDecodeError) else ""
            raise SpecError(f"{self.data_path.name} is not {self.options.encoding} text{at}",
                            where=f"{where}: task.encoding",
                            fix="set task.encoding to the file's encoding (e.g. cp949)") from None
        if "" in unknown:
            raise SpecError(f"split {split!r} has rows with an empty `{self.options.label_column}`", where=where,
                            fix="give every row its category, or remove the unlabelled rows from the data")
        if unknown:
            raise SpecError(f"split {split!r} has labels that are not in task.categories: {unknown[:5]}",
                            where=f"pilot {self.spec.id}: task.categories",
                            fix="list every category of the data in task.categories")
        if not data.texts:
            raise SpecError(f"split {split!r} selects no rows of {self.data_path.name}", where=where,
                            fix="set the split's start/end inside the data's time range")
        if not self.spec.dataset.splits[split].public:
            self._training(split)  # the baseline's splits, read now: their mistakes stop the run before the bundle's
        return data

    def inputs(self, data: Texts) -> list[str]:
        return data.texts

    def size(self, data: Texts) -> int:
        return len(data.texts)

    def perturb(self, data: Texts, inputs: list[str], sc: ScenarioSpec) -> list[str]:
        fn = SCENARIOS.get(sc.name)
        return [fn(text, sc.severity, self.scenario_rng(sc, i)) for i, text in enumerate(inputs)]

    def encode(self, inputs: list[str], rows: np.ndarray) -> bytes:
        return encode_request([inputs[i] for i in rows])

    def check_request(self, inputs: dict[str, list], items: int) -> None:
        if not all(isinstance(text, str) for text in inputs["texts"]):
            raise ContractViolation("`texts` must be a list of strings")

    def check_answer(self, body: bytes, items: int) -> tuple[np.ndarray, np.ndarray]:
        return decode_response(body, items, list(self.options.categories))

    def _answered(self, data: Texts, result: SandboxResult, name: str, violations: list[str]
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(texts, categories) probabilities the service answered for phase `name` (NaN rows where it did not)
        and each text's `label` as a category index (-1 where it did not)."""
        probs = np.full((len(data.texts), len(data.categories)), np.nan)
        labels = np.full(len(data.texts), -1)
        for rows, (label, p) in self.answers(result, name, violations):
            probs[rows], labels[rows] = p, label
        return probs, labels

    def predictions(self, data: Texts, result: SandboxResult, violations: list[str]) -> dict[str, np.ndarray]:
        """Per scenario (and `UNDER_LOAD`), the answered probabilities as `NAME` and the answered labels as
        `NAME/label`: the contract lets the top scores tie (within `TIE_TOLERANCE`), and `label` is what is scored."""
        preds = {}
        for name in (*self.scenario_names, UNDER_LOAD):
            preds[name], preds[_labels(name)] = self._answered(data, result, name, violations)
        return preds

    @staticmethod
    def _decided(preds: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray]:
        """(category per text, answered) of phase `name`: the answer's `label`; the top score where the predictions
        hold no labels (logged before they were kept: the label was the top score but for ties)."""
        probs, labels = preds[name], preds.get(_labels(name))
        answered = np.isfinite(probs).all(axis=1)
        top = np.nan_to_num(probs, nan=-1.0).argmax(axis=1) if labels is None else labels
        return np.where(answered, top, 0), answered

    def _metrics(self, data: Texts, pred: np.ndarray, probs: np.ndarray, rows: np.ndarray) -> dict[str, float]:
        fns = self.metric_functions()
        if not rows.any():
            return {m: float("nan") for m in fns}
        ev = ClassEval(data.labels[rows], pred[rows], probs[rows], len(data.categories), self.options.calibration_bins)
        return {m: fn(ev) for m, fn in fns.items()}

    @classmethod
    def _scored(cls, preds: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label, answered, probabilities) of phase `name` as scored: an unanswered text counts as wrong (no
        category, even odds), so failing the requests that carry hard texts cannot raise a score."""
        probs = preds[name]
        pred, answered = cls._decided(preds, name)
        k = probs.shape[1]
        return np.where(answered, pred, -1), answered, np.where(answered[:, None], probs, 1.0 / max(k, 1))

    def score_predictions(self, data: Texts, preds: dict[str, np.ndarray]) -> Outcome:
        """The timed answers are scored as the clean ones (`scored`): the clean phase is only compared."""
        preds = self.scored(preds)
        decided = {name: self._scored(preds, name) for name in self.scenario_names}
        pred, answered, probs = decided["clean"]
        k, everything = len(data.categories), np.ones(len(data.texts), bool)
        f1 = class_f1(ClassEval(data.labels, pred, probs, k))
        short = list(self.options.categories.values())
        groups = {}
        for key in self.spec.groups:
            labels = data.groups[key]
            for value in sorted(set(labels)):
                groups[f"{key}={value}"] = self._metrics(data, pred, probs, labels == value)
                groups[f"{key}={value}"]["items"] = float((labels == value).sum())
                if key == "category":  # its texts are of one category: the class's F1, not a macro-F1 over them
                    groups[f"{key}={value}"].pop("macro_f1", None)
                    groups[f"{key}={value}"]["class_f1"] = float(f1[short.index(value)])
        metrics = {name: self._metrics(data, p, pr, everything) for name, (p, _, pr) in decided.items()}
        under_load = dict(metrics["clean"]) if UNDER_LOAD in preds else {}  # the same answers: scored as clean
        correct = (pred == data.labels).astype(float)
        equity = assess_groups({key: data.groups[key] for key in self.spec.groups}, metric="accuracy", goal="max",
                               values=correct, overall=metrics["clean"].get("accuracy"), settings=self.spec.equity)
        base_probs = self._baseline(data)
        base_pred = base_probs.argmax(1)
        baseline = {"name": self.baseline_name, **self._metrics(data, base_pred, base_probs, everything)}
        return Outcome(
            metrics=metrics, groups=groups, baseline=baseline, coverage=float(answered.mean()), equity=equity,
            under_load=under_load,
            extras={"pred": pred, "probs": probs, "answered": answered, "class_f1": f1,
                    "baseline_class_f1": class_f1(ClassEval(data.labels, base_pred, base_probs, k))})

    def agreement(self, data: Texts, preds: dict[str, np.ndarray]) -> float | None:
        """A text agrees when its timed answer names the same category as its clean one."""
        if UNDER_LOAD not in preds:
            return None
        (clean, answered), (timed, timed_answered) = self._decided(preds, "clean"), self._decided(preds, UNDER_LOAD)
        return float((answered & timed_answered & (clean == timed)).sum() / answered.sum()) if answered.any() else None

    def exactness(self, data: Texts, preds: dict[str, np.ndarray]) -> float | None:
        """Share of the texts whose scored answer (`scored`) names their true category (an unanswered one does
        not). A score's skill over the baseline (1 - baseline/model) cannot come near the lookup flag however
        exact the answers (a copy of the labels: 1 - 0.39/1.0 on petitions), so for classification a public truth
        copied is seen here: models route short citizen texts far less surely than 99 %."""
        if not len(data.labels):
            return None
        pred, _, _ = self._scored(self.scored(preds), "clean")  # the label scored, as in accuracy
        return float((pred == data.labels).mean())

    def ready_scoring(self, data: Texts) -> None:
        self._baseline(data)  # the fit (seconds) is cached for the scoring

    def _baseline(self, data: Texts) -> np.ndarray:
        return tfidf_baseline(self._training(data.split), data.texts, len(data.categories))

    @functools.cached_property
    def _learnt(self) -> dict[str, Texts]:
        """`_training`'s answers, by the split scored."""
        return {}

    def _training(self, scored: str) -> Texts:
        """What the baseline learns from to score split `scored`: every public split but that one, whatever their
        names (all that any vendor could learn from), an id once; the sample alone where no other split is
        public. Read once (by `ready_scoring`, beside the sandbox)."""
        if scored not in self._learnt:
            self._learnt[scored] = self._public_texts(scored)
        return self._learnt[scored]

    def _public_texts(self, scored: str) -> Texts:
        public = [name for name, split in self.spec.dataset.splits.items() if split.public]
        parts = [self.load(name) for name in [name for name in public if name != scored] or public]
        rows = {}  # id -> (text, label, time), the first split's
        for part in parts:
            for row in zip(part.ids, part.texts, part.labels, part.times, strict=True):
                rows.setdefault(row[0], row[1:])
        texts, labels, times = zip(*rows.values(), strict=True) if rows else ((), (), ())
        return Texts(list(rows), list(texts), np.array(labels, int), list(times), parts[0].categories, {}, "public")

    def export(self, data: Texts, out_dir: Path) -> list[Path]:
        """`<split>.csv` (id, time, text, label; UTF-8) and `<split>.npz` (the same columns as string arrays,
        plus `categories` in the contract's order)."""
        csv_path, npz_path = out_dir / f"{data.split}.csv", out_dir / f"{data.split}.npz"
        labels = [data.categories[y] for y in data.labels]
        with open(csv_path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "time", "text", "label"])
            writer.writerows(zip(data.ids, data.times, data.texts, labels, strict=True))
        np.savez_compressed(npz_path, ids=np.array(data.ids, str), times=np.array(data.times, str),
                            texts=np.array(data.texts, str), labels=np.array(labels, str),
                            categories=np.array(data.categories, str))
        return [csv_path, npz_path]

    def plots(self, data: Texts, outcome: Outcome) -> dict:
        from evaluation.families.text_classification.plots import text_plots

        return text_plots(self, data, outcome)
