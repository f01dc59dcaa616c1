"""The text-classification family (petition routing): data splits, contract, Korean-aware scenarios, metrics,
scoring against the TF-IDF baseline."""

import csv
import io
import json
import re

import numpy as np
import pytest

from evaluation.families import FAMILIES
from evaluation.families.text_classification.contract import decode_response
from evaluation.families.text_classification.family import _baseline_probs, _fit_baseline
from evaluation.families.text_classification.hangul import compose, decompose, is_syllable, to_keys
from evaluation.families.text_classification.metrics import ClassEval, class_f1
from evaluation.registry import METRICS, SCENARIOS
from pilots.spec import ScenarioSpec
from testbed.config import PROJECT_ROOT
from testbed.errors import ContractViolation
from tests.doubles import FakeSandbox

CATS = ["가", "나", "다"]


@pytest.fixture(scope="module")
def spec():
    from workflow.catalogue import get_pilot

    return get_pilot("petition-routing")


@pytest.fixture(scope="module")
def fam(spec):
    return FAMILIES.get("text-classification")(spec, PROJECT_ROOT / "data")


@pytest.fixture(scope="module")
def test_texts(fam):
    return fam.load("test")


def test_splits_follow_the_dates_and_never_share_a_petition(fam, spec, test_texts):
    train, sample = fam.load("train"), fam.load("sample")
    assert (len(train.texts), len(sample.texts), len(test_texts.texts)) == (11918, 915, 2587)
    assert max(train.times) < min(sample.times) <= max(sample.times) < min(test_texts.times)
    assert not set(train.ids) & set(test_texts.ids) and len(set(test_texts.ids)) == len(test_texts.ids)
    assert set(np.unique(test_texts.labels)) == set(range(17))
    assert set(test_texts.groups["length"]) == {"0-19", "20-39", "40_plus"}


def test_public_export_has_texts_labels_and_the_category_order(fam, tmp_path):
    paths = fam.export(fam.load("sample"), tmp_path)
    saved = np.load(tmp_path / "sample.npz")
    assert [p.name for p in paths] == ["sample.csv", "sample.npz"]
    assert list(saved["categories"]) == list(fam.options.categories) and len(saved["texts"]) == 915
    assert set(saved["labels"]) <= set(saved["categories"])


def answer(label, scores):
    return {"label": label, "scores": dict(zip(CATS, scores, strict=True))}


def test_decode_accepts_a_good_answer_and_names_each_violation():
    labels, probs = decode_response(json.dumps([answer("나", [0.2, 0.7, 0.1])]).encode(), 1, CATS)
    assert labels.tolist() == [1] and probs[0] == pytest.approx([0.2, 0.7, 0.1])
    bad = {"not JSON": b"{", "one object per text": json.dumps([]).encode(),
           "not one of the pilot's categories": json.dumps([answer("라", [0.2, 0.7, 0.1])]).encode(),
           "exactly the pilot's 3 categories": json.dumps([{"label": "가", "scores": {"가": 1.0}}]).encode(),
           "sum to 0.5000": json.dumps([answer("나", [0.1, 0.3, 0.1])]).encode(),
           "highest score": json.dumps([answer("가", [0.2, 0.7, 0.1])]).encode(),
           "probability in [0, 1]": json.dumps([answer("나", [-0.2, 1.1, 0.1])]).encode()}
    bad["probability in [0, 1] "] = b'[{"label": "\\ub098", "scores": {"\\uac00": 0, "\\ub098": 1' + b"0" * 400 + \
        b', "\\ub2e4": 0}}]'  # an integer too large for a float
    bad["probability in [0, 1]  "] = json.dumps([answer("나", [False, True, False])]).encode()
    bad["unknown: ['가 ']; missing: ['가']"] = json.dumps(
        [{"label": "나", "scores": {"가 ": 0.1, "나": 0.8, "다": 0.1}}]).encode()
    bad["one is not a number (str '0.2')"] = json.dumps([answer("나", ["0.2", "0.7", "0.1"])]).encode()
    bad["`label` and `scores` (got keys ['category', 'scores'])"] = json.dumps(
        [{"category": "나", "scores": dict(zip(CATS, [0.2, 0.7, 0.1], strict=True))}]).encode()
    for message, body in bad.items():
        with pytest.raises(ContractViolation, match=re.escape(message.strip())):
            decode_response(body, 1, CATS)
    good = json.dumps(answer("나", [0.2, 0.7, 0.1]))
    with pytest.raises(ContractViolation, match="text 2: `label` '가' is not the category with the highest score"):
        decode_response(f"[{good}, {good}, {json.dumps(answer('가', [0.2, 0.7, 0.1]))}]".encode(), 3, CATS)


