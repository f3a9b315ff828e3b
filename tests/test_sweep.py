"""Optuna sweeps: spec validation, and two workers on one study (journal file and PostgreSQL)
logging nested MLflow runs. Sweeps interrupted by Ctrl-C or kill -9 and rerun: test_faults.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tempo_bench.core.errors import ConfigError
from tempo_bench.experiments.sweep import (
    ObjectiveSpec,
    load_spec,
    make_storage,
    objective_value,
    open_study,
)

SMOKE = Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml"


def spec_file(tmp_path, **changes):
    data = yaml.safe_load(SMOKE.read_text())
    data.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_specs_validate():
    for path in (SMOKE.parent).glob("*.yaml"):
        load_spec(path)


def test_bad_specs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'spacee'"):
        load_spec(spec_file(tmp_path, spacee={}))
    with pytest.raises(ConfigError, match="needs low <= high"):
        load_spec(spec_file(tmp_path, space={"train.lr": {"type": "float", "low": 1, "high": 0}}))
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        load_spec(spec_file(tmp_path, space={"train.lrr": {"type": "float", "low": 0.1, "high": 1}}))
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")


def test_objective_final_and_auc():
    evals = {0: {"m": 0.2}, 10: {"m": 0.4}, 20: {"m": 0.6}}
    assert objective_value(evals, ObjectiveSpec(metric="m", mode="final")) == 0.6
    assert objective_value(evals, ObjectiveSpec(metric="m", mode="auc")) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="never logged"):
        objective_value(evals, ObjectiveSpec(metric="x"))


def sweep_cmd(spec, out, *extra):
    return [sys.executable, "-m", "tempo_bench.commands.cli", "sweep", str(spec), "--out", str(out), "--quiet", *extra]


def trials_of(spec, out, storage=None, study="smoke"):
    return open_study(load_spec(spec), study, make_storage(storage, Path(out) / "sweeps" / study)).get_trials()


def _two_workers(tmp_path, created_store, storage=None):
    """The shipped smoke spec widened to 4 trials, run by two worker processes: every trial
    complete, both workers used, each trial a nested MLflow run under the study's parent run."""
    created_store(tmp_path)
    spec = spec_file(tmp_path, n_trials=4, space={
        "methods.tempo.recal_interval": {"type": "categorical", "choices": [1, 2, 3, 4]}},
        overrides=["method=tempo", "train.steps=2", "eval.every=2", "eval.size=4"])
    extra = ["--workers", "2"] + (["--storage", storage] if storage else [])
    subprocess.run(sweep_cmd(spec, tmp_path, *extra), check=True, timeout=600)
    trials = trials_of(spec, tmp_path, storage)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and all("duplicate_of" in t.user_attrs for t in trials if t not in complete)
    # each parameter set trained once: both workers' samplers share the seed, not the draws
    assert sorted(t.params["methods.tempo.recal_interval"] for t in complete) == [1, 2, 3, 4]
    trials = complete
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, f"trials came from {workers}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-smoke")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "smoke"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["trial_number"] for r in children) == sorted(str(t.number) for t in trials)
    assert all(r.data.tags["trial_state"] == "COMPLETE" and "objective" in r.data.metrics for r in children)
    assert all("eval/mean_at_k" in r.data.metrics and "trial.methods.tempo.recal_interval" in r.data.params
               for r in children)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials/complete"] == 4


def test_two_workers_share_one_journal_study_with_nested_mlflow_runs(tmp_path, created_store):
    _two_workers(tmp_path, created_store)


@pytest.mark.skipif(not os.environ.get("TEMPO_TEST_POSTGRES_URL"),
                    reason="needs TEMPO_TEST_POSTGRES_URL (a PostgreSQL server; .ci/run starts one)")
def test_two_workers_share_one_postgresql_study(tmp_path, created_store):
    url = os.environ["TEMPO_TEST_POSTGRES_URL"]
    import optuna

    for summary in optuna.get_all_study_summaries(url):  # a clean database for this test
        optuna.delete_study(study_name=summary.study_name, storage=url)
    _two_workers(tmp_path, created_store, storage=url)


