"""A trial's and a study's typed records: written and read through `search.records`, under the
attribute names studies have always had (so older studies read the same)."""

import optuna
import pytest

from search.records import StudyFacts, TrialFacts, attrs, facts, note, note_study, study_facts


def test_a_trial_records_and_reads_back_its_facts_under_the_old_names():
    study = optuna.create_study()
    trial = study.ask()
    note(trial, run_id="abc", seed=7, best_epoch=3, retry_history=[1, 2], baseline="")
    assert trial.user_attrs == {"mlflow_run_id": "abc", "seed": 7, "best_epoch": 3,
                                "retry_history": [1, 2], "baseline": ""}
    study.tell(trial, 0.5)
    read = facts(study.trials[0])
    assert read == TrialFacts(run_id="abc", seed=7, best_epoch=3, retry_history=(1, 2),
                              baseline="")
    assert read.seed_or_number(4) == 7 and TrialFacts().seed_or_number(4) == 4
    assert read.baseline is not None  # a lab baseline without a note is still one


def test_a_field_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match="not fields of TrialFacts: best_epochs"):
        attrs(best_epochs=3)
    with pytest.raises(TypeError, match="not fields of TrialFacts"):
        note(optuna.create_study().ask(), mlflow_run_id="x")  # the field is run_id


def test_a_study_records_and_reads_back_its_facts_under_the_old_names(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage)
    assert study_facts(study) == StudyFacts()
    note_study(study, objective="val_dice", parent_run_id="r1", test={"trial": 2})
    assert study.user_attrs == {"medtune_objective": "val_dice", "mlflow_parent_run_id": "r1",
                                "medtune_test": {"trial": 2}}
    # read from the storage: another process's study object sees it
    again = study_facts(optuna.load_study(study_name="s", storage=storage))
    assert again == StudyFacts(objective="val_dice", parent_run_id="r1", test={"trial": 2})
    with pytest.raises(TypeError, match="not fields of StudyFacts: medtune_test"):
        note_study(study, medtune_test={})
