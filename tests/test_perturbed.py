"""Scenario inputs are computed once per process and reused, in parallel threads, exactly as `perturb` gives
them; anything that changes a perturbation (a scenario's seed, the inputs) is another key."""

import numpy as np
import pytest

from evaluation import perturbed
from evaluation.families import FAMILIES
from pilots.spec import ScenarioSpec
from testbed.config import PROJECT_ROOT


@pytest.fixture
def fam(bike_spec):
    return FAMILIES.get("forecasting")(bike_spec, PROJECT_ROOT / "data")


def test_scenario_inputs_are_what_perturb_gives_and_are_computed_once(fam, monkeypatch):
    perturbed._cache.clear()
    data = fam.load("test")
    clean = fam.inputs(data)
    expected = {sc.name: fam.perturb(data, clean, sc) for sc in fam.spec.scenarios}
    calls = []
    real = type(fam).perturb
    monkeypatch.setattr(type(fam), "perturb", lambda self, d, i, sc: calls.append(sc.name) or real(self, d, i, sc))

    first = perturbed.scenario_inputs(fam, data, clean)
    again = perturbed.scenario_inputs(fam, fam.load("test"), fam.inputs(fam.load("test")))  # a new evaluation
    assert sorted(calls) == sorted(expected) and len(calls) == len(fam.spec.scenarios)  # once per scenario
    for name, (history, future) in expected.items():
        for got in (first, again):
            np.testing.assert_array_equal(got[name][0], history)
            np.testing.assert_array_equal(got[name][1], future)


def reseeded(fam, seed: int):
    """The same family with its first scenario drawn from another seed."""
    first = fam.spec.scenarios[0]
    scenario = ScenarioSpec.model_validate({**first.model_dump(), "seed": seed})
    spec = fam.spec.model_copy(update={"scenarios": [scenario]})
    return FAMILIES.get("forecasting")(spec, PROJECT_ROOT / "data")


def test_another_seed_or_other_inputs_is_another_key(fam):
    perturbed._cache.clear()
    data = fam.load("test")
    clean = fam.inputs(data)
    name = fam.spec.scenarios[0].name
    before = perturbed.scenario_inputs(fam, data, clean)
    after = perturbed.scenario_inputs(reseeded(fam, fam.spec.scenarios[0].seed + 1), data, clean)
    assert not np.array_equal(before[name][0], after[name][0], equal_nan=True)
    changed = (clean[0].copy(), clean[1])
    changed[0][0, 0, 0] += 1
    assert perturbed.fingerprint(changed).hexdigest() != perturbed.fingerprint(clean).hexdigest()


def test_the_cache_keeps_only_the_latest_sets(fam, monkeypatch):
    perturbed._cache.clear()
    monkeypatch.setattr(perturbed, "KEEP", 2)
    data = fam.load("test")
    clean = fam.inputs(data)
    results = [perturbed.scenario_inputs(reseeded(fam, seed), data, clean) for seed in (1, 2, 3)]
    assert len(perturbed._cache) == 2
    kept = list(perturbed._cache.values())
    assert all(any(v is r[fam.spec.scenarios[0].name] for v in kept) for r in results[1:])  # the latest two


def test_fingerprint_refuses_what_it_cannot_hash():
    with pytest.raises(TypeError, match="cannot fingerprint"):
        perturbed.fingerprint(object())
