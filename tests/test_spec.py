"""Study files: every task loads, its baselines are complete and inside its search space."""

import optuna
import pytest

from search.spec.consumers import AUGMENTATIONS
from search.spec.pruners import make_pruner
from search.spec.space import active, suggest
from search.spec.study_files import load_spec, spec_from_record, task_names

ISSUE_TASKS = {"mlp_skin", "lenet_skin", "alexnet_skin", "vgg_skin", "vgg_bone"}


def test_the_lab_tasks_are_there():
    assert set(task_names()) >= ISSUE_TASKS


@pytest.mark.parametrize("task", task_names())
def test_every_study_file_is_valid(task):
    spec = load_spec(task)
    assert spec.baselines, "a lab task enqueues its lab baselines"
    assert {"learning_rate", "batch_size"} <= set(spec.space)
    assert spec.transfer or "base" in spec.space  # a transfer task's base is frozen
    assert {"optimizer", "loss"} <= set(spec.space) | set(spec.fixed)
    assert spec.space["learning_rate"].log
    for baseline in spec.baselines:
        assert set(baseline) - {"note", "budgets"} == {
            p for p in spec.space if active(p, baseline, spec.conditions)}
        assert baseline["note"]
    assert spec.budget["lab"]["image_size"] >= 128  # the labs trained at 128 (U-Net: 256)
    assert isinstance(make_pruner(spec.pruner), optuna.pruners.BasePruner)


@pytest.mark.parametrize("task", task_names())
def test_a_recorded_spec_is_the_spec_it_was_recorded_from(task):
    spec = load_spec(task)
    assert spec.defaults_source  # the defaults are in the record, not just the task's file
    assert spec_from_record(spec.record()) == spec


def test_a_broken_record_names_where_it_came_from():
    record = {**load_spec("lenet_skin").record(), "file": "model = "}
    with pytest.raises(ValueError, match="'lenet_skin' as its study recorded it: not valid TOML"):
        spec_from_record(record)


def test_alexnet_baselines_include_hinge_and_the_optimizers():
    spec = load_spec("alexnet_skin")
    assert {b["optimizer"] for b in spec.baselines} == {"adam", "sgd", "rmsprop"}
    assert any(b["loss"] == "hinge" for b in spec.baselines)


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown task 'vgg_brain'; known tasks: alexnet_skin"):
        load_spec("vgg_brain")


def write_study(tmp_path, text, name="mine.toml", model="lenet"):
    path = tmp_path / name
    path.write_text(f'description = "test"\nmodel = "{model}"\ndata = "skin"\n' + text)
    return str(path)


def test_baseline_outside_the_space_is_refused(tmp_path):
    path = write_study(tmp_path, """
[space]
learning_rate = { low = 1e-4, high = 1e-2, log = true }
base = { choices = [8, 16] }
batch_size = { choices = [8] }
optimizer = { choices = ["adam"] }
loss = { choices = ["bce"] }
[[baselines]]
note = "too slow"
learning_rate = 1e-6
base = 8
""")
    with pytest.raises(ValueError, match="learning_rate=1e-06 is outside the search space"):
        load_spec(path)


def test_baseline_with_a_typo_is_refused(tmp_path):
    path = write_study(tmp_path, """
[space]
base = { choices = [8, 16] }
[[baselines]]
note = "typo"
bsae = 8
""")
    with pytest.raises(ValueError, match="not in the search space: bsae"):
        load_spec(path)


def test_space_types_follow_the_toml_values(tmp_path):
    spec = load_spec(write_study(tmp_path, """
[space]
base = { low = 1, high = 5 }
dropout = { low = 0.0, high = 0.5 }
optimizer = { choices = ["adam", "sgd"] }
"""))
    assert isinstance(spec.space["base"], optuna.distributions.IntDistribution)
    assert isinstance(spec.space["dropout"], optuna.distributions.FloatDistribution)
    assert spec.space["optimizer"].choices == ("adam", "sgd")


def test_empty_range_is_refused(tmp_path):
    path = write_study(tmp_path, """
[space]
empty = { low = 3, high = 3 }
""")
    with pytest.raises(ValueError, match="space.empty: low .3. must be below high"):
        load_spec(path)


def test_pruner_table_with_its_own_type_replaces_the_default(tmp_path):
    path = write_study(tmp_path, """
[space]
base = { choices = [8] }
[pruner]
type = "threshold"
lower = 0.9
""")
    spec = load_spec(path)
    assert spec.pruner == {"type": "threshold", "lower": 0.9}
    assert isinstance(make_pruner(spec.pruner), optuna.pruners.ThresholdPruner)
    with pytest.raises(ValueError, match="unknown pruner 'magic'"):
        make_pruner({"type": "magic"})


