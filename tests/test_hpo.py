"""Multi-fidelity search on Optuna (jnas.hpo, experiments/hpo.py) end to end on digits with a
one-cell-per-stage NAS-Bench-201 network: HyperBand's pruning and the outputs, a study resumed
after kill -9, two processes on one SQLite file, the benchmark regret, bad input.

Every study runs as a subprocess with one CPU device, so that all of them compile the same
programs: a trial's cell depends only on (seed, trial number), so the studies below train the
same few cells, each compiled once (the persistent cache of conftest.py) and loaded after."""

import csv
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from tqdm.auto import tqdm

from jnas import hpo as jhpo
from jnas.hpo import EDGE_PARAMS, HPOConfig, run_hpo
from jnas.spaces import nb201
from tests.common import ROOT, load_script

hpo = load_script("hpo")

MAX_BUDGET = 4
TINY = [
    "--dataset", "digits", "--train_size", "384", "--val_size", "192", "--init_channels", "4",
    "--cells_per_stage", "1", "--batch_size", "64", "--min_budget", "1", "--max_budget",
    str(MAX_BUDGET), "--eta", "2", "--heartbeat_interval", "2", "--no_progress",
]  # fmt: skip
STUDY = "nas-bench-201-hyperband-feature_history"  # the default name of TINY's study
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def command(save, *flags):
    return [sys.executable, str(ROOT / "experiments" / "hpo.py"), *TINY, "--save", str(save),
            *(str(f) for f in flags)]


def run(save, *flags) -> str:
    done = subprocess.run(command(save, *flags), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def trials(url):
    return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)


def sqlite(save):
    return f"sqlite:///{save / 'study.db'}"


