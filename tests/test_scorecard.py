"""From evidence to criteria, gates and the total; the whole evaluation against the test doubles."""

import json
import math

import numpy as np
import pytest
from mlflow import MlflowClient

from evaluation.tracking import MlflowTracker, experiment_name, registered_model_name
from evaluation.tracking_memory import MemoryTracker
from pilots.vendor import VendorProfile
from sandbox.observe import Evidence
from sandbox.runner import classify
from testbed.errors import TestbedError
from tests.conftest import FORECAST_ROUTE
from tests.doubles import FakeSandbox
from workflow.evaluate import evaluate_bundle

VENDOR = VendorProfile(name="Acme", headquarters_district="Gangnam-gu", seoul_based=True, startup=True,
                       technology_field="computer_vision", model_description="x", licence="MIT")


def last_day(route, payload):
    """Seasonal naive, in the test double: the same hour a day earlier (NaN -> 0)."""
    history = np.nan_to_num(np.asarray(payload["history"], dtype=float))
    return history[:, -24:, 0].tolist()


def evaluate_fake(ws, bike_spec, fake_bento, tracker):
    bundle = fake_bento([FORECAST_ROUTE])
    return evaluate_bundle(bike_spec, bundle, VENDOR, executor=FakeSandbox(last_day), ws=ws, out_dir=ws.home / "out",
                           submission="bike-demand-fake", tracker=tracker)


@pytest.fixture
def tracker():
    return MemoryTracker()


@pytest.fixture
def evaluated(ws, bike_spec, fake_bento, tracker):
    return evaluate_fake(ws, bike_spec, fake_bento, tracker)


def test_scorecard_json_has_the_documented_keys(evaluated):
    card = json.loads(evaluated.files["scorecard.json"].read_text())
    for key in ("pilot", "submission", "bundle_sha256", "dataset_sha256", "harness_version", "verdict", "metrics",
                "groups", "performance", "criteria", "gates", "total_score", "mlflow_run_id"):
        assert key in card, key
    assert list(card["metrics"])[0] == "clean"
    assert set(card["criteria"]) == {"deep_learning_fit", "viability", "policy_fit", "local_strength_fit"}
    for crit in card["criteria"].values():
        assert {"score", "evidence"} <= set(crit)
    assert card["criteria"]["policy_fit"]["status"] == "pending_evaluator"
    assert card["criteria"]["policy_fit"]["score"] is None and card["total_is_provisional"]
    html = evaluated.files["scorecard.html"].read_text()
    assert "data:image/png;base64," in html and "pending evaluator" in html


def test_answer_independent_work_runs_beside_the_sandbox(ws, bike_spec, fake_bento, tracker, monkeypatch):
    """The model scan and the family's `ready_scoring` run in background threads, at a lower CPU priority,
    while the executor runs the job; the scoring waits for them."""
    import os
    import threading
    import time

    from evaluation.families.forecasting.family import Forecasting
    from sandbox.contention import BESIDE_NICE

    seen, main_nice = {}, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def slow_ready(self, data):
        seen["thread"] = threading.current_thread().name
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        time.sleep(0.5)
        seen["ready_at"] = time.monotonic()

    class Timed(FakeSandbox):
        def run(self, job):
            seen["run_at"] = time.monotonic()
            return super().run(job)

    monkeypatch.setattr(Forecasting, "ready_scoring", slow_ready)
    original = Forecasting.score_predictions
    monkeypatch.setattr(Forecasting, "score_predictions",
                        lambda self, *a: seen.setdefault("scored_at", time.monotonic()) and original(self, *a))
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=Timed(last_day), ws=ws,
                         out_dir=ws.home / "out", submission="bike-demand-fake", tracker=tracker)
    assert seen["thread"].startswith("evaluation-beside-sandbox") and ev.card.verdict == "completed"
    assert seen["nice"] == max(main_nice, BESIDE_NICE)  # that thread only:
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert seen["run_at"] < seen["ready_at"] <= seen["scored_at"]  # overlapped with the run; scoring waited