def test_decode_in_bulk_agrees_with_the_answers():
    """Whole responses are checked at once: labels and normalised probabilities as each answer says."""
    rng = np.random.default_rng(5)
    raw = rng.dirichlet(np.ones(3), 500) * rng.uniform(0.995, 1.005, (500, 1))
    raw[::7] = np.eye(3)[rng.integers(0, 3, len(raw[::7]))]  # integers 0 and 1 in the JSON
    answers = [answer(CATS[int(r.argmax())], [int(v) if v in (0, 1) else float(v) for v in r]) for r in raw]
    labels, probs = decode_response(json.dumps(answers).encode(), len(answers), CATS)
    assert labels.tolist() == raw.argmax(1).tolist()
    assert probs == pytest.approx(raw / raw.sum(1, keepdims=True))


def test_hangul_arithmetic_round_trips_and_types_like_a_keyboard():
    for ch in "가값청원뷁힣":
        assert compose(*decompose(ch)) == ch
    assert decompose("값") == ("ㄱ", "ㅏ", "ㅄ") and compose("ㄱ", "ㅏ", "ㅃ") == "ㄱㅏㅃ"  # ㅃ is no final
    assert to_keys("청원합니다") == "cjddnjsgkqslek" and to_keys("괜찮아 OK") == "rhoscksgdk OK"


@pytest.mark.parametrize("name", ["typos", "missing_spaces", "jamo_noise", "informal_endings", "mixed_latin"])
def test_scenarios_are_seeded_leave_text_alone_at_zero_and_change_it_when_harsh(name, fam, test_texts):
    sc = ScenarioSpec(name=name, severity=1.0, seed=3)
    texts = test_texts.texts[:300]
    once, again = fam.perturb(test_texts, texts, sc), fam.perturb(test_texts, texts, sc)
    assert once == again and len(once) == len(texts)
    assert fam.perturb(test_texts, texts, ScenarioSpec(name=name, severity=0.0, seed=3)) == texts
    assert sum(a != b for a, b in zip(once, texts, strict=True)) > 100


def test_scenarios_do_what_they_say():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert SCENARIOS.get("missing_spaces")("반려견 학대 처벌 강화", 1.0, rng()) == "반려견학대처벌강화"
    typed = [SCENARIOS.get("mixed_latin")("청원 합니다", 1.0, np.random.default_rng(s)).split() for s in range(20)]
    assert {w for words in typed for w in words} == {"청원", "합니다", "cjddnjs", "gkqslek"}
    informal = SCENARIOS.get("informal_endings")("처벌을 강화해 주세요.", 1.0, rng())
    assert not informal.endswith(("주세요", "주세요.")) and informal.startswith("처벌을 강화")
    noisy = SCENARIOS.get("jamo_noise")("abc 청원합니다 123", 1.0, rng())
    assert noisy.startswith("abc ") and noisy.endswith(" 123") and noisy != "abc 청원합니다 123"
    assert all(is_syllable(c) or "\u3131" <= c <= "\u318e" for c in noisy[4:-4])


