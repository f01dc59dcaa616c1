"""The command line: user mistakes give one clear message and a non-zero exit, never a traceback."""

import contextlib
import json
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from testbed.config import PROJECT_ROOT
from tests.conftest import FORECAST_ROUTE, empty_store, free_port

runner = CliRunner()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_store(tmp_path / "mlflow.db"))


def test_pilots_list_and_show():
    result = runner.invoke(app, ["pilots", "list", "--json"])
    assert result.exit_code == 0 and "bike-demand" in [p["id"] for p in json.loads(result.stdout)]
    result = runner.invoke(app, ["pilots", "show", "bike-demand", "--json"])
    assert json.loads(result.stdout)["contract"]["api"] == "forecast"


def test_pilots_show_names_what_a_text_answer_must_key_its_scores_by():
    result = runner.invoke(app, ["pilots", "show", "petition-routing"], terminal_width=200)
    assert result.exit_code == 0 and "categories" in result.stdout and "교통/건축/국토" in result.stdout


def test_every_verb_has_help():
    for verb in (["pilots", "list"], ["pilots", "show"], ["pilots", "data"], ["pilots", "validate"], ["submit"],
                 ["check"], ["evaluate"], ["scorecard"], ["leaderboard"], ["demo"]):
        result = runner.invoke(app, [*verb, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout


@pytest.mark.parametrize("group", [[], ["pilots"], ["review"]])
def test_command_lists_keep_each_sentence_on_one_line(group):
    """A docstring wrapped at the source's width must not break the command list mid-sentence."""
    result = runner.invoke(app, [*group, "--help"], terminal_width=1000, env={"COLUMNS": "1000"})
    rows = [line.strip("│ ").split(None, 1) for line in result.stdout.splitlines() if line.startswith("│ ")]
    wrapped = [row for row in rows if len(row) == 1 or not row[1].rstrip().endswith((".", ")"))]
    assert result.exit_code == 0 and len(rows) >= 4 and not wrapped, wrapped


@pytest.mark.parametrize("args, words", [
    (["pilots", "show", "nope"], "no pilot 'nope'"),
    (["evaluate", "bike-demand-000"], "no submission"),
    (["scorecard", "bike-demand-000"], "no submission"),
    (["submit", "bike-demand", "missing.bento", "--vendor", "missing.yaml"], "missing.yaml: file not found"),
    (["submit", "bike-demand", str(PROJECT_ROOT / "examples" / "bike_mlp"), "--vendor",
      str(PROJECT_ROOT / "examples" / "bike_mlp" / "vendor.yaml")], "bike_mlp: a folder, not a .bento file"),
    (["submit", "bike-demand", "missing.bento", "--vendor", str(PROJECT_ROOT / "examples")], "a folder or a special"),
    (["submit", "bike-demand", "missing.bento", "--vendor", "/dev/zero"], "/dev/zero: a folder or a special file"),
    (["pilots", "data", "bike-demand", "--out", str(PROJECT_ROOT / "README.md")],
     "README.md is a file, where a folder is needed"),
    (["serve", "bike-demand", "--port", "99999"], "--port 99999 is outside 1–65535"),
    (["serve", "bike-demand", "--poll", "nan"], "--poll nan is outside"),
    (["monitor", "bike-demand", "--window", "1e300"], "--window 1e+300 is outside 0–3600"),
    (["promote", "bike-demand-000", "--by", " "], "no submission"),
    (["monitor", "bike-demand", "--url", "127.0.0.1:3000"], "--url http://127.0.0.1:3000"),
    (["monitor", "bike-demand", "--url", "http://127.0.0.1:3000/metrics"], "--url http://127.0.0.1:3000"),
    (["monitor", "bike-demand", "--url", "http://127.0.0.1:30OO"], "--url http://127.0.0.1:30OO is not an address"),
    (["monitor", "bike-demand", "--url", "http://"], "--url http:// is not an address (no host)"),
    (["monitor", "bike-demand", "--url", "ftp://127.0.0.1:3000"], "e.g. --url http://127.0.0.1:3000\n"),
    (["monitor", "bike-demand", "--url", "http://127.0.0.1:1/"], "no metrics at http://127.0.0.1:1/metrics ("),
    (["serve", "bike-demand", "--host", ""], "--host is empty"),
    (["serve", "bike-demand", "--host", " "], "--host is empty"),
    (["evaluate", "bike-demand-000", "--reevaluate"], "--reevaluate needs a --reason"),
    (["evaluate", "bike-demand-000", "--reevaluate", "--reason", " "], "--reevaluate needs a --reason"),
    # a reason given to an official evaluation was silently dropped; an empty --out wrote into the working folder
    (["evaluate", "bike-demand-000", "--reason", "retry"], "--reason is the reason for a re-evaluation"),
    (["pilots", "data", "bike-demand", "--out", ""], "--out '.' names no folder of its own"),
])
def test_user_errors_are_clean(args, words):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and words in result.stderr and "fix:" in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_serve_takes_an_ipv6_loopback_address(monkeypatch):
    """The pre-check before the sandbox starts listened with IPv4 only: `--host ::1` was refused with a wrong
    fix ("give an address of this machine"), though the server could listen there."""
    import serving.server
    from testbed.errors import Refused

    def no_sandbox(*args, **kwargs):
        raise Refused("the sandbox was about to start")

    monkeypatch.setattr(serving.server, "ProductionServer", no_sandbox)
    result = runner.invoke(app, ["serve", "bike-demand", "--host", "::1", "--port", str(free_port())])
    assert result.exit_code == 2 and "about to start" in result.stderr, result.output
    assert "beyond this machine" not in result.stderr  # ::1 is loopback


def test_serve_on_a_taken_port_is_refused_before_the_sandbox_starts(monkeypatch):
    import socket

    import serving.server
    from testbed.errors import Refused

    def no_sandbox(*args, **kwargs):
        raise Refused("the sandbox was about to start")

    monkeypatch.setattr(serving.server, "ProductionServer", no_sandbox)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "bike-demand", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.output
    assert "fix: choose another --port" in result.stderr and "about to start" not in result.stderr
    assert "Traceback" not in result.output


def test_serve_refuses_a_setting_the_sandbox_could_not_keep_hidden_before_resolving_production(monkeypatch):
    import serving.server
    import workflow.promote

    monkeypatch.setattr(serving.server, "check_isolation", lambda: None)
    monkeypatch.setattr(workflow.promote.Production, "resolve", lambda *a: pytest.fail("production was resolved"))
    monkeypatch.setenv("TESTBED_DATA_DIR", "/")
    result = runner.invoke(app, ["serve", "bike-demand", "--port", str(free_port())])
    assert result.exit_code == 2 and "TESTBED_DATA_DIR: / holds the sandbox's own" in result.stderr, result.output
    assert "fix: set TESTBED_DATA_DIR to a folder of the testbed's own" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_beyond_loopback_warns_that_the_api_and_metrics_are_open(monkeypatch, host, warned):
    import serving.server
    from testbed.errors import Refused

    def no_sandbox(*args, **kwargs):  # stops `serve` where the sandbox would start, after the address checks
        raise Refused("the sandbox was about to start")

    monkeypatch.setattr(serving.server, "ProductionServer", no_sandbox)
    result = runner.invoke(app, ["serve", "bike-demand", "--host", host, "--port", str(free_port())],
                           terminal_width=300)
    assert result.exit_code == 2 and "the sandbox was about to start" in result.stderr, result.output
    assert ("serves the API and /metrics beyond this machine" in result.stderr) is warned, result.stderr
    assert ("authenticating proxy" in result.stderr) is warned


def test_square_brackets_in_a_pilots_texts_are_shown_as_written(tmp_path, monkeypatch):
    """A spec's title, department and policy goals are the city's prose: "[KPI 3]" is shown as written, never read
    as Rich markup (it vanished) nor "[/b]" as a closing tag (a MarkupError traceback in `pilots list`, `pilots
    show` and the leaderboard)."""
    from evaluation.leaderboard import leaderboard_table
    from pilots.catalogue import CATALOGUE_DIR
    from workflow.catalogue import get_pilot

    spec = yaml.safe_load((CATALOGUE_DIR / "bike-demand.yaml").read_text())
    spec.update(id="bike-brackets", department="Transport Office [/b] :thumbs_up:",
                policy_goals=["Reach every station [KPI 3] :white_check_mark:"])
    spec["title"]["en"] = "Bikes [pilot 2]"
    (tmp_path / "bike-brackets.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True))
    monkeypatch.setenv("TESTBED_PILOTS_DIR", str(tmp_path))
    for args in (["pilots", "list"], ["pilots", "show", "bike-brackets"]):
        result = runner.invoke(app, args, terminal_width=200)
        assert result.exit_code == 0, result.output
        assert "Bikes [pilot 2]" in result.stdout and "Transport Office [/b] :thumbs_up:" in result.stdout, \
            result.stdout
    assert "Reach every station [KPI 3] :white_check_mark:" in result.stdout  # as written: no markup, no emoji
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(leaderboard_table(get_pilot("bike-brackets"), []))
    assert "Bikes [pilot 2]" in console.export_text()


def test_submit_validates_stores_and_recognises_the_same_bytes(tmp_path, fake_bento):
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump({"name": "Acme", "headquarters_district": "Mapo-gu", "seoul_based": True,
                                      "startup": False, "technology_field": "time_series",
                                      "model_description": "x", "licence": "MIT"}))
    bundle = fake_bento([FORECAST_ROUTE])
    first = runner.invoke(app, ["submit", "bike-demand", str(bundle), "--vendor", str(vendor), "--json"])
    assert first.exit_code == 0, first.output
    sub = json.loads(first.stdout)
    assert sub["new"] and sub["id"].startswith("bike-demand-") and sub["apis"] == ["forecast"]
    again = runner.invoke(app, ["submit", "bike-demand", str(bundle), "--vendor", str(vendor)])
    assert again.exit_code == 0 and again.stdout.strip() == sub["id"] and "already submitted" in again.stderr

    wrong = fake_bento([{**FORECAST_ROUTE, "name": "predict"}], name="wrong")
    result = runner.invoke(app, ["submit", "bike-demand", str(wrong), "--vendor", str(vendor)])
    assert result.exit_code == 2 and str(wrong) in result.stderr and "no `forecast` API" in result.stderr
    home = tmp_path / "home" / "submissions"
    assert sorted(p.name for p in home.iterdir()) == [sub["id"]]  # nothing half-written for the rejected one

    # another bundle whose sha256 begins with the same 12 digits (the id keeps those) is refused, never taken for it
    record = home / sub["id"] / "submission.json"
    stored = json.loads(record.read_text())
    record.write_text(json.dumps({**stored, "bundle_sha256": stored["bundle_sha256"][:12] + "0" * 52}))
    clash = runner.invoke(app, ["submit", "bike-demand", str(bundle), "--vendor", str(vendor)])
    assert clash.exit_code == 2 and f"is not submission {sub['id']}" in clash.stderr and "rebuild" in clash.stderr


@pytest.mark.parametrize("name", ["Evil\x1b]0;owned\x07\x1b[2J Co", "Acme\u202eoC liveD", "Acme\nGates passed"])
def test_a_vendor_name_with_control_or_formatting_characters_is_refused_at_submit(tmp_path, fake_bento, name):
    """The vendor's name reaches evaluators' terminals (review list, review show, the leaderboard): a name that
    would clear the screen, set the window title, redraw a line or read backwards is refused, naming the file and
    the field, and nothing is stored."""
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump({"name": name, "headquarters_district": "Mapo-gu", "seoul_based": True,
                                      "startup": False, "technology_field": "time_series",
                                      "model_description": "x", "licence": "MIT"}))
    result = runner.invoke(app, ["submit", "bike-demand", str(fake_bento([FORECAST_ROUTE])), "--vendor", str(vendor)])
    assert result.exit_code == 2 and str(vendor) in result.stderr and "field `name`" in result.stderr, result.output
    assert "fix:" in result.stderr and "Traceback" not in result.output and "\x1b" not in result.stderr
    assert f"'{name.encode('unicode_escape').decode()}'" in result.stderr  # written out once, as it would be typed
    assert not (tmp_path / "home" / "submissions").exists() or not any((tmp_path / "home" / "submissions").iterdir())


@pytest.mark.parametrize("name", ["   ", "\u3000", "\u00a0"])
def test_a_blank_vendor_name_is_refused_at_submit(tmp_path, fake_bento, name):
    """`name` must be given (min_length 1): spaces only (ASCII, ideographic or no-break) would show an empty vendor
    on the leaderboard and in review list, so evaluators could not tell whose bundle it is."""
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump({"name": name, "headquarters_district": "Mapo-gu", "seoul_based": True,
                                      "startup": False, "technology_field": "time_series",
                                      "model_description": "x", "licence": "MIT"}))
    result = runner.invoke(app, ["submit", "bike-demand", str(fake_bento([FORECAST_ROUTE])), "--vendor", str(vendor)])
    assert result.exit_code == 2 and str(vendor) in result.stderr and "field `name`" in result.stderr, result.output
    assert "is blank" in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "home" / "submissions").exists() or not any((tmp_path / "home" / "submissions").iterdir())