@pytest.mark.parametrize("sampler", ["grid", "random"])
def test_a_study_planned_by_two_coordinators_at_once_runs_each_trial_once(tmp_path, sampler):
    """Two `tempo-bench sweep` commands started together on one study both plan it before either
    runs a trial, so every owed grid point (or retry) is queued twice. Workers claim each once;
    the later copy is marked a duplicate and not run."""
    from optuna.trial import TrialState

    from tempo_bench.experiments.sweep.study import plan_trials, trial_params
    from tempo_bench.experiments.sweep.worker import claim_queued

    spec = load_spec(spec_file(tmp_path, n_trials=3, sampler={"name": sampler, "seed": 0}, space={
        "methods.tempo.recal_interval": {"type": "categorical", "choices": [1, 2, 3]}}))
    study = open_study(spec, "twice", make_storage(None, tmp_path / "study"))
    if sampler == "random":  # two interrupted trials for the coordinators to retry
        for _ in range(2):
            trial = study.ask()
            trial.suggest_categorical("methods.tempo.recal_interval", [1, 2, 3])
            trial.set_user_attr("interrupted", "killed")
            study.tell(trial, state=TrialState.FAIL)
    before = study.get_trials()

    class PlannedAtOnce:  # a coordinator that read the study before the other one queued
        def get_trials(self, deepcopy=False, states=None):
            return [t for t in before if states is None or t.state in states]

        def enqueue_trial(self, *args, **kwargs):
            return study.enqueue_trial(*args, **kwargs)

    for _ in range(2):
        plan_trials(PlannedAtOnce(), spec, 3)
    owed = 3 if sampler == "grid" else 2
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 2 * owed
    ran = []
    while (trial := claim_queued(study, spec)) is not None:
        ran.append(trial.number)
        study.tell(trial, 0.5)
    trials = study.get_trials()
    slot = (lambda t: str(trial_params(t))) if sampler == "grid" else (lambda t: t.user_attrs["retry_of"])
    assert len(ran) == owed and len({slot(trials[n]) for n in ran}) == owed
    duplicates = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == owed and all(t.state == TrialState.FAIL for t in duplicates)
    assert all(t.user_attrs["duplicate_of"] in ran for t in duplicates)


def test_draws_depend_on_the_trial_number_not_on_the_worker_or_the_rerun(tmp_path):
    """Every worker and every rerun builds the sampler with the study's seed; reseeded per trial,
    two workers draw different points and a rerun continues the sequence instead of replaying it."""
    from tempo_bench.experiments.sweep.spec import suggest

    spec = load_spec(spec_file(tmp_path, n_trials=6, sampler={"name": "random", "seed": 0},
                               space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}))
    storage = make_storage(None, tmp_path / "study")
    worker_a, worker_b = open_study(spec, "draws", storage), open_study(spec, "draws", storage)

    def draw(study):
        trial = study.ask()
        value = suggest(trial, spec)["train.lr"]
        study.tell(trial, 0.0)
        return value

    drawn = [draw(study) for study in (worker_a, worker_b, worker_a, worker_b)]
    assert len(set(drawn)) == 4
    rerun = open_study(spec, "draws", make_storage(None, tmp_path / "study"))
    assert draw(rerun) not in drawn
    alone = open_study(spec, "alone", make_storage(None, tmp_path / "other"))
    assert [draw(alone) for _ in range(4)] == drawn  # trial n draws the same point, whoever draws it


def test_a_point_already_held_is_not_trained_again_and_the_space_bounds_n_trials(tmp_path):
    from optuna.trial import TrialState

    from tempo_bench.experiments.sweep.study import drawn_before

    spec = load_spec(spec_file(tmp_path, n_trials=2, sampler={"name": "random", "seed": 0},
                               space={"methods.tempo.recal_interval": {"type": "categorical", "choices": [1, 2]}}))
    study = open_study(spec, "held", make_storage(None, tmp_path / "study"))
    first = study.ask({"methods.tempo.recal_interval": __import__("optuna").distributions.CategoricalDistribution([1, 2])})
    study.tell(first, 0.5)
    held = first.params
    assert drawn_before(study, first.number + 1, held) == first.number
    assert drawn_before(study, first.number + 1, {"methods.tempo.recal_interval": 3 - held["methods.tempo.recal_interval"]}) is None
    assert drawn_before(study, first.number, held) is None  # a trial does not hold against itself
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)  # a failed trial holds nothing
    with pytest.raises(ConfigError, match="n_trials=3 but the search space holds 2 distinct points"):
        load_spec(spec_file(tmp_path, n_trials=3, sampler={"name": "random", "seed": 0},
                            space={"methods.tempo.recal_interval": {"type": "categorical", "choices": [1, 2]}}))