def test_metrics_on_a_hand_example():
    truth, pred = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1])
    probs = np.eye(3)[pred] * 0.6 + 0.4 / 3
    ev = ClassEval(truth, pred, probs, 3, bins=10)
    fns = METRICS.where(family="text-classification")
    assert fns["accuracy"](ev) == 0.5
    assert class_f1(ev) == pytest.approx([2 / 3, 0.5, 0.0])  # class 0: p 1, r .5; class 1: p 1/3, r 1
    assert fns["macro_f1"](ev) == pytest.approx((2 / 3 + 0.5) / 3)
    assert fns["ece"](ev) == pytest.approx(abs(0.5 - (0.6 + 0.4 / 3)))  # one bin, all at the same confidence


def test_macro_f1_counts_a_category_answered_but_absent_as_scikit_learn_does():
    """Macro-F1 averaged only over the true labels' categories: sending the mistakes to a category none of the items
    has cost less than sending them to a present one (found in review: at equal accuracy the former ranked first).
    It averages over the true and answered categories, as scikit-learn's default does."""
    from sklearn.metrics import f1_score

    truth = np.array([0, 0, 1, 1, 2, 2, 4, 4, 0, 1])
    absent = np.array([0, 3, 1, 3, 2, 2, 0, 1, 0, 1])  # category 3 is no item's
    present = np.where(absent == 3, 4, absent)
    macro = METRICS.where(family="text-classification")["macro_f1"]
    for pred in (absent, present):
        ev = ClassEval(truth, pred, np.eye(5)[pred], 5)
        assert macro(ev) == pytest.approx(f1_score(truth, pred, average="macro"))
    assert macro(ClassEval(truth, absent, np.eye(5)[absent], 5)) < macro(ClassEval(truth, present, np.eye(5)[present],
                                                                                    5))


def test_an_oracle_scores_perfectly_and_the_baseline_is_reported(fam, spec, test_texts):
    truth = dict(zip(test_texts.texts, test_texts.labels.tolist(), strict=False))
    cats = test_texts.categories

    def oracle(route, payload):
        out = []
        for text in payload["texts"]:
            k = truth.get(text, 0)
            out.append({"label": cats[k], "scores": {c: float(i == k) for i, c in enumerate(cats)}})
        return out

    job = type("J", (), {"phases": fam.phases(test_texts), "route": "/classify"})
    _fit_baseline.cache_clear()
    _baseline_probs.cache_clear()
    fam.ready_scoring(test_texts)  # what the harness runs beside the sandbox: the baseline (seconds)
    outcome = fam.score(test_texts, FakeSandbox(oracle).run(job))
    assert _fit_baseline.cache_info().misses == 1 and _baseline_probs.cache_info()[:2] == (1, 1)  # found, not redone
    assert not outcome.violations and outcome.coverage == 1.0
    expected = np.mean([truth[t] == y for t, y in zip(test_texts.texts, test_texts.labels, strict=True)])
    assert 0.999 < expected <= 1  # a repeated title filed under two categories
    assert outcome.metrics["clean"]["accuracy"] == pytest.approx(expected)
    assert outcome.metrics["clean"]["ece"] == pytest.approx(1 - expected)  # all confidence 1
    assert set(outcome.metrics) == {"clean", *(sc.name for sc in spec.scenarios)}
    assert outcome.under_load == outcome.metrics["clean"]  # the timed phases' answers, every text once
    assert outcome.metrics["typos"]["accuracy"] < 1.0  # perturbed titles are not in the oracle's table
    assert outcome.groups["category=pets"]["class_f1"] == 1.0 and "length=40_plus" in outcome.groups
    assert "macro_f1" not in outcome.groups["category=pets"]  # one category's texts: its class F1 says it
    groups = outcome.equity["groups"]  # accuracy per group with bootstrap intervals; rare categories too small
    assert outcome.equity["metric"] == "accuracy" and "category=pets" in groups
    assert any(not g["judged"] for g in groups.values()) and any(g["judged"] for g in groups.values())
    judged = next(g for g in groups.values() if g["judged"])
    assert judged["low"] <= judged["value"] <= judged["high"]
    assert outcome.baseline["name"] == fam.baseline_name and 0.3 < outcome.baseline["macro_f1"] < 0.6