def test_the_job_is_built_while_the_executor_connects(ws, bike_spec, fake_bento, tracker, monkeypatch):
    """A local Ray takes seconds to start: once the checks have passed, the job is built meanwhile, in another
    thread (a slow connect and a slow data load each wait for the other to have begun)."""
    import threading

    from evaluation.families.forecasting.family import Forecasting

    loading, connecting = threading.Event(), threading.Event()
    original = Forecasting.load

    def load(self, split):
        loading.set()
        assert connecting.wait(10), "the job was built before the executor began connecting"
        return original(self, split)

    class SlowToConnect(FakeSandbox):
        def connect(self):
            connecting.set()
            assert loading.wait(10), "connected before the job was being built"

    monkeypatch.setattr(Forecasting, "load", load)
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=SlowToConnect(last_day), ws=ws,
                         out_dir=ws.home / "out", submission="bike-demand-fake", tracker=tracker)
    assert ev.card.verdict == "completed"


def test_a_refused_evaluation_never_starts_the_executor(ws, bike_spec, fake_bento, tracker, evaluated):
    """A user's mistake (here: evaluating again without a reason) is said at once: no Ray is started for it."""
    from testbed.errors import TestbedError

    class MustNotConnect(FakeSandbox):
        def connect(self):
            pytest.fail("the executor was started for a refused evaluation")

    with pytest.raises(TestbedError, match="already has its official evaluation"):
        evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=MustNotConnect(last_day), ws=ws,
                        out_dir=ws.home / "out", submission="bike-demand-fake", tracker=tracker)


def test_photographs_are_embedded_as_jpeg_and_charts_as_png(evaluated, tmp_path):
    import matplotlib.pyplot as plt

    from evaluation.report import render_plots, write_report

    photo, ax = plt.subplots()
    ax.imshow(np.random.default_rng(0).random((64, 64, 3)))
    chart, ax = plt.subplots()
    ax.plot([1, 2])
    files = write_report(evaluated.card, render_plots(evaluated.card, {"frames": photo, "curve": chart}), tmp_path, "t")
    assert files["plots/frames.jpg"].read_bytes()[:3] == b"\xff\xd8\xff"
    assert files["plots/curve.png"].read_bytes()[:4] == b"\x89PNG"
    html = files["scorecard.html"].read_text()
    assert 'alt="frames" src="data:image/jpeg;base64,/9j/' in html
    assert 'alt="curve" src="data:image/png;base64,iVBOR' in html


def test_the_seasonal_naive_has_no_skill_and_fails_the_mase_gate(evaluated):
    card = evaluated.card
    assert card.criteria["deep_learning_fit"].score == 0  # equals the harness's own baseline
    assert card.metrics["clean"]["mase"] == pytest.approx(card.baseline["mase"])
    gates = {g.name: g.passed for g in card.gates}
    assert gates["verdict"] and gates["isolation"] and not gates["threshold:mase"] and not card.passed
    assert card.criteria["local_strength_fit"].status == "pending_evaluator"  # claims wait for a review
    # policy fit and local strength wait for an evaluator: they count 0 until then
    assert card.criteria["policy_fit"].score is None and card.total_is_provisional
    scored = sum(card.weights[k] * card.criteria[k].score for k in ("deep_learning_fit", "viability"))
    assert card.total_score == pytest.approx(scored / sum(card.weights.values()), abs=0.01)