@pytest.mark.parametrize("field, value, words", [
    ("licence", "   ", "field `licence` is blank"),
    ("model_description", "\u3000", "field `model_description` is blank"),
    ("licence", "MIT\x1b[2J", "field `licence`: 'MIT\\x1b[2J' holds control"),
    ("model_description", "fine\u202e", "control or formatting"), ("contact", "kim at example", "not an e-mail"),
    ("contact", "a@b.kr\nGates passed", "control or formatting"), ("contact", "x" * 300 + "@a.kr", "at most 254"),
])
def test_the_vendor_profiles_free_text_is_given_plain_and_the_contact_is_an_address(tmp_path, fake_bento, field,
                                                                                      value, words):
    """The licence, description and contact reach evaluators' pages as the name does: blank ones, or ones with
    terminal codes, bidirectional overrides or (but in the description) line breaks, are refused at submission."""
    from workflow.submissions import load_vendor

    profile = {"name": "Acme", "headquarters_district": "Mapo-gu", "seoul_based": True, "startup": False,
               "technology_field": "time_series", "model_description": "An MLP.\nTrained on 2018.", "licence": "MIT",
               "contact": "kim@acme.kr"}
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump(profile))
    assert load_vendor(vendor).model_description == "An MLP.\nTrained on 2018."  # line breaks are fine there
    vendor.write_text(yaml.safe_dump({**profile, field: value}))
    result = runner.invoke(app, ["submit", "bike-demand", str(fake_bento([FORECAST_ROUTE])), "--vendor", str(vendor)])
    assert result.exit_code == 2 and str(vendor) in result.stderr and words in result.stderr, result.output
    assert "fix:" in result.stderr and "\x1b" not in result.stderr
    assert not (tmp_path / "home" / "submissions").exists() or not any((tmp_path / "home" / "submissions").iterdir())