def test_an_unanswered_text_counts_as_wrong(fam, test_texts):
    """Failing the requests that carry hard texts (within the error rate the service level allows) cannot raise
    a score: the texts of a failed request count as wrong, in the metrics as in the equity."""
    truth = dict(zip(test_texts.texts, test_texts.labels.tolist(), strict=False))
    cats, first_batch = test_texts.categories, []

    def oracle_failing_one_timed_batch(route, payload):
        if len(payload["texts"]) > 1 and not first_batch:  # after the single-text requests: offline's first batch
            first_batch.append(len(payload["texts"]))
            raise RuntimeError("boom")
        out = []
        for text in payload["texts"]:
            k = truth.get(text, 0)
            out.append({"label": cats[k], "scores": {c: float(i == k) for i, c in enumerate(cats)}})
        return out

    phases = fam.phases(test_texts)
    assert [p.name for p in phases[:3]] == ["single_stream", "offline", "clean"]
    outcome = fam.score(test_texts, FakeSandbox(oracle_failing_one_timed_batch).run(
        type("J", (), {"phases": phases, "route": "/classify"})))
    lost, n = first_batch[0], len(test_texts.texts)
    assert outcome.coverage == pytest.approx((n - lost) / n)  # the clean phase answered them all: only compared
    assert outcome.metrics["clean"]["accuracy"] <= (n - lost) / n + 1e-9


def test_the_label_is_scored_when_scores_tie(fam, test_texts):
    """The contract scores `label` and accepts a tie (within 1e-6) at the top: the harness scored the first tied
    category in the spec's order instead (answers tied 0.5/0.5 between their true category and another one,
    labelled right: accuracy 0.0, the same answers labelled the other way 1.0 for the categories listed first)."""
    cats = test_texts.categories

    def tied(route, payload):
        out = []
        for _ in payload["texts"]:
            out.append({"label": cats[1], "scores": {c: 0.5 if i in (0, 1) else 0.0 for i, c in enumerate(cats)}})
        return out

    phases = [p for p in fam.phases(test_texts) if p.name in ("single_stream", "offline")]  # the answers scored
    result = FakeSandbox(tied).run(type("J", (), {"phases": phases, "route": "/classify"}))
    violations: list[str] = []
    preds = fam.predictions(test_texts, result, violations)
    assert not violations
    outcome = fam.score_predictions(test_texts, preds)
    share = float(np.mean(test_texts.labels == 1))
    assert outcome.metrics["clean"]["accuracy"] == pytest.approx(share) and share > 0
    groups = outcome.groups
    assert groups["category=other"]["class_f1"] > 0 and groups["category=health_welfare"]["class_f1"] == 0


def _variant(spec, tmp_path, text: str, written_as: str = "utf-8", **task):
    """The petition family on a copy of its CSV rewritten as `text` (in `written_as`), with `task` changes."""
    path = tmp_path / spec.dataset.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(written_as))
    return FAMILIES.get("text-classification")(spec.model_copy(update={"task": {**spec.task, **task}}), tmp_path)


def test_a_cp949_file_reads_with_task_encoding_and_names_the_field_without_it(spec, tmp_path):
    """Many Korean public files are cp949: without `task.encoding` the error names that field; with it the
    split is the same as from the UTF-8 file."""
    from testbed.errors import SpecError

    def cp949(line: str) -> bool:
        try:
            return bool(line.encode("cp949"))
        except UnicodeEncodeError:
            return False

    lines = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig").splitlines()
    text = "\n".join(line for line in lines if cp949(line)) + "\n"
    with pytest.raises(SpecError, match="is not utf-8 text") as refused:
        _variant(spec, tmp_path, text, "cp949").load("sample")
    assert refused.value.where.endswith("task.encoding") and "cp949" in refused.value.fix
    read = _variant(spec, tmp_path, text, "cp949", encoding="cp949").load("sample")
    assert len(read.texts) > 100 and read.texts == _variant(spec, tmp_path, text).load("sample").texts