def test_the_tracker_gets_one_finished_official_run(evaluated, tracker):
    (run,) = tracker.runs.values()
    assert run.status == "FINISHED" and run.run_id == evaluated.card.mlflow_run_id
    assert run.tags["testbed.official"] == "true" and run.tags["testbed.verdict"] == "completed"
    assert run.params["bundle_sha256"] == evaluated.card.bundle_sha256
    assert run.metrics["clean/mase"] == pytest.approx(evaluated.card.metrics["clean"]["mase"])
    # per group, the equity metric only (the others are in scorecard.json): one metric per group
    groups = {k: v for k, v in run.metrics.items() if k.startswith("group/")}
    assert len(groups) == len(evaluated.card.groups) > 1 and all(k.endswith("/mase") for k in groups)
    some = next(iter(evaluated.card.groups))
    assert groups[f"group/{some.replace('=', '/')}/mase"] == pytest.approx(evaluated.card.groups[some]["mase"])
    assert {"scorecard.json", "scorecard.html"} <= set(run.artifacts)
    card, logged = evaluated.card, {}  # README: every scenario's metrics, the retentions, the timed answers', ...
    logged |= {f"{scenario}/{m}": v for scenario, vals in card.metrics.items() for m, v in vals.items()}
    logged |= {f"retention/{k}": v for k, v in card.retention.items()}
    logged |= {f"under_load/{m}": v for m, v in card.under_load.items()}
    logged |= {f"latency_ms/{q}": v for q, v in card.performance["latency_ms"].items()}
    logged |= {f"criteria/{k}": c.score for k, c in card.criteria.items()}
    logged |= {"throughput_items_per_s": card.performance["throughput_items_per_s"], "total_score": card.total_score}
    assert len(card.metrics) >= 2 and card.retention and card.under_load and len(card.criteria) == 4
    assert {k: run.metrics.get(k) for k in logged} == pytest.approx(logged), set(logged) - set(run.metrics)
    assert tracker.versions == [{"pilot": "bike-demand", "run_id": run.run_id,
                                 "bundle_sha256": evaluated.card.bundle_sha256}]
    assert [r.run_id for r in tracker.official_runs("bike-demand")] == [run.run_id]


@pytest.mark.slow
def test_mlflow_records_the_evaluation(ws, bike_spec, fake_bento):
    evaluated = evaluate_fake(ws, bike_spec, fake_bento, MlflowTracker(ws))
    client = MlflowClient(ws.tracking_uri)
    exp = client.get_experiment_by_name(experiment_name("bike-demand"))
    run = client.get_run(evaluated.card.mlflow_run_id)
    assert run.info.experiment_id == exp.experiment_id and run.info.status == "FINISHED"
    assert run.data.params["bundle_sha256"] == evaluated.card.bundle_sha256
    assert run.data.params["dataset_sha256"] == evaluated.card.dataset_sha256
    assert run.data.metrics["clean/mase"] == pytest.approx(evaluated.card.metrics["clean"]["mase"])
    assert run.data.tags["testbed.verdict"] == "completed"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"scorecard.json", "scorecard.html", "sandbox.log", "plots", "bento"} <= artifacts
    versions = client.search_model_versions(f"name='{registered_model_name('bike-demand')}'")
    assert len(versions) == 1 and versions[0].tags["testbed.submission"] == "bike-demand-fake"
    assert versions[0].run_id == run.info.run_id