SPACE_MLP = "[space]\nbase = { choices = [8] }\n"


def test_a_searched_setting_the_model_ignores_is_refused(tmp_path):
    path = write_study(tmp_path, SPACE_MLP + "spatial_dropout = { low = 0.0, high = 0.2 }\n",
                       model="mlp")
    with pytest.raises(ValueError) as error:
        load_spec(path)
    assert str(error.value) == (
        f"study file {path}: [space] spatial_dropout is not used by model 'mlp' (it takes: "
        "base, batch_norm, dropout, loss), nor by training (learning_rate, optimizer, loss, "
        "batch_size) or data (batch_size, augment, aug_rotation, aug_shift, aug_zoom, "
        "aug_flip, aug_brightness, aug_contrast); remove it or use a model that takes it: "
        "lenet, alexnet, vgg16")


@pytest.mark.parametrize(("text", "expected"), [
    ('[fixed]\ndense_units = "64-64"\n', "[fixed] dense_units is not used by model 'mlp'"),
    ("[fixed]\nbatchnorm = true\n", "; did you mean 'batch_norm'?"),
    ("[fixed]\nwidth = 3\n", "; remove it"),
    ("[fixed]\nn_classes = 3\n", "[fixed] n_classes comes from the data, not from a study"),
    ("aug_blur = { low = 0.0, high = 0.1 }\n", "[space] aug_blur is not used by model 'mlp'"),
])
def test_fixed_and_searched_settings_need_a_consumer(tmp_path, text, expected):
    path = write_study(tmp_path, SPACE_MLP + text, model="mlp")  # [space] first: aug_blur
    with pytest.raises(ValueError) as error:
        load_spec(path)
    assert str(error.value).startswith(f"study file {path}: ") and expected in str(error.value)


def test_the_named_augmentations_are_what_the_pipeline_reads():
    from datasets.pipeline import geometric_layers, intensity_layers

    for name in AUGMENTATIONS:
        value = "horizontal" if name == "flip" else 0.1
        stacks = geometric_layers({name: value}, 0), intensity_layers({name: value}, 0)
        assert any(stack is not None for stack in stacks), f"the augmenter ignores {name}"


def test_augmentation_ranges_are_searched_only_with_augment(tmp_path):
    spec = load_spec(write_study(tmp_path, """
[space]
base = { choices = [8] }
augment = { choices = [false, true] }
aug_zoom = { low = 0.0, high = 0.05, when = "augment" }
[[baselines]]
note = "no augmentation"
base = 8
[[baselines]]
note = "lab augmentation"
base = 8
augment = true
aug_zoom = 0.05
"""))
    assert spec.space["aug_zoom"].high == 0.05  # the task's own range wins over the shared one
    assert "aug_rotation" in spec.space and spec.conditions["aug_rotation"] == "augment"
    plain, augmented = spec.baselines
    assert not any(k.startswith("aug_") for k in plain)
    assert augmented["aug_zoom"] == 0.05 and augmented["aug_flip"] == "horizontal"

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, spec.space, spec.conditions)
        seen.append(params["augment"])
        assert params["augment"] == any(k.startswith("aug_") for k in params)
        study.tell(trial, 0.0)
    assert set(seen) == {False, True}


def test_condition_must_come_after_its_switch(tmp_path):
    path = write_study(tmp_path, """
[space]
aug_zoom2 = { low = 0.0, high = 0.1, when = "augment" }
augment = { choices = [false, true] }
""")
    with pytest.raises(ValueError, match="when = 'augment' must name a search dimension listed"):
        load_spec(path)


