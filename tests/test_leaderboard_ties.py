"""Equal totals are a tie on the leaderboard: the order runs come in, or a resubmission of the same model (new
bytes, a newer run), never puts one above the other."""

from evaluation.leaderboard import leaderboard_rows
from evaluation.tracking import RunRecord
from evaluation.tracking_memory import MemoryTracker


def official(name: str, started: int, total: float, mase: float, passed: bool = True) -> RunRecord:
    tags = {"testbed.submission": name, "testbed.vendor": name, "testbed.verdict": "completed",
            "testbed.passed": "true" if passed else "false", "testbed.official": "true", "testbed.pilot": "bike-demand"}
    return RunRecord(f"run-{name}", tags, {"total_score": total, "clean/mase": mase}, "FINISHED", started)


def test_equal_totals_share_a_rank_the_better_model_listed_first_then_the_earlier(bike_spec):
    """Totals saturate (full deep-learning credit at `full_credit_skill`, full viability once every threshold and
    the service level are met), so two strong models often tie at the same provisional total."""
    runs = [official("a", 1, 60.0, 0.50), official("b", 2, 60.0, 0.55), official("a-again", 3, 60.0, 0.50),
            official("rejected", 4, 70.0, 0.10, passed=False), official("worse", 5, 59.99, 0.40)]
    newest_first = sorted(runs, key=lambda r: -r.start_time)  # as the tracker returns them
    rows = leaderboard_rows(bike_spec, MemoryTracker(), newest_first)
    assert [(r["submission"], r["rank"]) for r in rows] == [("a", 1), ("a-again", 1), ("b", 1), ("worse", 4),
                                                            ("rejected", 5)]
    assert leaderboard_rows(bike_spec, MemoryTracker(), runs) == rows  # whatever order the runs come in


def test_the_reviewed_leaderboard_can_rank_the_same_way(bike_spec):
    """`rank_rows` with the reviewed rows' own order (rejected by an evaluator after the others): ties still
    share a rank."""
    from evaluation.leaderboard import rank_rows

    rows = [{"submission": s, "passed": True, "total_score": t, "mase": m, "review": r}
            for s, t, m, r in [("new", 70.0, 0.6, "approve"), ("old", 70.0, 0.5, "approve"),
                               ("no", 90.0, 0.1, "reject")]]
    ranked = rank_rows(bike_spec, rows, then=lambda r: (r["review"] == "reject",))
    assert [(r["submission"], r["rank"]) for r in ranked] == [("old", 1), ("new", 1), ("no", 3)]


def test_an_altered_record_is_ranked_last_of_all(bike_spec):
    """README: an altered record is ranked last. It kept its logged total (perhaps the altered number) and was
    sorted among the failed runs by it: above genuine failures, rejected runs and runs of another spec."""
    from evaluation.leaderboard import rank_rows

    rows = [{"submission": s, "passed": p, "total_score": t, "mase": 0.5, "review": r, **extra}
            for s, p, t, r, extra in [("altered", False, None, "ALTERED record", {"altered": True}),
                                      ("failed", False, 60.0, "pending", {}), ("rejected", False, 95.0, "reject", {}),
                                      ("old-spec", True, 80.0, "approve", {"spec_changed": True}),
                                      ("good", True, 70.0, "approve", {})]]
    ranked = rank_rows(bike_spec, rows, then=lambda r: (r["review"] == "reject",))
    assert [r["submission"] for r in ranked] == ["good", "failed", "rejected", "old-spec", "altered"]


def test_the_table_shows_the_totals_to_the_hundredth_they_are_ranked_on(bike_spec):
    """Three significant digits showed 59.99 (rank 2) as 60, the total of rank 1, and 85.65 as 85.67."""
    from rich.console import Console

    from evaluation.leaderboard import leaderboard_table

    runs = [official("a", 1, 60.0, 0.50), official("worse", 2, 59.99, 0.40), official("x", 3, 85.67, 0.40),
            official("y", 4, 85.65, 0.41)]
    console = Console(width=200, record=True)
    console.print(leaderboard_table(bike_spec, leaderboard_rows(bike_spec, MemoryTracker(), runs)))
    shown = [line.split("│")[11].strip() for line in console.export_text().splitlines() if line.startswith("│")]
    assert shown == ["85.67*", "85.65*", "60.00*", "59.99*"]