def test_check_refuses_the_vendor_profile_that_submit_refuses_before_running_anything(tmp_path, fake_bento,
                                                                                     monkeypatch):
    """`testbed check --vendor` reads the profile as `testbed submit` does: a name submit refuses (terminal codes)
    is refused by check too, naming the file and the field, before the sandbox runs, never a passing check and
    then a refused submission."""
    vendor = tmp_path / "vendor.yaml"
    vendor.write_text(yaml.safe_dump({"name": "Evil\x1b[2J Co", "headquarters_district": "Mapo-gu",
                                      "seoul_based": True, "startup": False, "technology_field": "time_series",
                                      "model_description": "x", "licence": "MIT"}))
    ran = []
    monkeypatch.setattr("workflow.evaluate.evaluate_bundle", lambda *args, **kwargs: ran.append(args))
    result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE])), "--vendor", str(vendor)])
    assert result.exit_code == 2 and str(vendor) in result.stderr and "field `name`" in result.stderr, result.output
    assert "fix:" in result.stderr and not ran


@pytest.mark.parametrize("setting, value, words", [
    # a store straight in /tmp: every bundle's own new file in its /tmp read as a reach for the store's folder,
    # and a sound bundle failed as a sandbox violation (its one official evaluation spent)
    ("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db", "/tmp holds the sandbox's own /tmp"),
    ("TESTBED_DATA_DIR", "/", "holds the sandbox's own"),
    ("TESTBED_DATA_DIR", "/usr/local/share/city-data", "is inside /usr, which every sandbox mounts"),
    ("TESTBED_HOME", "/opt", "holds the sandbox's own /opt/testbed"),
])
def test_a_setting_the_sandbox_could_not_keep_hidden_is_refused_before_anything_runs(tmp_path, fake_bento,
                                                                                    monkeypatch, setting, value,
                                                                                    words):
    import sandbox.executor
    import workflow.evaluate
    from tests.doubles import FakeSandbox

    fake = FakeSandbox(lambda route, payload: pytest.fail("a request was sent"))
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: fake)
    monkeypatch.setattr(workflow.evaluate, "check_isolation", lambda: None)
    monkeypatch.setenv(setting, value)
    result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE]))], terminal_width=300)
    assert result.exit_code == 2 and f"{setting}: " in result.stderr and words in result.stderr, result.output
    assert "fix: " in result.stderr and "Traceback" not in result.output and not fake.jobs