@pytest.mark.parametrize("edit, words", [
    (lambda lines: [lines[0], lines[1].replace("2021-01-20", "20/01/2021"), *lines[2:]],
     "line 2 (id '449459.0'): `expiryDate` is '20/01/2021', not a date"),
    (lambda lines: [lines[0], lines[1].replace("교통/건축/국토", ""), *lines[2:]], "rows with an empty `category`"),
    (lambda lines: [line.replace("title", "subject", 1) if i == 0 else line for i, line in enumerate(lines)],
     "has no column 'title'"),
])
def test_the_citys_bad_rows_are_named(spec, tmp_path, edit, words):
    from testbed.errors import SpecError

    lines = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig").splitlines()
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")) as refused:
        _variant(spec, tmp_path, "\n".join(edit(lines)) + "\n").load("test")
    assert "petition-routing" in refused.value.where and refused.value.fix


def test_a_bad_row_of_the_training_split_stops_the_test_splits_load(spec, tmp_path):
    """The baseline learns from the public splits, read beside the sandbox run: a row there with a
    category the spec does not list was found only once the bundle had run (minutes, for nothing). Loading the
    split to score reads the public splits too, so the spec's mistake stops the evaluation before any bundle."""
    from testbed.errors import SpecError

    lines = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig").splitlines()
    assert lines[-1].split(",")[3] < "2020-08-31"  # a training-split row
    lines[-1] = lines[-1].replace(lines[-1].split(",")[1], "미분류", 1)
    with pytest.raises(SpecError, match=r"split 'train' has labels that are not in task.categories: \['미분류'\]"):
        _variant(spec, tmp_path, "\n".join(lines) + "\n").load("test")


def test_a_repeated_id_belongs_to_its_first_rows_split_only(spec, tmp_path):
    """A repeated id keeps its first row: a later copy of a public training row dated inside the sequestered
    period put that item in both splits (a public answer among the scored ones)."""
    text = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    row = next(r for r in rows if r["expiryDate"] < "2020-08-31")  # a training row
    copy = io.StringIO()
    csv.DictWriter(copy, list(row)).writerow({**row, "expiryDate": "2020-11-15"})  # dated inside `test`
    item = row["id"]
    fam = _variant(spec, tmp_path, text.rstrip("\n") + "\n" + copy.getvalue())
    assert item in fam.load("train").ids
    assert item not in fam.load("test").ids


def test_the_baseline_learns_from_every_public_split_whatever_its_name(spec, tmp_path):
    """The baseline learned only from a split named `train`, else from the small sample: a spec naming its
    training split otherwise silently got a weaker baseline (and every bundle a larger skill over it)."""
    text = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig")
    splits = dict(spec.dataset.splits)
    renamed = spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"splits": {("history" if k == "train" else k): v for k, v in splits.items()}})})
    fam = _variant(renamed, tmp_path, text)
    public = {k for k, v in renamed.dataset.splits.items() if v.public}
    assert public == {"history", "sample"}
    expected = set(fam.load("history").ids) | set(fam.load("sample").ids)
    learnt = fam._training("test")
    assert set(learnt.ids) == expected and len(learnt.ids) == len(expected)
    assert len(learnt.texts) == len(learnt.labels) == len(expected)
    # a check on the public sample: the baseline never learns the texts it is scored on
    assert set(fam._training("sample").ids) == set(fam.load("history").ids)