class SmallPages:
    """An MLflow client whose searches answer at most 2 a page, as a server with a smaller page does."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def search_runs(self, *args, max_results=1000, **kw):
        return self.client.search_runs(*args, max_results=min(max_results, 2), **kw)

    def search_model_versions(self, *args, max_results=10000, **kw):
        return self.client.search_model_versions(*args, max_results=min(max_results, 2), **kw)


@pytest.mark.slow
def test_every_official_run_is_found_however_many_the_store_holds(ws):
    """The store answers a search a page at a time (MLflow's SQL store at most 5,000 runs a query, a server
    perhaps fewer): the official runs were read from the first page only, ordered oldest first, so past it the
    newest submissions had no official evaluation (the leaderboard lost them, and a campaign evaluated them again:
    two official runs each). Here pages of 2."""
    tracker = MlflowTracker(ws)
    client = tracker.client
    exp = tracker.experiment_id("bike-demand")
    for i in range(5):
        run = client.create_run(exp, tags={"testbed.submission": f"bike-demand-{i:012x}", "testbed.official": "true",
                                           "testbed.evaluation": "official", "testbed.pilot": "bike-demand"})
        client.set_terminated(run.info.run_id, status="FINISHED")
    tracker.__dict__["client"] = SmallPages(client)
    assert len(tracker.official_runs("bike-demand")) == 5
    assert tracker.official_run("bike-demand", f"bike-demand-{4:012x}").run_id == run.info.run_id


@pytest.mark.slow
def test_every_registered_version_is_found_however_many_the_store_holds(ws):
    """The registered versions were read from the first page only (MLflow's SQL store gives 10,000 a query):
    past it, a bundle evaluated again got a second version, and promotion found no version holding its run.
    Here pages of 2, newest first as the store orders them, so the oldest version is on the last page."""
    from types import SimpleNamespace

    from workflow.promote import Production

    tracker = MlflowTracker(ws)
    client = tracker.client
    name, runs = registered_model_name("bike-demand"), []
    for i in range(5):
        runs.append(client.create_run(tracker.experiment_id("bike-demand")).info.run_id)
        card = SimpleNamespace(pilot="bike-demand", bundle_sha256=f"{i:064x}", submission=f"bike-demand-{i:012x}",
                               verdict="completed", passed=True)
        tracker._register(runs[-1], card)
    assert len(every := client.search_model_versions(f"name='{name}'")) == 5
    production = Production(ws)
    production.client = tracker.__dict__["client"] = SmallPages(client)
    tracker._register(runs[0], SimpleNamespace(**{**vars(card), "bundle_sha256": f"{0:064x}"}))
    assert len(client.search_model_versions(f"name='{name}'")) == 5  # the same bytes: no second version
    oldest = min(every, key=lambda v: int(v.version))
    assert production._version_of(name, runs[0], "f" * 64) == str(oldest.version)


@pytest.mark.slow
def test_two_processes_recording_a_pilots_first_runs_at_once_both_record(ws):
    """Both found no experiment for the pilot and both created it: the second failed (MlflowException, already
    exists) and lost its evaluation; measured with two processes released together, in 6 trials of 6."""
    tracker, other = MlflowTracker(ws), MlflowTracker(ws)
    real = tracker.client.get_experiment_by_name
    looked = []

    def not_yet(name):  # looked before the other process created it
        looked.append(name)
        return None if len(looked) == 1 else real(name)

    made = other.experiment_id("bike-demand")
    tracker.client.get_experiment_by_name = not_yet
    assert tracker.experiment_id("bike-demand") == made


def test_a_contract_violation_is_a_verdict_and_a_failed_gate(ws, bike_spec, fake_bento):
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR,
                         executor=FakeSandbox(lambda r, p: [[1.0] * 5 for _ in p["history"]]), ws=ws,
                         out_dir=ws.home / "o", submission="x", split="sample")
    assert ev.card.verdict == "contract_violation" and "shape" in ev.card.verdict_reason and not ev.card.passed
    assert ev.card.mlflow_run_id is None and ev.card.criteria["viability"].score == 0


def test_unsafe_runs_fail_the_isolation_gate(ws, bike_spec, fake_bento):
    sandbox = FakeSandbox(last_day)  # reports the isolation the job asked for, as the runner does
    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=sandbox, ws=ws,
                         out_dir=ws.home / "o", submission="x", split="sample", isolated=False)
    assert [job.isolated for job in sandbox.jobs] == [False]  # the sandbox was told to run without isolation
    assert not next(g for g in ev.card.gates if g.name == "isolation").passed and not ev.card.isolated


@pytest.mark.parametrize("kwargs, verdict", [
    ({"returncode": None, "timed_out": False, "stopped_by_us": True}, "completed"),
    ({"returncode": None, "timed_out": False, "stopped_by_us": True,
      "evidence": Evidence(network={"TcpActiveOpens": 1})}, "sandbox_violation"),
    ({"returncode": 128 + 31, "timed_out": False, "stopped_by_us": False}, "sandbox_violation"),  # SIGSYS: seccomp
    ({"returncode": None, "timed_out": False, "stopped_by_us": True, "evidence": Evidence(harness_paths=["/d/x"])},
     "sandbox_violation"),
    ({"returncode": 137, "timed_out": False, "stopped_by_us": False, "evidence": Evidence(oom_kills=1)},
     "resource_limit"),
    ({"returncode": None, "timed_out": False, "stopped_by_us": True, "evidence": Evidence(pid_limit_hits=3)},
     "resource_limit"),
    ({"returncode": 128 + 24, "timed_out": False, "stopped_by_us": False}, "resource_limit"),  # SIGXCPU
    ({"returncode": -25, "timed_out": False, "stopped_by_us": False, "isolated": False}, "resource_limit"),  # SIGXFSZ
    ({"returncode": None, "timed_out": False, "stopped_by_us": True, "evidence": Evidence(oversize=["p: 9 bytes"])},
     "contract_violation"),
    ({"returncode": None, "timed_out": True, "stopped_by_us": True}, "timeout"),
    ({"returncode": 3, "timed_out": False, "stopped_by_us": False}, "crashed"),
    ({"returncode": 137, "timed_out": False, "stopped_by_us": False}, "crashed"),  # SIGKILL, no OOM counted
])
def test_verdicts(kwargs, verdict):
    assert classify(**kwargs)[0] == verdict


def test_no_nan_leaks_into_gate_details(evaluated):
    assert all("nan" not in g.detail for g in evaluated.card.gates)
    assert not math.isnan(evaluated.card.total_score)


def test_the_warm_up_beside_the_sandbox_compiles_the_page_template(monkeypatch):
    """`warm_up` (run while the sandbox runs) leaves the scorecard's template compiled for `write_report`."""
    from evaluation import report

    monkeypatch.setattr(report, "_warming", None)
    report._env.cache.clear()
    report.warm_up()
    report._warming.join()
    assert [name for _, name in report._env.cache.keys()] == ["scorecard.html.j2"]


@pytest.mark.parametrize("verdict, answer", [("crashed", None), ("completed", 1e308)])
def test_a_scorecard_with_nan_or_infinite_metrics_reads_back(ws, bike_spec, fake_bento, verdict, answer):
    """A run that did not complete has NaN metrics; answers as large as the contract allows make an error
    infinite. JSON writes both as null, and the scorecard reads back (every command that shows or audits a run
    reads it) with NaN there."""
    from evaluation.scorecard import Scorecard

    def handler(route, payload):
        if answer is None:
            raise RuntimeError("no answer")
        return [[answer] * 24 for _ in payload["history"]]

    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=FakeSandbox(handler, verdict),
                         ws=ws, out_dir=ws.home / "o", submission="x", split="sample")
    text = ev.files["scorecard.json"].read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)  # plain JSON
    back = Scorecard.model_validate_json(text)
    assert back.verdict == verdict and back.total_score == ev.card.total_score
    metric = "mase" if answer is None else "mae"
    assert not math.isfinite(ev.card.metrics["clean"][metric]) and math.isnan(back.metrics["clean"][metric])