SPACE = "[space]\nbase = { choices = [8] }\n"
BAD_KEYS = {  # study text -> (the table, the bad key, the suggestion)
    "space_typo": ("[space]\ndropout = { low = 0.0, hgih = 0.5 }\n",
                   "[space.dropout]", "'hgih'", "did you mean 'high'?"),
    "space_step": ("[space]\nunits = { low = 1, high = 5, stepp = 2 }\n",
                   "[space.units]", "'stepp'", "did you mean 'step'?"),
    "top_level": ("epochz = 3\n" + SPACE, "top level", "'epochz'",
                  "did you mean 'epochs' in [budget.<name>]?"),
    "training": (SPACE + "[training]\nearly_stoping_patience = 1\n", "[training]",
                 "'early_stoping_patience'", "did you mean 'early_stopping_patience'?"),
    "budget": (SPACE + "[budget.quick]\nn_trails = 3\n", "[budget.quick]", "'n_trails'",
               "did you mean 'n_trials'?"),
    "recovery": (SPACE + "[recovery]\nretry = 3\n", "[recovery]", "'retry'",
                 "did you mean 'retries'?"),
    "gradcam": (SPACE + '[gradcam]\ntrials = "best"\nimage = 3\n', "[gradcam]", "'image'",
                "did you mean 'images'?"),
    "augment_space": (SPACE + '[augment_space]\naug_zoom = { low = 0.0, hihg = 0.1 }\n',
                      "[augment_space.aug_zoom]", "'hihg'", "did you mean 'high'?"),
    "sampler": (SPACE + "[sampler]\nn_startup_trails = 3\n", "[sampler]",
                "'n_startup_trails' for 'tpe'", "did you mean 'n_startup_trials'?"),
    "pruner": (SPACE + '[pruner]\ntype = "hyperband"\nmin_resourse = 3\n', "[pruner]",
               "'min_resourse' for 'hyperband'", "did you mean 'min_resource'?"),
    "pruner_type": (SPACE + '[pruner]\ntype = "hyperbnad"\n', "[pruner]", "type 'hyperbnad'",
                    "did you mean 'hyperband'?"),
    "no_pruner_args": (SPACE + '[pruner]\ntype = "none"\nn_warmup_steps = 3\n', "[pruner]",
                       "'n_warmup_steps' for 'none'", "known keys: type"),
    "export": (SPACE + "[export]\ntolerence = 0.1\n", "[export]", "'tolerence'",
               "did you mean 'tolerance'?"),
    "artifacts": (SPACE + "[artifacts]\noverlay_image = 3\n", "[artifacts]", "'overlay_image'",
                  "did you mean 'overlay_images'?"),
    "split": (SPACE + "[split]\nvalidation_fractoin = 0.3\n", "[split]",
              "'validation_fractoin'", "did you mean 'validation_fraction'?"),
    "synthetic": (SPACE + "[synthetic.skin]\nn_vall = 3\n", "[synthetic.skin]", "'n_vall'",
                  "did you mean 'n_val'?"),
    "synthetic_set": (SPACE + "[synthetic.bones]\nsize = 64\n", "[synthetic]", "'bones'",
                      "did you mean 'bone'?"),
}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_unknown_keys_are_named_with_the_file_and_the_nearest_key(tmp_path, case):
    text, table, key, suggestion = BAD_KEYS[case]
    path = write_study(tmp_path, text)
    with pytest.raises(ValueError) as error:
        load_spec(path)
    message = str(error.value)
    assert message.startswith(f"study file {path}: ")
    assert table in message and f"unknown {'' if 'type' in key else 'key '}{key}" in message
    assert suggestion in message


@pytest.mark.parametrize(("text", "expected"), [
    ("[space]\ndropout = { low = 0.0 }\n",
     "[space.dropout] missing required key 'high' (it needs choices, or low and high)"),
    (SPACE + "[budget.tiny]\nn_trials = 3\n",
     "[budget.tiny] missing required keys 'image_size', 'epochs'"),
    (SPACE + '[gradcam]\ntrials = "best"\n', "[gradcam] missing required key 'images'"),
])
def test_missing_required_keys_are_named(tmp_path, text, expected):
    path = write_study(tmp_path, text)
    with pytest.raises(ValueError, match=f"study file {path}: ") as error:
        load_spec(path)
    assert expected in str(error.value)


def test_a_task_without_model_is_refused(tmp_path):
    path = tmp_path / "nomodel.toml"
    path.write_text('data = "skin"\n' + SPACE)
    with pytest.raises(ValueError, match="at the top level, missing required key 'model'"):
        load_spec(str(path))


@pytest.mark.parametrize(("text", "expected"), [
    (SPACE + '[budget.quick]\nepochs = "10"\n', "[budget.quick] epochs must be an integer"),
    ("[space]\ndropout = 0.5\n", "[space.dropout] must be a table, got 0.5"),
    (SPACE + "[sampler]\nseed = 3\n", "[sampler] seed cannot be set here: the seed comes from"),
    (SPACE + "x = \n", "not valid TOML"),
    ("[space]\nrate = { choices = [1, 2], low = 0 }\n",
     "[space.rate] mixes choices with low and high; give one or the other"),
    (SPACE + "[artifacts]\noverlay_images = 2.5\n",
     "[artifacts] overlay_images must be an integer"),
    (SPACE + '[export]\ntolerance = "0.1"\n', "[export] tolerance must be a number"),
    (SPACE + '[split]\nseed = "0"\n', "[split] seed must be an integer"),
    (SPACE + "[synthetic.lungs]\nsize = 64.0\n", "[synthetic.lungs] size must be an integer"),
    (SPACE + "[budget.quick]\nbaselines = -1\n",
     "[budget.quick] baselines = -1: the number of the study's baselines to queue first"),
    (SPACE + "[selection]\ntop_k = 0\n",
     "[selection] top_k = 0: the number of the study's best models kept in MLflow, 1 or more"),
    (SPACE + "[selection]\ntop_k = 2.0\n", "[selection] top_k must be an integer"),
    (SPACE + "[selection]\nshare = 0\n",
     "[selection] share = 0: the most of an epoch budget the finalists' re-runs may take"),
])
def test_wrong_values_are_named(tmp_path, text, expected):
    with pytest.raises(ValueError) as error:
        load_spec(write_study(tmp_path, text))
    assert expected in str(error.value)


