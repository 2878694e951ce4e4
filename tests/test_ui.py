"""What a user sees: a tiny study, then `mlflow server` over its store, looked at in headless
Chromium (Debian's `chromium`, driven by Playwright without a browser download), and
optuna-dashboard over its Optuna storage.

`MEDTUNE_SCREENSHOTS=docs pytest tests/test_ui.py` also writes the README's screenshots."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import built_once
from mlflow.tracking import MlflowClient
from servers import _mlflow_command, _stop_group, free_port, log_tail

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = os.environ.get("MEDTUNE_SCREENSHOTS")  # a folder of the repository, e.g. docs
# The README's pictures come from a somewhat larger study, whose curves say something.
TASK, TRIALS, EPOCHS, N_TRAIN = ("lenet_skin", 6, 8, 200) if SCREENSHOTS else (
    "lenet_skin", 4, 3, 48)


def child_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {"MEDTUNE_CACHE": str(folder / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
                  "MEDTUNE_CHECKPOINTS": str(folder / "checkpoints"), "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A finished LeNet study on small synthetic Skin data, run as `medtune tune` once per
    test run (the tests only read it)."""
    return built_once(tmp_path_factory, "ui", tune_as_users_do)


def tune_as_users_do(folder: Path) -> None:
    from datasets import synthetic

    synthetic.write_skin(folder / "course", n_train=N_TRAIN, n_val=N_TRAIN // 2, size=32,
                         seed=1)
    done = subprocess.run(
        [sys.executable, "-m", "search.cli", "tune", "--task", TASK, "--n-trials", str(TRIALS),
         "--epochs", str(EPOCHS), "--image-size", "32", "--data-dir", str(folder / "course"),
         "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
         "--storage", f"sqlite:///{folder}/optuna.db"],
        cwd=folder, env=child_env(folder), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def serve(command: list[str], folder: Path, url: str, name: str) -> subprocess.Popen:
    """Start a server in its own process group; return once `url` answers."""
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=folder, env=child_env(folder) | {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited ({proc.returncode}):\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return proc
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            _stop_group(proc)
            raise RuntimeError(f"{name} did not answer {url}:\n{log_tail(log)}")
        time.sleep(0.5)


@pytest.mark.slow(70)
def test_dashboard_serves_the_study_on_loopback(study):
    port = free_port()
    proc = serve([sys.executable, "-m", "search.cli", "dashboard", "--port", str(port),
                  "--storage", f"sqlite:///{study}/optuna.db"], study,
                 f"http://127.0.0.1:{port}/api/studies", "dashboard")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as response:
            studies = json.load(response)["study_summaries"]
        assert [s["study_name"] for s in studies] == [TASK]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard") as response:
            assert b"<html" in response.read().lower()
    finally:
        _stop_group(proc)


@pytest.fixture
def mlflow_ui(study):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve([*_mlflow_command(), "server", "--host", "127.0.0.1", "--port", str(port),
                  "--workers", "1", "--backend-store-uri", f"sqlite:///{study}/mlflow.db"],
                 study, f"{url}/health", "mlflow-server")
    yield url
    _stop_group(proc)


@contextlib.contextmanager
def chromium_page(height: int = 900):
    """A page of headless Chromium (Debian's, driven by Playwright), 1400 px wide."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def toggle_column(page, title: str) -> None:
    """Tick or untick a column in the runs table's Columns menu (a checkable tree)."""
    name = page.locator(".du-bois-light-tree-title").filter(
        has_text=re.compile(rf"^{re.escape(title)}$"))
    node = page.locator(".du-bois-light-tree-treenode").filter(has=name)
    node.locator(".du-bois-light-tree-checkbox").click()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.mouse.move(0, 0)  # no hover toolbar in the picture
    page.wait_for_timeout(500)
    page.screenshot(path=path)
    if SCREENSHOTS:
        shutil.copy(path, REPO / SCREENSHOTS / name)
    return path


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt install chromium)")
@pytest.mark.slow(50)
def test_the_mlflow_ui_shows_the_study_its_trials_objective_charts_and_data(
        study, mlflow_ui, tmp_path):
    client = MlflowClient(f"sqlite:///{study}/mlflow.db")
    experiment = client.get_experiment_by_name(TASK)
    (study_run,) = client.search_runs([experiment.experiment_id], "tags.`medtune.kind` = 'study'")
    best = study_run.data.tags["best_run_id"]
    digest = study_run.inputs.dataset_inputs[0].dataset.digest

    with chromium_page() as page:
        # The link medtune prints: the experiment's runs, in the "Model training" view.
        page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}"
                  "?workflowType=machine_learning")
        run_link = page.locator(f'a[href$="/runs/{study_run.info.run_id}"]')
        run_link.wait_for()
        assert run_link.inner_text() == TASK  # the study's run, named for the study
        assert page.get_by_test_id("experiment-link").inner_text() == TASK  # breadcrumb
        assert page.get_by_text("Model training").is_visible()
        assert page.get_by_text(f"skin ({digest})").first.is_visible()  # dataset column
        page.get_by_role("button", name="Close").click()  # the assistant's panel: stays shut
        # Trials are the study run's children: hidden until its row is expanded.
        trial_names = [f"{TASK}-t{i:04d}" for i in range(TRIALS)]
        assert not page.get_by_text(trial_names[0], exact=True).is_visible()
        page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').click()
        for name in trial_names:
            # (the Models column links each kept model, named like its trial, too)
            page.locator('a[href*="/runs/"]').filter(
                has_text=re.compile(rf"^{name}$")).wait_for()
        assert page.get_by_text(f"{TRIALS + 1} matching runs").is_visible()
        # The `trial.*` columns, chosen as a user does, sort together.
        page.get_by_role("button", name="Columns").click()
        for column in ("Source", "Models"):
            toggle_column(page, column)
        page.get_by_placeholder("Search columns").fill("trial.")
        for column in ("trial.objective", "trial.best_epoch", "trial.epochs_run",
                       "trial.state"):
            toggle_column(page, column)
        page.keyboard.press("Escape")
        cells = page.locator('[role="gridcell"][col-id="metrics.`trial.objective`"]')
        cells.first.wait_for()
        shown = [float(t) for t in cells.all_inner_texts() if t.strip() not in ("", "-")]
        trials = client.search_runs([experiment.experiment_id],
                                    "tags.`medtune.kind` = 'trial'")
        values = [r.data.metrics["trial.objective"] for r in trials
                  if "trial.objective" in r.data.metrics]  # a pruned trial has none
        assert len(shown) == len(values) and max(shown) == pytest.approx(max(values), abs=1e-3)
        screenshot(page, tmp_path, "mlflow_runs.png")

        # A trial's page: its metric charts, one per Keras metric, epochs on the x axis.
        page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{best}"
                  "/model-metrics?workflowType=machine_learning")
        page.get_by_text("Model metrics", exact=True).first.wait_for()
        assert page.get_by_text(f"{TASK}-t", exact=False).first.is_visible()  # run name
        page.get_by_placeholder("Search metric charts").fill("val_")
        for metric in ("val_accuracy", "val_loss", "val_auc"):
            page.get_by_text(metric, exact=True).first.wait_for()
        page.wait_for_timeout(3000)  # the charts draw after their data arrive
        assert page.locator("svg.main-svg").count() >= 3  # Plotly's charts
        screenshot(page, tmp_path, "mlflow_trial_metrics.png")
        # Its system metrics, sampled every second while it trained.
        page.get_by_role("tab", name="System metrics").click()
        page.get_by_text("cpu_utilization_percentage").first.wait_for()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt install chromium)")