def test_runs_scored_under_another_version_of_the_spec_are_ranked_after_with_a_warning(bike_spec):
    """An edit of the catalogue during a call (other weights, thresholds, service level) must not decide the
    ranking: a run whose logged `pilot_spec_sha256` is not the spec's is ranked after every run of the spec,
    whatever its total, marked 'other spec', with a warning naming it and the fix."""
    import warnings

    from rich.console import Console

    from evaluation.leaderboard import leaderboard_table

    edited = bike_spec.model_copy(update={"service_level": bike_spec.service_level.model_copy(
        update={"p95_latency_ms": 10_000})})
    assert edited.sha256() != bike_spec.sha256() and bike_spec.sha256() == bike_spec.model_copy().sha256()
    runs = [official("now", 1, 60.0, 0.50), official("then", 2, 80.0, 0.40), official("same", 3, 50.0, 0.6)]
    runs[0].params["pilot_spec_sha256"] = runs[2].params["pilot_spec_sha256"] = bike_spec.sha256()
    runs[1].params["pilot_spec_sha256"] = edited.sha256()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = leaderboard_rows(bike_spec, MemoryTracker(), runs)
    assert [(r["submission"], r["rank"]) for r in rows] == [("now", 1), ("same", 2), ("then", 3)]
    assert len(caught) == 1 and "then" in str(caught[0].message) and "fix:" in str(caught[0].message)
    console = Console(width=220, record=True)
    console.print(leaderboard_table(bike_spec, rows))
    assert [line.split("│")[2].strip() for line in console.export_text().splitlines() if "other spec" in line] == [
        "then"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every run of the spec: no warning
        assert [r["submission"] for r in leaderboard_rows(edited, MemoryTracker(), runs[1:2])] == ["then"]


def test_runs_scored_by_another_release_of_the_harness_are_ranked_after_with_a_warning(bike_spec, monkeypatch):
    """A formula may change between releases (the same bytes then score otherwise): a run whose logged
    `harness_version` is of another release than the one installed is ranked after every run of this release,
    whatever its total, marked 'other harness', with a warning naming it and the fix. Commits of one release (a
    source checkout's `+g<sha>`) rank together, and a run that logged no version is taken as this release's."""
    import warnings

    from rich.console import Console

    import evaluation.leaderboard
    from evaluation.leaderboard import leaderboard_table, release

    monkeypatch.setattr(evaluation.leaderboard, "harness_version", lambda: "0.2.0+gaaaaaaaaaaaa.dirty")
    assert release("0.2.0+gaaaaaaaaaaaa.dirty") == release("0.2.0") == "0.2.0"
    runs = [official("now", 1, 60.0, 0.50), official("old", 2, 90.0, 0.10), official("commit", 3, 50.0, 0.6),
            official("unlogged", 4, 40.0, 0.7)]
    runs[0].params["harness_version"], runs[1].params["harness_version"] = "0.2.0", "0.1.0+gbbbbbbbbbbbb"
    runs[2].params["harness_version"] = "0.2.0+gcccccccccccc"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = leaderboard_rows(bike_spec, MemoryTracker(), runs)
    assert [(r["submission"], r["rank"]) for r in rows] == [("now", 1), ("commit", 2), ("unlogged", 3), ("old", 4)]
    assert len(caught) == 1 and "old (0.1.0)" in str(caught[0].message) and "fix:" in str(caught[0].message)
    console = Console(width=220, record=True)
    console.print(leaderboard_table(bike_spec, rows))
    assert [line.split("│")[2].strip() for line in console.export_text().splitlines() if "other harness" in line
            ] == ["old"]


def test_the_table_shows_how_fast_the_node_was_while_each_run_was_timed(bike_spec):
    """The slower of the timed phases' node speeds (`node_speed/…`, recorded beside the times, not applied):
    an evaluator sees which totals were timed on a slow node; a run without the record shows a dash."""
    from rich.console import Console

    from evaluation.leaderboard import leaderboard_table

    slow, fast = official("slow", 1, 60.0, 0.50), official("fast", 2, 59.0, 0.50)
    slow.metrics |= {"node_speed/single_stream": 0.91, "node_speed/offline": 0.55}
    fast.metrics |= {"node_speed/single_stream": 1.02, "node_speed/offline": 0.98}
    rows = leaderboard_rows(bike_spec, MemoryTracker(), [slow, fast, official("old", 3, 58.0, 0.5)])
    assert [(r["submission"], r["node_speed"]) for r in rows] == [("slow", 0.55), ("fast", 0.98), ("old", None)]
    console = Console(width=220, record=True)
    console.print(leaderboard_table(bike_spec, rows))
    shown = [line.split("│")[12].strip() for line in console.export_text().splitlines() if line.startswith("│")]
    assert shown == ["0.55", "0.98", "—"]