def test_fixed_settings_and_optuna_arguments_pass(tmp_path):
    spec = load_spec(write_study(tmp_path, SPACE + """
[fixed]
spatial_dropout = 0.1
[sampler]
type = "random"
[pruner]
type = "percentile"
percentile = 25.0
n_warmup_steps = 1
"""))
    assert spec.fixed == {"spatial_dropout": 0.1}
    assert spec.sampler == {"type": "random"}
    assert isinstance(make_pruner(spec.pruner), optuna.pruners.PercentilePruner)


def test_the_cli_prints_a_bad_study_file_as_one_line(tmp_path, capsys):
    from search.cli import main

    path = write_study(tmp_path, "[space]\ndropout = { low = 0.0, hgih = 0.5 }\n")
    assert main(["tune", "--task", path]) == 2
    assert capsys.readouterr().err == (f"medtune: error: study file {path}: [space.dropout] "
                                       "unknown key 'hgih'; did you mean 'high'?\n")


def test_export_artifacts_split_and_synthetic_settings_are_in_the_spec(tmp_path):
    defaults = load_spec("unet_xray")
    assert defaults.export == {"tolerance": 0.02}
    assert defaults.selection == {"top_k": 3, "finalists": 0, "reseeds": 2, "folds": 5,
                                  "small_data": 3000, "ensemble": True, "share": 0.5}
    assert defaults.artifacts == {"overlay_images": 6, "mask_threshold": 0.5}
    assert defaults.split == {"validation_fraction": 0.2, "seed": 0}
    assert defaults.synthetic["lungs"] == {"n_pairs": 234, "size": 128, "seed": 0}
    spec = load_spec(write_study(tmp_path, SPACE + """
[export]
tolerance = 0.05
[artifacts]
overlay_images = 3
[split]
validation_fraction = 0.25
[synthetic.skin]
size = 64
"""))
    assert spec.export == {"tolerance": 0.05}
    # A table merges key by key onto the defaults: what the file does not say stays.
    assert spec.artifacts == {"overlay_images": 3, "mask_threshold": 0.5}
    assert spec.split == {"validation_fraction": 0.25, "seed": 0}
    assert spec.synthetic["skin"] == {"n_train": 1000, "n_val": 200, "size": 64, "seed": 0}
    assert spec.synthetic["bone"] == defaults.synthetic["bone"]


def test_the_quick_budget_queues_the_lab_recipe_and_the_lab_budget_every_baseline():
    from search.study.run import enqueue_baselines

    spec = load_spec("vgg_bone")  # five baselines, none marked for a budget
    queued = {}
    for budget in ("quick", "lab"):
        study = optuna.create_study()
        enqueue_baselines(spec, study, budget)
        queued[budget] = [t.user_attrs.get("baseline") or t.user_attrs["start"]
                          for t in study.trials]
    # The bar (the lab's first recipe), then medtune's start; budget lab: the whole grid first.
    assert queued["quick"] == [spec.baselines[0]["note"], spec.start["note"]]
    assert queued["lab"] == [b["note"] for b in spec.baselines] + [spec.start["note"]]


def test_the_start_is_the_lab_recipe_with_the_start_settings_the_task_searches(tmp_path):
    spec = load_spec(write_study(tmp_path, """
[space]
base = { choices = [8, 16] }
learning_rate = { low = 1e-5, high = 1e-1, log = true }
batch_size = { choices = [8, 32] }
augment = { choices = [false, true] }
[[baselines]]
note = "lab"
base = 16
learning_rate = 1e-2
batch_size = 8
"""))
    # batch_norm and optimizer are not searched here; batch 16 is outside the choices.
    assert spec.start == {"base": 16, "learning_rate": 3e-4, "batch_size": 8, "augment": True,
                          "aug_rotation": 0.05, "aug_shift": 0.1, "aug_zoom": 0.2,
                          "aug_flip": "horizontal", "aug_brightness": 0.0,
                          "aug_contrast": 0.0, "note": load_spec("vgg_bone").start["note"]}
    none = load_spec(write_study(tmp_path, SPACE + '[start]\nnote = ""\n'))
    assert none.start == {}
    # Nothing of the start is searched (or all of it lies outside the ranges): no start.
    untouched = load_spec(write_study(tmp_path, SPACE + 'batch_size = { choices = [8] }\n'))
    assert untouched.start == {}