def test_the_models_tab_lists_the_kept_models_with_their_metrics(study, mlflow_ui, tmp_path):
    """The study's best trials keep their models in MLflow (`[selection] top_k`): the
    experiment's Models tab lists them, each with its best epoch's validation metrics."""
    import optuna

    client = MlflowClient(f"sqlite:///{study}/mlflow.db")
    experiment = client.get_experiment_by_name(TASK)
    kept = {m.name: m for m in client.search_logged_models([experiment.experiment_id])}
    trials = optuna.load_study(study_name=TASK, storage=f"sqlite:///{study}/optuna.db").trials
    values = {f"{TASK}-t{t.number:04d}": t.value for t in trials if "model_id" in t.user_attrs}
    assert set(kept) == set(values) and 1 <= len(kept) <= 3 + 1  # top_k = 3, + the lab recipe

    with chromium_page(700) as page:
        page.goto(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/models"
                  "?workflowType=machine_learning")
        links = page.locator('a[href*="/models/m-"]')
        links.first.wait_for()
        assert sorted(links.all_inner_texts()) == sorted(kept)
        page.get_by_role("button", name="Close").click()  # the assistant's panel
        # The validation metrics, chosen as a user does: Columns, the data set's metrics.
        page.get_by_role("button", name="Columns").click()
        for column in ("Status", "Logged from", "Registered models", "Dataset",
                       "Parameters"):
            toggle_column(page, column)
        data = page.locator(".du-bois-light-tree-treenode").filter(
            has=page.locator(".du-bois-light-tree-title").filter(
                has_text=re.compile(r"^Dataset: skin")))
        data.locator(".du-bois-light-tree-switcher").click()
        for column in ("accuracy", "auc", "balanced_accuracy", "loss"):
            toggle_column(page, column)
        page.keyboard.press("Escape")
        # The grid draws a new column's header a moment after the column itself: wait for it.
        from playwright.sync_api import expect
        expect(page.locator('[role="columnheader"]').last).to_have_text("val_loss")
        headers = page.locator('[role="columnheader"]').all_inner_texts()
        assert headers[-4:] == ["val_accuracy", "val_auc", "val_balanced_accuracy",
                                "val_loss"]
        cells = page.locator('[role="gridcell"]').all_inner_texts()
        for name, value in values.items():  # each row: name, then its val_accuracy
            row = cells.index(name, len(kept) * 2)  # past the pinned name column
            assert float(cells[row + 1]) == pytest.approx(value, abs=1e-6)
        page.set_viewport_size({"width": 1400, "height": 400})
        screenshot(page, tmp_path, "mlflow_models.png")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt install chromium)")
def test_the_study_report_opens_offline_with_its_images(study, tmp_path):
    """The report `medtune tune` wrote when the study ended: one file, opened from disk with
    no server, every section and every inline image rendered."""
    page_file = study / "reports" / TASK / "report.html"
    with chromium_page(1100) as page:
        page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(
            ("file:", "data:")) else route.continue_())  # offline: nothing fetched from a network
        page.goto(page_file.as_uri())
        headings = page.locator("h2").all_inner_texts()
        assert headings == ["What was searched", "Results", "What the search changed",
                            "Learning curves", "The champion", "The study's history",
                            "What it means"]
        widths = page.locator("img").evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert len(widths) >= 4 and all(w > 100 for w in widths)
        assert "lab recipe" in page.locator("table").nth(1).inner_text()
        page.locator("h2", has_text="Results").scroll_into_view_if_needed()
        screenshot(page, tmp_path, "report.png")