def test_answers_as_large_as_a_float_allows_still_draw_the_page(ws, bike_spec, fake_bento):
    """A bundle answering the largest float on clean inputs (and sanely on the scenario's) makes the clean errors
    infinite (and the retention unknown: nothing to retain): every plot is still drawn (it failed the evaluation
    after the run, no scorecard)."""
    def handler(route, payload):
        if np.isnan(np.asarray(payload["history"], dtype=float)).any():  # the missing-hours scenario
            return last_day(route, payload)
        return [[1.7e308] * 24 for _ in payload["history"]]

    ev = evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=FakeSandbox(handler), ws=ws,
                         out_dir=ws.home / "o", submission="x", split="sample")
    assert ev.card.metrics["clean"]["mase"] == math.inf and math.isnan(ev.card.retention["missing_hours"])
    plots = {p.stem for p in (ws.home / "o" / "plots").iterdir()}
    assert {"forecast_vs_actual", "groups", "latency"} <= plots and "retention" not in plots  # none known
    assert ev.files["scorecard.html"].read_text().count("data:image/png;base64,") == len(plots)

def test_groups_without_a_value_are_listed_last_and_the_page_reads_back(evaluated):
    """A group whose error overflowed is infinite, and `scorecard.json` writes it null: the page drawn again from
    the file (a review's refresh, `testbed scorecard --html`) failed with a TypeError; a NaN value (the plain
    per-group values) sorted anywhere, and could push the worst groups out of the PER_KEY shown."""
    from evaluation.report import render_html, render_plots, shown_groups
    from evaluation.scorecard import Scorecard

    card = evaluated.card.model_copy(deep=True)
    card.equity["groups"]["hour_band=night"] |= {"value": math.inf, "low": math.nan, "high": math.nan}
    back = Scorecard.model_validate_json(card.model_dump_json())
    assert back.equity["groups"]["hour_band=night"]["value"] is None
    names = [name for name, _ in shown_groups(back)["hour_band"]]
    assert names[-1] == "hour_band=night" and names[0] == "hour_band=evening_peak"  # the worst measured first
    plots = render_plots(back, {})
    assert "hour_band=night" in render_html(back, {k: data for k, (_, data) in plots.items()}, "t")
    back.equity = {"metric": "mase", "goal": "min"}  # a family without intervals
    back.groups = {f"hour={h}": {"mase": math.nan if h % 3 == 0 else float(h)} for h in range(20)}
    assert [n for n, _ in shown_groups(back)["hour"]] == [f"hour={h}" for h in (19, 17, 16, 14, 13, 11, 10, 8, 7,
                                                                                  5, 4, 2)]