def test_a_home_that_cannot_be_a_folder_is_named_before_ray_not_blamed_on_a_node(tmp_path, fake_bento, monkeypatch):
    import sandbox.executor
    from tests.doubles import FakeSandbox

    fake = FakeSandbox(lambda route, payload: pytest.fail("a request was sent"))
    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: fake)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "a-file" / "home"))
    monkeypatch.delenv("TESTBED_ENVS_DIR", raising=False)  # the bundles' environments under that home
    result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE]))], terminal_width=300)
    assert result.exit_code == 2 and "Ray" not in result.stderr, result.output
    assert "TESTBED_HOME=" in result.stderr
    assert "must name a folder the testbed can create and write in" in result.stderr and not fake.jobs


def test_a_default_folder_that_cannot_be_written_names_its_setting(monkeypatch):
    """A write refused under the default home (`var/` read-only) was told to "give a path … as the option
    expects", though no option named it: the fix names the folder and the variable that moves it."""
    from cli.console import _path_fix
    from testbed.config import PROJECT_ROOT

    for name in ("TESTBED_HOME", "BENTOML_HOME", "TESTBED_ENVS_DIR", "TESTBED_DATA_DIR", "TESTBED_PILOTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    home = (PROJECT_ROOT / "var").resolve()
    fix = _path_fix(home / "submissions" / "bike-demand-0" / ".official.lock")
    assert fix.startswith(f"{home} (TESTBED_HOME unset: the default) must be a folder the testbed can create") and \
        "set TESTBED_HOME" in fix
    assert "BENTOML_HOME unset" in _path_fix(home / "bentoml" / "bentos")
    assert "as the option expects" in _path_fix(Path("/nonexistent/card.html"))


def test_check_without_a_vendor_profile_scores_a_vendor_that_claims_nothing_and_says_so(tmp_path, fake_bento,
                                                                                          monkeypatch):
    """No --vendor: the local-strength claims are scored for a vendor that claims nothing (none counts, 0 points,
    nothing left pending), and the check says the total is not the one the vendor's own profile would get."""
    import sandbox.executor
    import workflow.evaluate
    from tests.doubles import FakeSandbox

    def flat(route, payload):  # a valid forecast of every window: 24 hours of zeros
        return [[0.0] * 24 for _ in payload["history"]]

    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: FakeSandbox(flat))  # no Ray, no sandbox
    monkeypatch.setattr(workflow.evaluate, "check_isolation", lambda: None)
    result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE]))], terminal_width=300)
    assert result.exit_code in (0, 1) and "Traceback" not in result.output, result.output
    assert "local strength scored for a vendor that claims nothing (no --vendor)" in result.stdout
    [card] = [json.loads(p.read_text()) for p in (tmp_path / "home" / "checks").glob("bike-demand-*/scorecard.json")]
    assert card["verdict"] == "completed", card["verdict_reason"]
    local = card["criteria"]["local_strength_fit"]
    assert local["score"] == 0 and local["status"] == "scored"
    assert not any(claim["counts"] for claim in local["evidence"]["claims"].values())


