"""Each benchmark's smoke mode on tiny data, so the scripts cannot rot. No timing is asserted:
only that each writes its RESULTS.md section, its tables (with the expected columns and rows)
and its MLflow run with CSV and PNG artifacts."""

import csv
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ runs from the checkout; it is not an installed package

from bench import (  # noqa: E402
    common,
    default_run,
    growth,
    kept_models,
    overhead,
    run_all,
    shifted,
    startup,
    throughput,
)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One results file and one MLflow store for all benchmarks (a store costs ~1 s to make)."""
    return tmp_path_factory.mktemp("bench")


def smoke(module, out, monkeypatch, *extra: str) -> MlflowClient:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(out)  # nothing may land in the project's mlruns/ or stores
    argv = ["--smoke", "--results", str(out / "RESULTS.md"), "--work-dir", str(out / "work"),
            "--tracking-uri", common.sqlite_url(out / "mlflow.db"), *extra]
    assert common.main(module.NAME, module.add_arguments, module.run, argv) == 0
    return MlflowClient(common.sqlite_url(out / "mlflow.db"))


def logged(client: MlflowClient, name: str) -> dict[str, int]:
    """The artifacts of the latest results run of benchmark `name`: path -> size."""
    experiment = client.get_experiment_by_name(common.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`bench.name` = '{name}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    assert run.data.tags["bench.mode"] == "smoke" and run.info.status == "FINISHED"
    assert run.data.params["pkg.keras"] and run.data.params["cores"]
    found = {}
    for folder in ("", "tables", "plots"):
        found |= {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, folder)
                  if not a.is_dir}
    return found


def table(client: MlflowClient, name: str, stem: str, out) -> tuple[list[str], list[dict]]:
    """A logged CSV table: its columns and rows."""
    experiment = client.get_experiment_by_name(common.EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`bench.name` = '{name}'",
                                order_by=["attributes.start_time DESC"], max_results=1)
    path = client.download_artifacts(run.info.run_id, f"tables/{stem}.csv", str(out))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def section(out, name: str) -> str:
    text = (out / "RESULTS.md").read_text()
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    assert text.count(start) == 1 and text.count(end) == 1
    return text.split(start)[1].split(end)[0]


@pytest.mark.slow(40)
def test_overhead_smoke(out, monkeypatch):
    client = smoke(overhead, out, monkeypatch)
    files = logged(client, "overhead")
    assert {"tables/summary.csv", "tables/breakdown.csv", "tables/breakdown_by_category.csv",
            "tables/pairs.csv", "plots/breakdown.png", "results.md", "machine.json"} <= set(files)
    columns, rows = table(client, "overhead", "summary", out)
    assert columns[:2] == ["task", "model"] and "ratio_median" in columns
    assert [(r["task"], r["model"]) for r in rows] == [("lenet_skin", "lenet")]
    assert float(rows[0]["ratio_median"]) > 0
    columns, rows = table(client, "overhead", "breakdown", out)
    assert {r["part"] for r in rows} == set(overhead.GROUPS) and "median_s" in columns
    text = section(out, "overhead")
    assert "Command: `python -m bench.overhead --smoke" in text and "cores" in text
    assert "| lenet_skin | lenet | 1 | 32 | 1 |" in text
    # The plot sits beside the results file, linked from its section
    assert "![breakdown](plots/overhead-breakdown.png)" in text
    assert (out / "plots" / "overhead-breakdown.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow(60)
def test_startup_smoke(out, monkeypatch):
    client = smoke(startup, out, monkeypatch)
    files = logged(client, "startup")
    assert {"tables/summary.csv", "tables/cache.csv", "tables/launches.csv",
            "plots/startup.png"} <= set(files)
    columns, rows = table(client, "startup", "launches", out)
    assert {"run", "from_cache", "imports_s", "data_work_s", "total_s"} <= set(columns)
    assert [(r["run"], r["from_cache"]) for r in rows] == [("cold", "False"), ("cached1", "True")]
    _, (cache,) = table(client, "startup", "cache", out)
    assert float(cache["cache_mib"]) > 0
    assert "Goal: cached data work" in section(out, "startup")


@pytest.mark.slow(100)
def test_default_run_smoke(out, monkeypatch):
    """On data with a test split, so the lab's recipe also trains with plain keras.fit."""
    import shutil

    course = common.synthetic_skin(out / "tiny", n_train=24, n_val=12, size=32, seed=1)
    skin = course / "Lab2" / "Skin"
    shutil.copytree(skin / "validation", skin / "test", dirs_exist_ok=True)
    client = smoke(default_run, out, monkeypatch, "--data-dir", str(course))
    files = logged(client, "default_run")
    assert {"tables/summary.csv", "tables/milestones.csv", "tables/memory.csv",
            "tables/versus_plain_fit.csv", "plots/memory.png"} <= set(files)
    _, (row,) = table(client, "default_run", "summary", out)
    assert row["complete"] == "1" and float(row["peak_process_mib"]) > 100
    assert 0 <= float(row["test_accuracy"]) <= 1
    _, (mine, plain) = table(client, "default_run", "versus_plain_fit", out)
    assert plain["engine"].startswith("plain keras.fit, Lab 1: b=32")
    assert 0 <= float(plain["test_accuracy"]) <= 1 and float(plain["wall_s"]) > 0
    _, rows = table(client, "default_run", "milestones", out)
    assert {"first epoch done", "process ended"} <= {r["milestone"] for r in rows}
    assert not list(out.glob("work/default-run-*"))  # the working copy is removed


