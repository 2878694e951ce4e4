"""Finalists: a study's best configurations trained again with other seeds before a champion
is named; the champion (best mean) is what the summary, the study run, compare, the test split
and export take."""

import shutil
from pathlib import Path

import optuna
import pytest
from conftest import TS, copy_stores, runs, tune

from search.cli import main
from search.engines.limits import epochs_spent
from search.records import note_study, study_facts


def study_file(folder, selection: str) -> str:
    """LeNet on Skin with its own `[selection]` settings."""
    text = (Path(__file__).parents[1] / "studies" / "lenet_skin.toml").read_text()
    path = folder / "lenet_skin.toml"  # the task's own name: the study is `lenet_skin`
    path.write_text(text + f"\n[selection]\n{selection}\n")
    return str(path)


@pytest.mark.slow(40)
def test_the_finalists_are_retrained_and_the_best_mean_is_champion(workdir, finalists_template,
                                                                   capsys):
    copy_stores(finalists_template / "stores", workdir)  # 3 trials, 2 finalists, other seeds
    out = (finalists_template / "out.txt").read_text()
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    record = study_facts(study).finalists
    done = sorted(study.get_trials(states=(TS.COMPLETE,)), key=lambda t: (-t.value, t.number))
    assert record["trials"] == [t.number for t in done[:2]]
    assert (record["method"], record["runs"]) == ("reseeds", 2)
    for trial in done[:2]:
        result = record["results"][str(trial.number)]
        assert result["n"] == 3 and result["values"][0] == trial.value
        assert result["mean"] == pytest.approx(sum(result["values"]) / 3)
    champion = max(record["trials"], key=lambda n: record["results"][str(n)]["mean"])
    assert record["champion"] == champion
    assert "finalists, each trained 2 more times with other seeds" in out
    assert f"champion: #{champion}  val_accuracy" in out

    # Each re-run is a child run of the study, with its curves; the trial's run has the mean.
    client, parents, children = runs(workdir)
    (parent,) = [p for p in parents if p.data.tags.get("medtune.kind") == "study"]
    reruns = [c for c in children if c.data.tags["medtune.kind"] == "finalist"]
    assert sorted(r.info.run_name for r in reruns) == sorted(
        f"lenet_skin-t{n:04d}-r{k}" for n in record["trials"] for k in (1, 2))
    assert all(client.get_metric_history(r.info.run_id, "val_accuracy") for r in reruns)
    mine = record["results"][str(champion)]
    assert parent.data.tags["best_trial"] == str(champion)
    assert parent.data.metrics["recheck_mean"] == pytest.approx(mine["mean"])
    assert parent.data.metrics["recheck_runs"] == 3
    (trial_run,) = [c for c in children if c.info.run_name == f"lenet_skin-t{champion:04d}"]
    assert trial_run.data.metrics["trial.recheck_sd"] == pytest.approx(mine["sd"])
    assert "study_plots/finalists.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "study_plots")}
    # The test split judges the champion's own model, and export registers it.
    test = study_facts(study).test
    assert test["trial"] == champion
    assert test["test_accuracy"] == pytest.approx(study.trials[champion].value, abs=1e-6)
    assert epochs_spent(study) == sum(t.user_attrs["epochs_run"] for t in study.trials
                                      if "epochs_run" in t.user_attrs) + record["epochs"]
    assert main(["export", "--study", "lenet_skin", "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    (exported,) = [r for r in runs(workdir)[1] if r.data.tags.get("medtune.kind") == "export"]
    assert exported.data.tags["medtune.exported_trial"] == str(champion)
    # Compare shows the mean ± SD and the runs behind it.
    assert main(["compare", "--studies", "lenet_skin", "--storage",
                 f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    assert f"{mine['mean']:.4f} ± {mine['sd']:.4f} (3)" in capsys.readouterr().out

    # The same command again: the finalists are the same, so nothing is retrained.
    assert tune(workdir, "--task", str(finalists_template / "lenet_skin.toml"), "--n-trials",
                "3", "--finalists", "2", "--data-dir", str(finalists_template / "course")) == 0
    assert len([c for c in runs(workdir)[2] if c.data.tags["medtune.kind"] == "finalist"]) == 4


def test_a_small_data_set_cross_validates_each_finalist(workdir, tiny_skin, capsys):
    """36 images, at most `small_data`: each finalist is trained on 3 folds of training +
    validation, every image validated on once; the search's own value is not one of its runs."""
    task = study_file(workdir, "folds = 3")
    assert tune(workdir, "--task", task, "--n-trials", "2", "--finalists", "1",
                "--data-dir", str(tiny_skin)) == 0
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    record = study_facts(study).finalists
    assert (record["method"], record["runs"]) == ("folds", 3)
    (number,) = record["trials"]
    result = record["results"][str(number)]
    assert result["n"] == 3 and result["searched"] == study.trials[number].value
    assert "by 3-fold cross-validation over training + validation" in capsys.readouterr().out
    _, _, children = runs(workdir)
    folds = [c for c in children if c.data.tags["medtune.kind"] == "finalist"]
    assert sorted(c.info.run_name for c in folds) == [
        f"lenet_skin-t{number:04d}-f{k}" for k in (1, 2, 3)]
    assert {c.data.params["fold"] for c in folds} == {"1", "2", "3"}


def test_an_epoch_budget_keeps_room_for_the_finalists(workdir, tiny_skin):
    """2-epoch trials, one finalist re-run twice: the search stops 4 epochs early, so the
    study with its re-runs stays within its 10 epochs (plus the one trial in flight)."""
    task = study_file(workdir, "small_data = 0")
    assert tune(workdir, "--task", task, "--n-trials", "20", "--epoch-budget", "10",
                "--finalists", "1", "--data-dir", str(tiny_skin)) == 0
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    record = study_facts(study).finalists
    searched = epochs_spent(study) - record["epochs"]
    assert record["epochs"] > 0 and searched <= 10 - record["epochs"] + 2
    assert epochs_spent(study) <= 10 + 2


def test_the_champion_is_the_rechecked_pick_only_while_its_finalists_are_the_best():
    """In a continued study, trials after the re-check may pass its finalists: the best trial
    is the champion again. Of trials with equal values the earlier one is best, as the kept
    models are ranked."""
    from optuna.trial import create_trial

    from search.records import champion_trial

    study = optuna.create_study(direction="maximize")
    for value in (0.7, 0.8, 0.8):
        study.add_trial(create_trial(value=value))
    assert champion_trial(study).number == 1  # trial 2 ties it, later
    note_study(study, finalists={"trials": [1, 2], "champion": 2})
    assert champion_trial(study).number == 2  # the re-check's pick
    study.add_trial(create_trial(value=0.9))
    assert champion_trial(study).number == 3  # passed since: the re-check no longer holds


@pytest.mark.slow(70)
def test_the_finalists_ensemble_is_weighed_on_their_folds_and_taken_as_one_model(
        workdir, tiny_skin, capsys, monkeypatch):
    """Two finalists on 3 folds: the ensemble of their fold models is scored on each fold's
    images beside the champion's own runs. Where it wins, it is the champion the test split,
    export and the summary take; the win is forced here (its real verdict is checked), so the
    path is tested whatever the tiny data decides."""
    import search.champion.finalists
    from search.champion import ensemble as ensemble_module

    skin = tiny_skin / "Lab2" / "Skin"
    shutil.copytree(skin / "validation", skin / "test")
    task = study_file(workdir, "folds = 3")
    text = Path(task).read_text().replace('loss = { choices = ["bce", "hinge"] }',
                                          'loss = { choices = ["bce"] }')  # members share a loss
    Path(task).write_text(text)
    verdicts = []

    def weigh_and_take(*args, **kwargs):
        weighed = ensemble_module.weigh(*args, **kwargs)
        verdicts.append(dict(weighed))
        return {**weighed, "chosen": True}

    monkeypatch.setattr(search.champion.finalists, "weigh", weigh_and_take)
    assert tune(workdir, "--task", task, "--n-trials", "3", "--finalists", "2",
                "--refit-epochs", "4", "--data-dir", str(tiny_skin)) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    record = study_facts(study).finalists
    (real,) = verdicts
    ensemble = record["ensemble"]
    assert ensemble["members"] == [record["champion"]] + [
        n for n in record["trials"] if n != record["champion"]]
    assert ensemble["n"] == len(ensemble["values"]) == 3
    assert ensemble["mean"] == pytest.approx(sum(ensemble["values"]) / 3)
    assert ensemble["champion_mean"] == pytest.approx(
        record["results"][str(record["champion"])]["mean"])
    assert real["chosen"] == (real["mean"] > real["champion_mean"])
    assert f"ensemble of #{ensemble['members'][0]}, #{ensemble['members'][1]}" in out
    assert "no refit: the finalists' ensemble is the champion" in out
    # The test split judged the ensemble, as one model; its child run holds the held-in values.
    test = study_facts(study).test
    assert test["model"] == "ensemble" and test["model_id"] == ensemble["model_id"]
    client, _, children = runs(workdir)
    (run,) = [c for c in children if c.data.tags["medtune.kind"] == "ensemble"]
    assert run.info.run_id == ensemble["run_id"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "held_in_accuracy")
            ] == pytest.approx(ensemble["values"])
    # Export registers it; the served model takes raw images as a single model does.
    assert main(["export", "--study", "lenet_skin", "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    (exported,) = [r for r in runs(workdir)[1] if r.data.tags.get("medtune.kind") == "export"]
    assert exported.data.tags["medtune.champion"] == "ensemble"
    assert exported.data.tags["medtune.model_id"] == ensemble["model_id"]
    assert exported.data.metrics["ensemble_value"] == pytest.approx(ensemble["mean"])


def test_an_epoch_budget_re_checks_fewer_finalists_than_would_swallow_it():
    """Completed trials of 40 epochs, 3 folds a finalist: 3 finalists would take 360 epochs,
    2 take 240; under 300 epochs and `share = 0.5` (150) one is re-checked; without a budget,
    or with a share that admits them, all three are. The search keeps the other half of a
    budget whatever the re-check wants."""
    import dataclasses
    from types import SimpleNamespace

    import numpy as np
    from optuna.trial import create_trial

    from search.champion.finalists import planned, room
    from search.spec.study_files import load_spec

    spec = load_spec("lenet_skin")
    spec = dataclasses.replace(spec, selection={**spec.selection, "top_k": 3, "folds": 3,
                                                 "small_data": 3000, "share": 0.5})
    problem = SimpleNamespace(data=SimpleNamespace(y_train=np.zeros(800), y_val=np.zeros(200)))
    study = optuna.create_study(direction="maximize")
    for value in (0.7, 0.8, 0.75):
        study.add_trial(create_trial(value=value, user_attrs={"epochs_run": 40}))
    assert planned(spec, problem, study, 3, 200, 300) == 1
    assert room(spec, problem, 3, 200, 300)(study) == 120
    assert room(spec, problem, 3, 200, 200)(study) == 100  # 120 wanted: the search keeps half
    assert room(spec, problem, 3, 200, 300)(optuna.create_study()) == 0  # nothing done yet
    assert planned(spec, problem, study, 3, 200, None) == 3
    assert planned(spec, problem, study, 3, 200, 800) == 3  # 360 <= 400
    wide = dataclasses.replace(spec, selection={**spec.selection, "share": 0.8})
    assert planned(wide, problem, study, 3, 200, 300) == 2  # 240 <= 240