def test_a_gate_never_shows_a_value_as_its_requirement_when_it_is_not(bike_spec):
    """Rounded to the detail's digits, a failing MASE of 1.00004 read "1 (max 1.0)", an agreement of 94.996%
    "95.0% (min 95%)", a skill of 0.9496 "0.950 (flag at 0.95)": more digits where rounding meets the bound."""
    from evaluation.criteria import against, load_gate, lookup_gate, threshold_gates
    from evaluation.family import Outcome

    mase = threshold_gates(bike_spec, {"mase": 1.00004})[0]
    assert not mase.passed and mase.detail == "1.00004 (max 1.0)"
    assert threshold_gates(bike_spec, {"mase": 0.9871})[0].detail == "0.9871 (max 1.0)"  # as before
    outcome = Outcome(metrics={"clean": {"mase": 0.5}}, groups={}, baseline={}, under_load={"mase": 0.5},
                      agreement=0.94996, exactness=0.989996)
    load = load_gate(bike_spec, "mase", {"mase": 0.5}, outcome)
    assert not load.passed and load.detail.endswith("94.996% of the items answered alike while timed and in the "
                                                    "untimed clean phase (min 95%); the scores are the timed "
                                                    "answers' (mase 0.5)")  # not "0.5 timed, 0.5 clean": both timed
    lookup = lookup_gate(bike_spec, "test", outcome, 0.9496)
    assert lookup.passed and "exactness 0.989996 (flag at 0.99), skill over baseline 0.9496 (flag at" in lookup.detail
    assert against(1 / 99, 0.01, ".1%") == "1.01%" and against(0.01, 0.01, ".1%") == "1.0%"
    assert against(math.inf, 1.0, ".4g") == "inf" and against(math.nan, 1.0, ".4g") == "nan"
    assert against(-1.8e300, 0.95, ".3f") == "-1.8e+300"  # a skill of an absurd forecast: not 300 digits

def test_a_name_the_bundle_chose_is_shown_cut_and_written_out_on_the_page(evaluated):
    """The static scan's summary names the largest tensors as the file names them: a safetensors header (a few KiB
    in the archive) named one with 4 MB of letters, and the page grew by 4 MB in one unbroken line; a
    bidirectional override in it turned the rest of the evidence around."""
    from evaluation.report import render_html

    card = evaluated.card.model_copy(deep=True)
    name = "\u202e" + "w" * 4_000_000
    card.criteria["deep_learning_fit"].evidence["deep_learning_model"] = {"path": "m.safetensors",
                                                                          "summary": f"largest: {name} 32×32"}
    html = render_html(card, {}, "t")
    assert len(html) < len(render_html(evaluated.card, {}, "t")) + 1000
    assert "largest: \\\\u202e" + "w" * 290 + "… (4,000,016 characters)" in html and "\u202e" not in html