def arch(trial):
    return nb201.to_string([trial.params[name] for name in EDGE_PARAMS])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished HyperBand study of 5 trials: (its folder, its trials, its stdout)."""
    save = tmp_path_factory.mktemp("hpo")
    out = run(save, "--n_trials", 5)
    return save, trials(sqlite(save)), out


def test_hyperband_prunes_at_rungs_and_the_outputs_agree_with_the_storage(study):
    save, ts, out = study
    assert len(ts) == 5 and all(t.state in FINISHED for t in ts)
    rungs = {1, 2}  # min_budget * eta^k below max_budget
    pruned = [t for t in ts if t.state.name == "PRUNED"]
    complete = [t for t in ts if t.state.name == "COMPLETE"]
    assert pruned and complete
    for t in pruned:  # stopped at a rung, its estimate reported at every epoch until then
        assert max(t.intermediate_values) in rungs
        assert sorted(t.intermediate_values) == list(range(1, max(t.intermediate_values) + 1))
        assert t.value == t.intermediate_values[max(t.intermediate_values)]
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(1, MAX_BUDGET + 1))
        assert t.value == t.intermediate_values[MAX_BUDGET]
        assert 0 <= t.value <= 1

    with open(save / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in ts]
    for r, t in zip(rows, ts, strict=True):
        assert (r["state"], r["arch"]) == (t.state.name, arch(t))
        assert int(r["epochs"]) == max(t.intermediate_values)
        assert float(r["value"]) == t.value
        assert [r[f"value@{b}"] for b in (1, 2, 4)] == [
            str(t.intermediate_values[b]) if b in t.intermediate_values else "" for b in (1, 2, 4)
        ]
    best = max(complete, key=lambda t: t.value)
    result = json.loads((save / "best.json").read_text())
    assert (result["arch"], result["trial"], result["value"]) == (arch(best), best.number,
                                                                  best.value)
    assert result["epochs_spent"] == sum(int(r["epochs"]) for r in rows)
    assert (save / "progress.png").stat().st_size > 0
    assert json.loads((save / "config.json").read_text())["algo"] == "hyperband"
    assert f"best cell {arch(best)}" in out


def test_a_study_killed_mid_trial_continues_to_n_trials(study, tmp_path):
    reference = {t.number: t for t in study[1]}
    save = tmp_path / "killed"
    proc = subprocess.Popen(command(save, "--n_trials", 2), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill -9 once a trial has finished and the next one has trained for a second (Optuna
    # never fails a running trial killed before its first heartbeat, milliseconds in).
    try:
        while proc.poll() is None:
            if (save / "config.json").exists():  # written once the study is open
                ts = trials(sqlite(save))
                # Its first epoch reported: the heartbeat has long been written.
                if (ts and ts[0].state in FINISHED and ts[-1].state.name == "RUNNING"
                        and (ts[-1].intermediate_values or datetime.datetime.now()
                             - ts[-1].datetime_start > datetime.timedelta(seconds=1))):
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = {t.number: t for t in trials(sqlite(save)) if t.state in FINISHED}
    killed = [t.number for t in trials(sqlite(save)) if t.state.name == "RUNNING"]
    assert before and len(killed) == 1

    run(save, "--n_trials", 2)
    after = trials(sqlite(save))
    assert sum(t.state in FINISHED for t in after) == 2
    assert [t.number for t in after if t.state.name == "FAIL"] == killed
    assert all(t.state in FINISHED for t in after if t.number != killed[0])
    for number, t in before.items():  # kept, and as the uninterrupted study computed them
        assert (after[number].state, after[number].value) == (t.state, t.value)
        assert (arch(t), t.value) == (arch(reference[number]), reference[number].value)
    with open(save / "trials.csv") as f:
        retries = [int(r["number"]) for r in csv.DictReader(f) if r["retry_of"] == str(killed[0])]
    assert len(retries) == 1 and after[retries[0]].params == after[killed[0]].params
    archs = [arch(t) for t in after if t.state in FINISHED]
    assert len(set(archs)) == len(archs)  # no cell run twice


def test_two_processes_on_one_sqlite_file_finish_exactly_n_trials(study, tmp_path):
    reference = {t.number: t for t in study[1]}
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [subprocess.Popen(command(tmp_path / name, "--n_trials", 3, "--storage", url),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ts = trials(url)
    done = [t for t in ts if t.state in FINISHED]
    assert len(done) == 3
    # A trial asked for when 3 were finished or running ends at once as a surplus one.
    assert all(t.user_attrs.get("surplus") for t in ts if t.state not in FINISHED)
    # Draws depend on (seed, number) alone: the one-process study's cells, number for number.
    assert all(t.params == reference[t.number].params for t in done)
    ran = [{int(line.split()[1]) for line in out.splitlines() if line.startswith("trial ")}
           for out, _ in outs]
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {t.number for t in done}


def test_the_benchmark_regret_of_the_chosen_cell(study, tmp_path, capsys):
    save = tmp_path / "bench"
    shutil.copytree(study[0], save)
    ts = study[1]
    best = json.loads((save / "best.json").read_text())["arch"]
    table = tmp_path / "table.csv"
    # Every trial's cell, and the benchmark's best cell (not drawn) at 94.37.
    scores = {arch(t): 80.0 + t.number for t in ts}
    scores[nb201.BEST_CIFAR10] = 94.37
    table.write_text("arch,cifar10_test,cifar100_test\n" + "".join(
        f"{a},{v},{v - 20}\n" for a, v in scores.items()))
    assert hpo.main([*TINY, "--n_trials", "5", "--benchmark", str(table), "--save",
                     str(save)]) == 0
    out = capsys.readouterr().out
    assert len(trials(sqlite(save))) == len(ts)  # a finished study trains nothing more
    regret = 94.37 - scores[best]
    assert out.strip().splitlines()[-1] == (
        f"benchmark cifar10_test of the chosen cell: {scores[best]:.2f}, the table's best "
        f"94.37, regret {regret:.2f}"
    )
    result = json.loads((save / "best.json").read_text())
    assert result["regret"] == pytest.approx(regret)
    assert result["benchmark_best_arch"] == nb201.BEST_CIFAR10


@pytest.mark.parametrize("flags, message", [
    (("--min_budget", "8"), "--max_budget 4 is below --min_budget 8"),
    (("--eta", "1"), "--eta must be at least 2"),
    (("--algo", "tpe"), "invalid choice: 'tpe'"),
    (("--space", "darts"), "--space darts is not searched by the multi-fidelity search"),
    (("--train_size", "1400"), "--train_size 1400 + --val_size 192 exceed"),
])  # fmt: skip
def test_bad_input_is_one_clear_message(tmp_path, capsys, flags, message):
    try:
        code = hpo.main([*TINY, *flags, "--save", str(tmp_path / "bad")])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "study.db").exists()


def test_a_study_refuses_to_continue_with_other_settings(study, tmp_path, capsys):
    save = tmp_path / "other"
    shutil.copytree(study[0], save)
    assert hpo.main([*TINY, "--n_trials", "5", "--learning_rate", "0.05", "--save",
                     str(save)]) == 2
    assert "--learning_rate: 0.1 -> 0.05" in capsys.readouterr().err


def fake_train_candidate(config, train_set, val_set, *, estimator, seed_key, progress=False):
    """A stand-in trainer (no network): the estimate grows to the cell's share of conv ops."""
    convs = sum(op.startswith("nor_conv") for op in nb201.from_string(config.arch)) / 6
    for epoch in range(1, config.epochs + 1):
        value = convs * epoch / config.epochs
        yield {"epoch": epoch, "val_acc": value, "feature_history": value}