def test_a_time_column_written_another_way_reads_with_task_time_format(spec, tmp_path):
    """Only ISO dates were read, and the error's fix (correct the row) could not help a file written `2020.11.15`
    throughout: `task.time_format` reads it, the error names that field, and a format that cannot read back a
    date is refused in the spec."""
    import pydantic

    from testbed.errors import SpecError

    text = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = io.StringIO()
    writer = csv.DictWriter(out, list(rows[0]))
    writer.writeheader()
    writer.writerows({**r, "expiryDate": r["expiryDate"][:10].replace("-", ".")} for r in rows)
    with pytest.raises(SpecError, match=r"not a date YYYY-MM-DD") as refused:
        _variant(spec, tmp_path, out.getvalue()).load("test")
    assert "task.time_format" in refused.value.fix
    dotted = _variant(spec, tmp_path, out.getvalue(), time_format="%Y.%m.%d").load("test")
    original = _variant(spec, tmp_path, text).load("test")
    assert dotted.ids == original.ids and dotted.times == original.times
    with pytest.raises(pydantic.ValidationError, match="not a strptime format"):
        _variant(spec, tmp_path, text, time_format="%H:%M")


def test_a_row_ending_before_its_fields_is_refused_naming_its_line(spec, tmp_path):
    """A row with fewer fields than the header (a text's comma unquoted, a cut line) got a wrong fix or a bare
    TypeError; it is refused naming the line and the missing field."""
    from testbed.errors import SpecError

    lines = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig").splitlines()
    lines[2] = ",".join(lines[2].split(",")[:2])
    with pytest.raises(SpecError, match=r"line 3: the row has 2 of the \d+ fields, and no `") as refused:
        _variant(spec, tmp_path, "\n".join(lines) + "\n").load("test")
    assert "give every row all the header's fields" in refused.value.fix


def test_an_id_column_that_does_not_identify_a_text_is_refused(spec, tmp_path):
    """A repeated id keeps its first row; an `id_column` naming a column that is not an id (a date here) silently
    kept one text a day. An id given to rows of different categories is refused, naming the column and the lines."""
    from testbed.errors import SpecError

    text = (PROJECT_ROOT / "data" / spec.dataset.path).read_text(encoding="utf-8-sig")
    words = r"`expiryDate` value '2021-01-20' is on line 2 \(category 교통/건축/국토\) and line 3 \(category 행정\)"
    with pytest.raises(SpecError, match=words) as refused:
        _variant(spec, tmp_path, text, id_column="expiryDate").load("test")
    assert "task.id_column" in refused.value.fix


@pytest.mark.parametrize("tied", [False, True], ids=["sure", "all-scores-tied"])
def test_a_title_lookup_in_the_boards_public_crawl_is_flagged_on_the_official_split(spec, test_texts, tmp_path,
                                                                                     tied):
    """The petition file is a byte-for-byte prefix of a public crawl (`data/korean-petitions/SOURCE.md`) that
    holds the test months' categories too: a bundle shipping that crawl as a title -> category table scored
    macro F1 0.999 on the official split in the real sandbox and passed every gate ("the `test` split's truth is
    not public"). That truth is public, so a near-perfect answer is a suspected lookup, however its scores tie (the
    label is scored: exactness read the top score, so all scores tied gave the first category and evaded the flag)."""
    from pilots.vendor import VendorProfile
    from tests.conftest import make_workspace
    from tests.test_defensible import LOOKUP_VENDOR, bento
    from workflow.evaluate import evaluate_bundle

    assert spec.dataset.splits["test"].truth_known
    table = dict(zip(test_texts.texts, (test_texts.categories[k] for k in test_texts.labels), strict=True))
    cats = test_texts.categories

    def lookup(route, payload):  # tied: every score the same, which the contract allows, so only `label` tells
        return [{"label": table[t], "scores": {c: 1.0 / len(cats) if tied else float(c == table[t]) for c in cats}}
                for t in payload["texts"]]

    route = {"name": "classify", "input": {"properties": {"texts": {"type": "array"}}, "required": ["texts"]}}
    ws = make_workspace(tmp_path)
    card = evaluate_bundle(spec, bento(tmp_path, [route]), VendorProfile(**LOOKUP_VENDOR), executor=FakeSandbox(lookup),
                           ws=ws, out_dir=ws.home / "card", submission="s").card
    gate = next(g for g in card.gates if g.name == "suspected_lookup")
    assert card.metrics["clean"]["macro_f1"] > 0.99 and not gate.passed and "SUSPECTED LOOKUP" in gate.detail