def test_markup_from_a_vendor_or_the_data_is_shown_as_text_on_the_page(evaluated):
    """What the vendor chose (its name, what its service printed) and the data's group labels reach the page as
    text: an evaluator opening the scorecard runs none of it."""
    from evaluation.report import render_html

    card = evaluated.card.model_copy(deep=True)
    attack = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    card.vendor, card.log_tail = attack, [attack]
    card.equity["groups"][f"hour_band={attack}"] = card.equity["groups"].pop("hour_band=night")
    html = render_html(card, {}, "t")
    assert "<script" not in html and "<img src=x" not in html and "onerror=\"" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # vendor, log tail, group row


def test_a_group_label_with_dollar_signs_is_drawn_as_written(evaluated):
    """Group labels are the data's (a station, a category): matplotlib read "$…$" in them as mathematics, so a
    label such as "Exit $^$" failed the groups chart (ValueError), and with it the evaluation after the run."""
    from evaluation.report import render_plots

    card = evaluated.card.model_copy(deep=True)
    groups = card.equity["groups"]
    groups["hour_band=Exit $^$"] = groups.pop("hour_band=night") | {"value": 9.0, "low": 8.5, "high": 9.5}
    assert {"groups", "retention", "latency"} <= set(render_plots(card, {}))

def test_a_group_whose_items_all_err_alike_is_drawn(evaluated):
    """5,784 items with the same error (a detector missing one of six classes in every frame of a group, a
    forecast off by as much at every hour): the interval collapses onto the value, rounded apart from it by 1e-17
    on the wrong side, and the groups chart failed ('xerr' must not contain negative values), the evaluation with
    it."""
    from evaluation.equity import assess_groups
    from evaluation.report import render_plots

    alike = assess_groups({"k": np.array(["a"] * 5784)}, metric="mase", goal="min", values=np.full(5784, 0.1),
                          units=np.arange(5784) // 24)["groups"]["k=a"]  # 241 windows of 24 hours
    assert alike["low"] > alike["value"]
    card = evaluated.card.model_copy(deep=True)
    card.equity["groups"]["hour_band=night"] |= {k: alike[k] for k in ("value", "low", "high")}
    assert "groups" in render_plots(card, {})

def test_the_in_service_block_never_shows_a_value_rounded_onto_its_service_level(evaluated):
    """Four significant digits showed a p95 of 250.04 ms (a histogram estimate) as "250 ms" beside the service
    level's "250 ms", marked not met."""
    from evaluation.report import render_html

    rows = [{"measure": "latency p95", "value": 250.04, "unit": "ms", "target": 250.0, "met": False},
            {"measure": "latency p50", "value": 80.123, "unit": "ms", "target": None, "met": None},
            {"measure": "error rate", "value": math.nan, "unit": "", "target": 0.01, "met": None}]
    in_service = {"model": "m", "version": "1", "bundle_sha256": "0" * 64, "observed_at": "now", "window_s": 60.0,
                  "rows": rows, "requests": 10, "errors": 0}
    html = render_html(evaluated.card, {}, "t", in_service=in_service)
    assert '<td class="num">250.04 ms</td><td class="num">250 ms</td>' in html
    assert '<td class="num">80.12 ms</td><td class="num">—</td>' in html  # no level: a dash, not "— ms"
    assert '<td class="num">—</td><td class="num">0.01 </td>' in html and "— ms" not in html


def test_in_service_json_is_strict_json_and_its_page_reads_it_back(evaluated):
    """`testbed monitor` with no requests measured has NaN values: in_service.json (which every page refresh
    reads back) and `--json` wrote them as `NaN`, which strict parsers (jq, browsers) refuse; they are null."""
    from evaluation.report import render_html
    from testbed.jsonio import strict_dumps

    rows = [{"measure": "latency p95", "value": math.nan, "unit": "ms", "target": 250.0, "met": None},
            {"measure": "error rate", "value": math.inf, "unit": "", "target": 0.01, "met": None}]
    in_service = {"model": "m", "version": "1", "bundle_sha256": "0" * 64, "observed_at": "now", "window_s": 60.0,
                  "rows": rows, "requests": 0, "errors": 0}

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    back = json.loads(strict_dumps(in_service), parse_constant=refuse)
    assert [r["value"] for r in back["rows"]] == [None, None]
    html = render_html(evaluated.card, {}, "t", in_service=back)
    assert '<td class="num">—</td><td class="num">250 ms</td>' in html

def test_a_scorecard_is_put_in_place_only_once_its_run_is_finished(ws, bike_spec, fake_bento, monkeypatch):
    """A process killed while the run is being recorded leaves no scorecard that looks finished: the previous
    one (here none) stays in place until the tracker has finished the run."""
    tracker = MemoryTracker()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracker, "finish", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=FakeSandbox(last_day), ws=ws,
                        tracker=tracker, out_dir=ws.home / "card", submission="x")
    assert not (ws.home / "card").exists()