def fake_config(tmp_path, **fields):
    config = HPOConfig(**{
        "dataset": "digits", "train_size": 384, "val_size": 192, "batch_size": 64,
        "init_channels": 4, "cells_per_stage": 1, "max_budget": 4, "n_trials": 8,
        "heartbeat_interval": 2, "save": str(tmp_path / fields.get("algo", "hyperband")),
        **fields})  # fmt: skip
    os.makedirs(config.save, exist_ok=True)
    return config


@pytest.mark.parametrize("algo, fields", [
    ("random", {}), ("hyperband", {}),
    # One budget, one bracket: TPE proposes after BOHB's d + 1 = 7 random trials.
    ("bohb", {"max_budget": 1, "n_trials": 9}),
])  # fmt: skip
def test_each_engine_on_a_stand_in_trainer(tmp_path, monkeypatch, algo, fields):
    monkeypatch.setattr(jhpo, "train_candidate", fake_train_candidate)
    config = fake_config(tmp_path, algo=algo, **fields)
    result = run_hpo(config, progress=False)
    ts = optuna.load_study(study_name=config.name(),
                           storage=config.storage_url()).get_trials(deepcopy=False)
    assert all(t.state in FINISHED for t in ts) and len(ts) == config.n_trials
    best = max((t for t in ts if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result["arch"] == arch(best) and result["value"] == best.value
    epochs = [max(t.intermediate_values) for t in ts]
    # The random sampler seeded by (seed, number): the same cell for each number, whatever
    # the engine; TPE's first 7 are its random sampler's with that seed.
    draws = [trial_cell(config.seed, n) for n in range(len(ts))]
    if algo == "random":
        assert epochs == [4] * 8 and [arch(t) for t in ts] == draws
    elif algo == "hyperband":  # pruned at rungs below max_budget, and some reach it
        assert set(epochs) <= {1, 2, 4} and min(epochs) < 4 and 4 in epochs
        assert [arch(t) for t in ts] == draws
    else:
        assert [arch(t) for t in ts][:7] == draws[:7] and [arch(t) for t in ts] != draws


def trial_cell(seed, number):
    """The cell that the random sampler of trial `number` draws."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(
        seed=jhpo.trial_seed(seed, number)))
    trial = study.ask()
    return nb201.to_string([trial.suggest_categorical(n, nb201.NB201_OPS) for n in EDGE_PARAMS])


def test_a_trial_asked_for_beyond_n_trials_ends_as_a_surplus_one(tmp_path):
    config = fake_config(tmp_path, n_trials=1)
    with jhpo._quiet(optuna):
        study = jhpo.open_study(config)
        study.add_trial(optuna.trial.create_trial(
            params=dict.fromkeys(EDGE_PARAMS, "skip_connect"), value=0.5,
            distributions={n: optuna.distributions.CategoricalDistribution(nb201.NB201_OPS)
                           for n in EDGE_PARAMS}))
        # As a second worker that asked for a trial while the first one's was running.
        objective = jhpo._objective(config, None, None, tqdm(disable=True))
        with pytest.raises(jhpo._Surplus):
            study.optimize(objective, n_trials=1, catch=())
    surplus = study.get_trials()[1]
    assert surplus.state.name == "FAIL" and surplus.user_attrs["surplus"] and not surplus.params