def test_a_crashed_bundles_log_is_shown_with_its_terminal_codes_written_out(tmp_path, fake_bento, monkeypatch):
    """README: a run that did not complete shows the last lines of `sandbox.log` in the CLI. They are the bundle's
    own output: printed as they came, they could clear the evaluator's screen or retitle the window."""
    import dataclasses

    import sandbox.executor
    import workflow.evaluate
    from tests.doubles import FakeSandbox

    class Crashing(FakeSandbox):
        def run(self, job):
            return dataclasses.replace(super().run(job), log="loading\nevil \x1b[2J\x1b]0;owned\x07 [red]x[/]\n")

    monkeypatch.setattr(sandbox.executor, "RayExecutor", lambda: Crashing(lambda route, body: 1 / 0, "crashed"))
    monkeypatch.setattr(workflow.evaluate, "check_isolation", lambda: None)
    result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE]))], terminal_width=300)
    assert result.exit_code == 1 and "last lines of sandbox.log:" in result.stdout, result.output
    assert "evil \\x1b[2J\\x1b]0;owned\\x07 [red]x[/]" in result.stdout and "\x1b" not in result.stdout


def test_ctrl_c_is_said_with_where_to_look_never_a_silent_exit(monkeypatch):
    """Ctrl-C in the middle of a command (here a promotion) exits 130 with a line saying it was interrupted and
    where to see whether the decision or move was recorded, not a bare exit status."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("workflow.submissions.SubmissionStore.get", interrupted)
    result = runner.invoke(app, ["promote", "bike-demand-000000000000", "--by", "Lee"])
    assert result.exit_code == 130 and "interrupted (Ctrl-C or SIGTERM)" in result.stderr, result.output
    assert "testbed production PILOT" in result.stderr and "Traceback" not in result.output


def test_an_error_or_warning_quoting_what_people_wrote_writes_its_terminal_codes_out(monkeypatch, capsys):
    """A refusal quotes what people wrote (a promotion refused quotes the rejecting evaluator's note): terminal codes
    in it are written out, so a note cannot erase the refusal's line or redraw it as a success; warnings alike."""
    from cli.console import _warning
    from testbed.errors import Refused

    def refused(*args, **kwargs):
        raise Refused("rejected by kim: no\x1b[2K\x1b[1A\rpromoted OK", fix="only an approved one can be promoted")

    monkeypatch.setattr("workflow.submissions.SubmissionStore.get", refused)
    result = runner.invoke(app, ["promote", "bike-demand-000000000000", "--by", "Lee"])
    assert result.exit_code == 2 and "\x1b" not in result.stderr and "\r" not in result.stderr, result.stderr
    assert "no\\x1b[2K\\x1b[1A\\rpromoted OK\n  fix: only" in result.stderr  # the line break before the fix stays
    _warning(UserWarning("left out: note \x1b[1A\x1b[2Kall fine"), UserWarning, "trail.py", 1)
    shown = capsys.readouterr().err
    assert "\x1b" not in shown and "note \\x1b[1A\\x1b[2Kall fine" in shown, shown


def test_the_start_line_of_testbed_serve_is_one_line(monkeypatch, capsys):
    """The start line says where the service listens and how to stop it on one line, whatever the terminal's
    width (the log lines after it are the server's, tested with it)."""
    class Server:
        def __init__(self, *args, **kwargs):
            self.contract, self.pilot = type("C", (), {"route": "/forecast"}), "bike-demand"

        def start(self):
            pass

        def stop(self):
            pass

    @contextlib.contextmanager
    def listening(server, host, port):
        done = threading.Thread(target=lambda: None)
        done.start()
        yield f"http://{host}:{port}", done

    monkeypatch.setattr("serving.server.ProductionServer", Server)
    monkeypatch.setattr("serving.server._listening", listening)
    result = runner.invoke(app, ["serve", "bike-demand", "--port", str(free_port())], terminal_width=60)
    assert result.exit_code == 2 and "/metrics); Ctrl-C stops\n" in result.stderr, result.stderr
    assert "the HTTP server stopped on its own" in result.stderr  # the thread below ends at once


def test_production_shows_every_move_when_the_served_versions_review_trail_is_damaged(monkeypatch):
    """`testbed production` with the review trail of the version in service edited: a warning naming the file, and
    the moves are still shown (the operator needs them most then), rather than an error after the first line."""
    from testbed.errors import AuditError

    class Book:
        def latest(self, submission):
            raise AuditError("entry 1 was edited: its content no longer matches its hash",
                             where=f"reviews/{submission}.jsonl:1", fix="restore the file from a backup")

    class Production:
        def __init__(self, ws):
            self.book = Book()

        def review_of(self, submission):
            return self.book.latest(submission)

        def current_version(self, pilot):
            return "6"

        def history(self, pilot):
            return [{"seq": 1, "at": "2026-12-02T18:00:00+00:00", "action": "promote", "version": "6",
                     "submission": "bike-demand-dd7608019914", "by": "Lee", "previous_version": None, "note": ""}]

    monkeypatch.setattr("workflow.promote.Production", Production)
    result = runner.invoke(app, ["production", "bike-demand"], terminal_width=200)
    assert result.exit_code == 0 and "reviews/bike-demand-dd7608019914.jsonl:1" in result.stderr, result.output
    assert "was edited" in result.stderr and "bike-demand-dd7608019914" in result.stdout and "promote" in result.stdout


def test_production_says_what_an_alias_the_trail_disagrees_with_means_and_how_to_mend_it(monkeypatch):
    """`testbed production` with the alias on a version the trail's last move did not put there said only that
    the alias 'was changed outside the testbed' (and 'None' for a withdrawn trail): it also says that serve will
    not start on it, that a move cut short leaves it so too, and the commands that put both in agreement."""
    class Production:
        def __init__(self, ws):
            pass

        def current_version(self, pilot):
            return "7"

        def history(self, pilot):
            return [{"seq": 1, "at": "2026-12-02T18:00:00+00:00", "action": "rollback", "version": None,
                     "submission": None, "by": "Lee", "previous_version": "6", "note": ""}]

        def review_of(self, submission):
            return None

    monkeypatch.setattr("workflow.promote.Production", Production)
    result = runner.invoke(app, ["production", "bike-demand"], terminal_width=300)
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "the registry's alias names version 7 but the trail's last move put nothing in production" in said
    assert "a move was cut short" in said and "`testbed serve` will not start on it" in said
    assert "testbed promote SUBMISSION --by NAME" in said and "testbed rollback bike-demand --by NAME" in said


def test_rollback_writes_a_skipped_versions_rejecting_note_out(monkeypatch):
    """`testbed rollback` lists the versions it skipped with the reason, which quotes a rejecting evaluator's note:
    that note's terminal codes reached the operator's terminal as they were (escape() handles Rich markup only)."""
    class Production:
        def __init__(self, ws):
            pass

        def rollback(self, pilot, by, note):
            return ({"version": "1", "submission": "bike-demand-000000000001", "previous_version": "3"},
                    ["version 2 (bike-demand-000000000002): bike-demand-000000000002 was rejected by kim at now: "
                     "late\x1b[2J\x1b]0;owned\x07 [red]x[/]"])

    monkeypatch.setattr("workflow.promote.Production", Production)
    result = runner.invoke(app, ["rollback", "bike-demand", "--by", "lee"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "late\\x1b[2J" in result.stderr
    assert "[red]x[/]" in result.stderr and "version 1 (bike-demand-000000000001) is in production" in result.stdout


def test_public_data_export_never_includes_the_sequestered_split(tmp_path):
    out = tmp_path / "public [/] [red]x"  # rich markup in a path is printed as it is, never read as markup
    result = runner.invoke(app, ["pilots", "data", "bike-demand", "--out", str(out)], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sample.npz", "train.npz"]
    assert sorted(result.stdout.splitlines()) == [f"wrote {out / 'sample.npz'}", f"wrote {out / 'train.npz'}"]
    import numpy as np

    origins = np.load(out / "sample.npz")["origins"]
    assert max(origins) < "2018-10-01" and len(origins) > 100


def test_public_data_export_is_whole_or_absent(tmp_path, monkeypatch):
    """A public split the family cannot read stops the export before any file is written."""
    from evaluation.families.forecasting.family import Forecasting
    from testbed.errors import SpecError

    real = Forecasting.read

    def read(self, split):
        if split == "sample":
            raise SpecError("split 'sample' has no complete window", where="pilot bike-demand: dataset.splits.sample",
                            fix="widen the split")
        return real(self, split)

    monkeypatch.setattr(Forecasting, "read", read)
    out = tmp_path / "public"
    result = runner.invoke(app, ["pilots", "data", "bike-demand", "--out", str(out)])
    assert result.exit_code == 2 and "dataset.splits.sample" in result.stderr
    assert not out.exists() or not any(out.iterdir())
    monkeypatch.setattr(Forecasting, "read", real)
    (out / "sample.npz").mkdir(parents=True)  # in the way of the second file: the first is not written either
    result = runner.invoke(app, ["pilots", "data", "bike-demand", "--out", str(out)], terminal_width=300)
    assert result.exit_code == 2 and f"{out / 'sample.npz'} is a folder" in result.stderr, result.output
    assert sorted(p.name for p in out.iterdir()) == ["sample.npz"] and "nothing was written" in result.stderr
    result = runner.invoke(app, ["pilots", "data", "bike-demand", "--out", "/dev/null"], terminal_width=300)
    assert result.exit_code == 2 and "/dev/null is not a folder" in result.stderr


def test_refuses_to_run_without_isolation(monkeypatch, tmp_path, fake_bento):
    import shutil

    from sandbox import isolation

    isolation.check_isolation.cache_clear()
    real_which = shutil.which
    monkeypatch.setattr(isolation.shutil, "which", lambda tool: None if tool == "bwrap" else real_which(tool))
    try:
        result = runner.invoke(app, ["check", "bike-demand", str(fake_bento([FORECAST_ROUTE]))])
    finally:
        isolation.check_isolation.cache_clear()
    assert result.exit_code == 2 and "bwrap" in result.stderr and "--unsafe-no-sandbox" in result.stderr


def test_a_tracking_server_that_is_not_there_is_refused_at_once(monkeypatch):
    """MLflow's client retries a dead server for ~4 minutes and ends in a traceback; the testbed says so first."""
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    result = runner.invoke(app, ["leaderboard", "bike-demand"])
    assert result.exit_code == 2, result.output
    assert f"no MLflow tracking server answers at 127.0.0.1:{port}" in result.output
    assert "fix: start the server" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("uri, says", [
    ("garbage", "is not a tracking URI the testbed can use"),
    ("file:///tmp/testbed-mlruns", "is not a tracking URI the testbed can use"),  # no model registry
    ("sqlite:////nonexistent/dir/x.db", "/nonexistent/dir/x.db does not exist"),
    ("sqlite:/tmp/x.db", "a SQLite store is named sqlite:///PATH"),
    ("sqlite:///{root}/data", "is a folder, not a SQLite file"),
    ("sqlite:///{root}/README.md", "is not a SQLite database"),
    ("postgresql://127.0.0.1:1/mlflow", "no Python driver for postgresql is installed"),
    ("http://127.0.0.1:abc", "the server's port is not a port number"),  # was a ValueError's traceback
    ("http://127.0.0.1:99999", "the server's port is not a port number"),
    ("http://", "the server's address names no host"),  # was minutes of retries
    ("https://", "the server's address names no host"),
])
def test_a_tracking_uri_that_cannot_work_is_refused_and_creates_nothing(monkeypatch, uri, says):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(root=PROJECT_ROOT))
    result = runner.invoke(app, ["leaderboard", "bike-demand"])
    assert result.exit_code == 2 and says in result.stderr and "Traceback" not in result.output, result.output
    assert not Path("/nonexistent").exists() and not Path("/tmp/testbed-mlruns").exists()


def test_a_tracking_server_that_never_answers_is_refused_at_once(monkeypatch):
    """Something that accepts the connection and never answers (a wrong port, a hung server) held every command
    for minutes; it is refused after `ANSWER_TIMEOUT_S`."""
    import socket

    import evaluation.tracking_uri

    monkeypatch.setattr(evaluation.tracking_uri, "ANSWER_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
        result = runner.invoke(app, ["leaderboard", "bike-demand"])
    assert result.exit_code == 2 and "does not answer HTTP within 0.5 s" in result.stderr, result.output


def test_a_sqlite_store_that_cannot_be_written_is_refused_before_any_evaluation(monkeypatch, tmp_path):
    """A read-only store was found only once an evaluation had run (minutes), in ninety lines of MLflow's
    tracebacks; it is refused at once. (As root only a read-only mount refuses a write: `os.access` stands in.)"""
    import os

    import evaluation.tracking_uri

    store = tmp_path / "mlflow.db"
    store.write_bytes(evaluation.tracking_uri.SQLITE_HEADER)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setattr(evaluation.tracking_uri.os, "access", lambda path, mode: Path(path) != store or
                        mode != os.W_OK)
    result = runner.invoke(app, ["leaderboard", "bike-demand"])
    assert result.exit_code == 2 and f"the SQLite store {store} cannot be written" in result.stderr, result.output
    assert "make the store's file and its folder writable" in result.stderr


@pytest.mark.parametrize("empty_file", [False, True])  # `touch`ed first: MLflow makes a new store in it too
def test_a_new_sqlite_store_elsewhere_is_announced(monkeypatch, tmp_path, empty_file):
    """A misspelt store path would look like an empty testbed: the new store is created, and said so."""
    monkeypatch.setenv("TESTBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlfow.db'}")
    if empty_file:
        (tmp_path / "mlfow.db").write_bytes(b"")
    with pytest.warns(UserWarning, match=f"no MLflow store at {tmp_path / 'mlfow.db'} yet"):  # one line on stderr
        result = runner.invoke(app, ["leaderboard", "bike-demand"])
    assert result.exit_code == 0, result.output


def test_a_folder_setting_that_cannot_be_used_is_named_in_the_fix(monkeypatch, tmp_path, capsys):
    import typer

    from cli.console import friendly

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TESTBED_HOME", str(blocker))

    @friendly
    def command():
        (blocker / "submissions").mkdir(parents=True)

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == 2
    assert f"TESTBED_HOME={blocker} must name a folder" in " ".join(capsys.readouterr().err.split())


def test_check_says_how_much_of_the_time_limit_the_sample_took(capsys):
    """The official run has the same limit for a split that can be larger: a check that needs a third of it warns."""
    from cli.app import _time_used
    from cli.console import out

    for used, warned in ((50.0, False), (250.0, True)):
        with out.capture() as shown:
            _time_used(used, 600)
        text = shown.get()
        assert f"{used:.0f} s of the pilot's 600 s limit" in text and ("may time out there" in text) is warned


def test_check_warns_when_the_bundle_was_built_for_another_python(fake_bento, monkeypatch):
    """`docker.python_version` in bentofile.yaml is not applied: the sandbox runs Python 3.11, and check says so."""
    from sandbox import executor
    from testbed.errors import ResourceUnavailable

    path = fake_bento([FORECAST_ROUTE], python="3.12")

    def no_ray(self):
        raise ResourceUnavailable("no Ray in this test", fix="none")

    monkeypatch.setattr(executor.RayExecutor, "__init__", no_ray)
    result = runner.invoke(app, ["check", "bike-demand", str(path)])
    assert result.exit_code == 2 and "built for Python 3.12" in result.stderr and "Python 3.11" in result.stderr