@pytest.mark.slow(200)
def test_kept_models_smoke(out, monkeypatch):
    client = smoke(kept_models, out, monkeypatch)
    assert {"tables/export.csv", "tables/storage.csv"} <= set(logged(client, "kept_models"))
    _, (tune, export, replay) = table(client, "kept_models", "export", out)
    assert "-e export" in export["command"] and "replay=true" in replay["command"]
    assert all(float(r["wall_s"]) > 0 for r in (tune, export, replay))
    _, rows = table(client, "kept_models", "storage", out)
    for row in rows:  # never more models than the study keeps, each with its files
        assert 1 <= int(row["models_live"]) <= 3 + 1 and float(row["live_models_mib"]) > 0  # + lab
        assert 0 < float(row["keep_share_median"]) < 1
    assert "Export of the kept champion:" in section(out, "kept_models")
    assert not list(out.glob("work/kept-models-*"))  # the working copy is removed


@pytest.mark.slow(40)
def test_shifted_smoke(out, monkeypatch):
    client = smoke(shifted, out, monkeypatch)
    _, rows = table(client, "shifted", "shifted", out)
    assert [r["images"] for r in rows] == list(shifted.shifts())
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    assert "largest drop in dice" in section(out, "shifted")


def test_growth_smoke(out, monkeypatch):
    client = smoke(growth, out, monkeypatch)
    files = logged(client, "growth")
    assert {"tables/windows.csv", "tables/memory.csv", "tables/trials.csv",
            "plots/growth.png"} <= set(files)
    columns, rows = table(client, "growth", "trials", out)
    assert [int(r["trial"]) for r in rows] == list(range(growth.BUDGETS["smoke"]["n_trials"]))
    assert {"wall_s", "training_s", "sampler_s", "storage_s", "mlflow_s", "rss_mib",
            "outside_fit_s"} <= set(columns)
    _, rows = table(client, "growth", "windows", out)
    assert len(rows) == 2 + len(growth.PARTS)
    assert "Resident memory" in section(out, "growth")


def test_throughput_smoke(out, monkeypatch):
    client = smoke(throughput, out, monkeypatch)
    files = logged(client, "throughput")
    assert {"tables/summary.csv", "tables/pairs.csv", "plots/throughput.png", "results.md",
            "machine.json"} <= set(files)
    _, (row,) = table(client, "throughput", "summary", out)
    assert row["model"] == "vgg16" and row["batch_size"] == "32"
    assert row["device"] == "CPU" or row["device"].startswith("GPU ")
    assert float(row["plain_images_per_s"]) > 0 and float(row["medtune_images_per_s"]) > 0
    _, rows = table(client, "throughput", "pairs", out)
    assert sorted(r["side"] for r in rows) == ["medtune", "plain"]
    assert all(r["timed_epochs"] == str(throughput.BUDGETS["smoke"]["epochs"] - 2) for r in rows)
    text = section(out, "throughput")
    assert "Command: `python -m bench.throughput --smoke" in text and "goal: >= 0.95" in text
    assert ("These are CPU figures" in text) == (row["device"] == "CPU")


