"""`medtune report`: the lab report written from a study's own runs, one HTML page with its
images inline and its Markdown twin, logged to the study's run."""

import base64
import re

import optuna
import pytest
from conftest import copy_stores, runs, tune

from search.cli import main
from search.records import study_facts
from search.report.numbers import wilson


def test_wilson_interval_matches_its_formula_and_stays_in_bounds():
    low, high = wilson(0.8, 100)
    assert (low, high) == pytest.approx((0.7112, 0.8666), abs=1e-4)  # the textbook example
    assert wilson(1.0, 10)[1] == pytest.approx(1.0) and wilson(0.0, 10)[0] == pytest.approx(0.0)
    assert wilson(1.0, 10)[0] == pytest.approx(0.7225, abs=1e-4)  # all right: still unsure
    assert wilson(0.5, 1000)[1] - wilson(0.5, 1000)[0] < wilson(0.5, 100)[1] - wilson(0.5, 100)[0]


@pytest.mark.slow(30)
def test_a_study_report_holds_its_sections_inline_and_is_logged(workdir, finalists_template,
                                                               capsys):
    copy_stores(finalists_template / "stores", workdir)  # 3 trials, 2 finalists, a test split
    # (`--no-report`: test_ui sees `medtune tune` write it)
    assert "report:" not in (finalists_template / "out.txt").read_text()
    assert main(["report", "--study", "lenet_skin", "--storage", f"sqlite:///{workdir}/optuna.db",
                 "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]) == 0
    assert "report: reports/lenet_skin/report.html" in capsys.readouterr().out
    page = (workdir / "reports" / "lenet_skin" / "report.html").read_text()
    md = (workdir / "reports" / "lenet_skin" / "report.md").read_text()
    for heading in ("What was searched", "Results", "What the search changed",
                    "Learning curves", "The champion", "The study's history", "What it means"):
        assert f"<h2>{heading}</h2>" in page and f"## {heading}" in md
    study = optuna.load_study(study_name="lenet_skin", storage=f"sqlite:///{workdir}/optuna.db")
    record = study_facts(study).finalists
    champion = record["results"][str(record["champion"])]
    # The data: each split's class counts; the reproduce command; the code version.
    assert "<th>split</th><th>Mel</th><th>Nevi</th>" in page.replace("\n", "")
    assert "medtune tune --task lenet_skin" in md and "Code: " in md
    # The results: the lab recipe beside the champion (its mean ± SD over its runs), each
    # with its test accuracy and Wilson interval.
    assert re.search(r"\| lab recipe \(Lab 1: b=32, batch 8, LR 1e-4, 200 epochs\) \| #0 \|", md)
    assert f"{champion['mean']:.4g} ± {champion['sd']:.3f} | {champion['n']} |" in md
    test = study_facts(study).test["test_accuracy"]
    low, high = wilson(test, 12)
    assert f"{test:.3f} ({low:.3f}-{high:.3f}, n = 12)" in md
    # Images: inline PNGs in the HTML, files beside the Markdown.
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 5 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    for name in ("learning_curves", "history", "finalists", "confusion_matrix"):
        assert f"![{name}](report_files/{name}.png)" in md
        assert (workdir / "reports" / "lenet_skin" / "report_files" / f"{name}.png").is_file()
    assert "Re-checked over" in md and "The champion reached" in md
    client, parents, _ = runs(workdir)
    (parent,) = [p for p in parents if p.data.tags.get("medtune.kind") == "study"]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md"} <= logged


@pytest.mark.slow(60)
def test_report_compares_studies_and_names_an_unknown_one(workdir, tiny_skin, capsys):
    for name, seed in (("first", "0"), ("second", "1")):
        assert tune(workdir, "--task", "lenet_skin", "--study", name, "--n-trials", "2",
                    "--seed", seed, "--data-dir", str(tiny_skin)) == 0
    storage = ["--storage", f"sqlite:///{workdir}/optuna.db",
               "--tracking-uri", f"sqlite:///{workdir}/mlflow.db"]
    assert main(["report", "--compare", "first", "second", *storage]) == 0
    md = (workdir / "reports" / "compare-first-second" / "report.md").read_text()
    assert "| first | lenet_skin |" in md and "| second | lenet_skin |" in md
    assert "![curves](report_files/curves.png)" in md
    assert main(["report", "--study", "nope", *storage]) == 2
    assert "no study 'nope'" in capsys.readouterr().err
