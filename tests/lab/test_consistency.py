"""A finished run's files against each other and its directory (normlab.lab.consistency)."""

import pytest

from normlab.lab.consistency import disagreement
from normlab.lab.experiments import RunConfig
from normlab.lab.store import run_dir_for


@pytest.fixture
def run(tmp_path):
    config = RunConfig(experiment="compare", label="GN", norms="group", backend="jax", seed=1).to_dict()
    run_dir = run_dir_for(tmp_path, RunConfig(**config))
    return run_dir, {"config": config}, dict(config)


def test_a_run_in_its_own_folder_with_one_configuration_agrees(run):
    assert disagreement(*run) == ""


def test_a_run_in_normlab_0_1_0s_folder_without_a_variant_agrees(run):
    run_dir, summary, stored = run
    old = run_dir.parents[1] / run_dir.name  # OUT/compare/GN/seed1
    assert disagreement(old, summary, stored) == ""
    summary["config"]["experiment"] = "other"
    assert disagreement(old, summary, stored) == (
        "summary.json names experiment 'other', in the folder of experiment 'compare'")


@pytest.mark.parametrize("experiment", ["other", "a/b", "../../escaped", ""])
def test_a_summary_naming_another_experiment_than_its_folder_disagrees(run, experiment):
    """The report wrote '<experiment>.md' under the report folder: 'a/b' failed with a
    traceback, '../../escaped' wrote outside it."""
    run_dir, summary, stored = run
    summary["config"]["experiment"] = experiment
    assert disagreement(run_dir, summary, stored) == (
        f"summary.json names experiment {experiment!r}, in the folder of experiment 'compare'")


def test_another_seeds_run_in_a_seed_folder_disagrees(run):
    """seed0 copied to seed1: the grid reused it and the report dropped the real seed 0 as its copy."""
    run_dir, summary, stored = run
    assert disagreement(run_dir.parent / "seed0", summary, stored) == (
        "summary.json holds seed 1's run, in the folder seed0")


def test_a_config_json_edited_or_missing_disagrees(run):
    run_dir, summary, stored = run
    assert disagreement(run_dir, summary, {**stored, "learning_rate": 0.5, "label": "BN"}) == (
        "config.json differs from summary.json's config in label, learning_rate")
    assert disagreement(run_dir, summary, {k: v for k, v in stored.items() if k != "impl"}) == (
        "config.json differs from summary.json's config in impl")
    assert disagreement(run_dir, summary, None) == "config.json is missing or not a JSON object"