def test_results_file_keeps_every_section_in_order(tmp_path):
    """Writing one benchmark's section leaves the others, in their order, untouched."""
    path = tmp_path / "RESULTS.md"
    common.write_section(path, "startup", "## 3. Data start-up\n\nnew figures\n")
    text = path.read_text()
    positions = [text.index(f"<!-- bench:{name} -->") for name in common.BENCHMARKS]
    assert positions == sorted(positions)
    assert "new figures" in section(tmp_path, "startup")
    assert "Not run yet." in section(tmp_path, "search")


def test_run_all_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nonsense"])
    assert "unknown benchmark" in capsys.readouterr().err


@pytest.mark.slow(170)
def test_search_efficiency_smoke(tmp_path, monkeypatch):
    """Benchmark 2 writes into its own folder: the shared results file must keep its empty
    `search` section for the test above, whatever order the tests run in."""
    from bench import search_efficiency

    client = smoke(search_efficiency, tmp_path, monkeypatch)
    files = logged(client, "search")
    assert {"tables/summary.csv", "tables/goal.csv", "tables/runs.csv", "tables/picked.csv",
            "tables/curves.csv", "plots/best_so_far.png", "results.md",
            "machine.json"} <= set(files)
    budget = search_efficiency.BUDGETS["smoke"]["budget"]
    columns, rows = table(client, "search", "runs", tmp_path)
    assert {"data", "engine", "seed", "best_val", "test", "test_from", "wall_s", "epochs_spent",
            "complete", "pruned", "failed", "stuck", "picked", "baseline_epochs", "pruned_epochs",
            "grid_best", "epochs_to_grid_best"} <= set(columns)
    assert [r["engine"] for r in rows] == list(search_efficiency.ENGINES)
    for row in rows:
        assert 0 <= float(row["best_val"]) <= 1 and 0 <= float(row["test"]) <= 1
        assert int(row["epochs_spent"]) >= budget and int(row["complete"]) >= 1
    # Every engine's trial is `run_trial`: its own model is scored, nothing is replayed; the
    # re-checked study's pick is its champion, with the mean and SD it reports.
    assert {r["test_from"] for r in rows if r["engine"] != "medtune-finalists"} == {
        "trial's model"}
    (rechecked,) = [r for r in rows if r["engine"] == "medtune-finalists"]
    assert rechecked["test_from"].startswith("champion's kept model")
    assert float(rechecked["reported_runs"]) >= 2 and float(rechecked["reported_sd"]) >= 0
    assert float(rechecked["drop"]) == pytest.approx(
        float(rechecked["reported"]) - float(rechecked["test"]))
    columns, rows = table(client, "search", "summary", tmp_path)
    assert {"best_val_median", "best_val_min", "best_val_max", "test_median", "wall_median_s",
            "complete_median", "pruned_median", "epochs_to_grid_best_median"} <= set(columns)
    assert len(rows) == len(search_efficiency.ENGINES)
    _, (goal,) = table(client, "search", "goal", tmp_path)
    assert goal["goal_met"] in ("True", "False")
    _, curve = table(client, "search", "curves", tmp_path)
    assert {int(r["epochs_spent"]) for r in curve} == set(range(1, budget + 1))
    text = section(tmp_path, "search")
    assert "Command: `python -m bench.search_efficiency --smoke" in text
    assert "goal" in text and "Not run yet." not in text

    # Run again: every engine x data x seed comes from the ledger, nothing trains.
    _, first = table(client, "search", "runs", tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("trained a run the ledger holds")

    monkeypatch.setattr(search_efficiency, "run_engine", no_training)
    smoke(search_efficiency, tmp_path, monkeypatch)
    _, again = table(client, "search", "runs", tmp_path)
    assert again == first and all(r["code"] for r in again)

    # A partial ledger (the grid's run dropped, a second seed never run): --from-ledger reports
    # what is in, names what is not, and trains nothing.
    ledger = tmp_path / "work" / "search-ledger-smoke.jsonl"
    lines = [line for line in ledger.read_text().splitlines()
             if '"engine": "lab-grid"' not in line]
    ledger.write_text("\n".join(lines) + "\n")
    smoke(search_efficiency, tmp_path, monkeypatch, "--from-ledger", "--seeds", "2")
    _, partial = table(client, "search", "runs", tmp_path)
    assert [r["engine"] for r in partial] == ["medtune", "random", "keras-tuner",
                                              "medtune-finalists"]
    assert {r["grid_epochs"] for r in partial} <= {"", "nan"}  # no grid run: unknown, not 0
    _, (goal,) = table(client, "search", "goal", tmp_path)
    assert "within_third" not in goal and goal["as_good_as_all"] in ("True", "False")
    text = section(tmp_path, "search")
    assert "**Partial** (`--from-ledger`): 4 of 10 runs" in text
    assert "medmnist lab-grid seed 0; medmnist medtune seed 1" in text
    with pytest.raises(SystemExit, match="holds none of these runs"):
        smoke(search_efficiency, tmp_path, monkeypatch, "--from-ledger",
              "--ledger", str(tmp_path / "empty.jsonl"))


def test_the_search_ledger_keeps_the_last_entry_per_cell_and_names_a_bad_line(tmp_path):
    from bench.search_efficiency import Ledger

    path = tmp_path / "ledger.jsonl"
    cell = {"data": "breast", "engine": "random", "seed": 0}
    Ledger(path).add(cell, {"best_val": 0.5}, [0.5])
    Ledger(path).add(cell, {"best_val": float("nan")}, [float("nan"), 0.75])
    read = Ledger(path).get(cell)
    assert read["curve"][1] == 0.75 and read["row"]["best_val"] != read["row"]["best_val"]
    assert Ledger(path).get({**cell, "seed": 1}) is None
    with path.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(SystemExit, match=r"ledger.jsonl, line 3: not a ledger entry"):
        Ledger(path)


def test_search_efficiency_runs_under_its_module_name():
    assert common.command("search", ["--quick"]) == "python -m bench.search_efficiency --quick"
    assert "search" in run_all.ORDER


def test_the_search_plot_titles_each_data_set_by_what_the_ledger_holds():
    import pandas as pd

    from bench.search_efficiency import DataSet, figure

    engines, seeds = ["medtune", "random"], [0, 1]
    curves = {("knee", e, s): [0.5, 0.6, 0.7] for e in engines for s in seeds}
    curves |= {("breast", "medtune", 0): [0.7, 0.8]}
    runs = pd.DataFrame({"data": ["knee"], "engine": ["lab-grid"], "epochs_spent": [3]})
    fig = figure(runs, curves, engines, [DataSet("knee", None), DataSet("breast", None),
                                         DataSet("pneumonia", None)], seeds, {"budget": 3})
    knee, breast, pneumonia = fig.axes
    assert knee.get_title() == "knee (median of 2 seeds)"
    assert [t.get_text() for t in knee.get_legend().get_texts()][:2] == engines
    assert breast.get_title() == "breast (partial: median of the seeds run)"
    assert [t.get_text() for t in breast.get_legend().get_texts()] == ["medtune (1 seed)"]
    assert pneumonia.get_title() == "pneumonia: not run yet" and not pneumonia.lines


def test_the_lab_grid_runs_every_baseline_whatever_budget_it_is_marked_for():
    # lenet_skin's second baseline is marked for the lab budget only; the grid's study of it
    # (quick budget) must still queue it, not sample a trial in its place.
    from bench.search_efficiency import variants
    from search.spec.study_files import baseline_params, load_spec
    from search.study.run import queued_baselines

    spec = load_spec("lenet_skin")
    assert any(b["budgets"] == ["lab"] for b in spec.baselines)
    grid = variants(spec)["lab-grid"]
    assert [[baseline_params(b) for b in queued_baselines(g, "quick")] for g in grid] == [
        [baseline_params(b)] for b in spec.baselines]
    # As the lab trains: early stopping, no stuck stop.
    assert {g.training["stuck_after_epochs"] for g in grid} == {0}
    assert all(g.training["early_stopping_patience"] > 0 for g in grid)