def test_an_evaluation_without_the_sandbox_is_never_a_submissions_official_one(ws, bike_spec, fake_bento, tracker):
    sandbox = FakeSandbox(last_day)
    with pytest.raises(TestbedError, match="official one for good") as refused:
        evaluate_bundle(bike_spec, fake_bento([FORECAST_ROUTE]), VENDOR, executor=sandbox, ws=ws, tracker=tracker,
                        out_dir=ws.home / "o", submission="x", isolated=False)
    assert "--reevaluate" in refused.value.fix and not tracker.runs and not (ws.home / "o").exists()
    assert not sandbox.jobs  # refused before anything ran


def test_a_crash_names_the_vendors_own_error_not_bentomls_wrapper():
    """BentoML wraps a failed import in its ImportServiceError, logged last: the cause shown is the import error,
    with what to declare."""
    from evaluation.criteria import _cause

    log = """Traceback (most recent call last):
ModuleNotFoundError: No module named 'pv-d_dep'
bentoml.exceptions.ImportServiceError: Failed to import module "pv-d_dep": No module named 'pv-d_dep'
ModuleNotFoundError: No module named 'pandas.core'
bentoml.exceptions.ImportServiceError: Failed to import module "service": No module named 'pandas.core'
bentoml.exceptions.ImportServiceError: Failed to load bento or import service 'pv-d_dep:ij4ovvhomktwiax4'.
If you are attempting to import bento by tag: 'Failed to import module "service": No module named 'pandas.core'
"""
    cause = _cause(log)
    assert cause.startswith("ModuleNotFoundError: No module named 'pandas.core'")
    assert "provides `pandas` under `python.packages` in bentofile.yaml" in cause
    assert _cause("RuntimeError: model file missing\n") == "RuntimeError: model file missing"
    assert _cause("bentoml.exceptions.BentoMLException: only BentoML's\n").startswith("bentoml.exceptions")


def test_a_contract_violation_seen_in_several_phases_is_said_once():
    from evaluation.criteria import _violations

    said = _violations(["single_stream: text 0: bad keys", "offline: text 0: bad keys", "clean: text 0: bad keys",
                        "missing_hours: NaN forecast", "clean: text 0: bad keys"])
    assert said == "text 0: bad keys (in single_stream, offline, clean); NaN forecast (in missing_hours)"


def test_a_chart_that_cannot_be_drawn_is_left_out_and_the_scorecard_stands(ws, bike_spec, fake_bento, tracker,
                                                                          monkeypatch):
    """Charts draw what a run's answers and the data hold: values no chart expected broke one after another
    (an overflow, '$' in a label, an interval rounded past its value), and each failed the finished evaluation
    with no scorecard. Whatever a chart raises, it is left out with a warning; the other charts, the page and the
    record stand."""
    import evaluation.report
    from evaluation.families.forecasting.family import Forecasting

    def broken(*args, **kwargs):
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(Forecasting, "plots", broken)
    monkeypatch.setattr(evaluation.report, "_groups_figure", broken)
    with pytest.warns(UserWarning) as caught:
        ev = evaluate_fake(ws, bike_spec, fake_bento, tracker)
    said = " ".join(str(w.message) for w in caught)
    assert "forecasting charts could not be drawn (ValueError: Axis limits" in said and "groups chart" in said
    assert {"plots/retention.png", "plots/latency.png", "scorecard.json", "scorecard.html"} <= set(ev.files)
    assert not any("groups" in name or "forecast" in name for name in ev.files)
    assert tracker.runs[ev.card.mlflow_run_id].status == "FINISHED"
