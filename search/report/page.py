"""The report as a page: Markdown (images in `report_files/`) and self-contained HTML (images
inline), from one list of sections so the two say the same."""

from __future__ import annotations

import base64
import html
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.report.numbers import Report

if TYPE_CHECKING:
    import optuna

    from search.spec.study_files import StudySpec

CAPTIONS = {
    "learning_curves": "Learning curves: the lab recipe and the champion on shared axes "
                       "(dashed: training; solid: validation; dotted: the constant guess).",
    "history": "The study's history: best value so far against the epochs all trials spent.",
    "slice": "The two most important settings: each completed trial's value against them.",
    "finalists": "Finalists: each one's value in the search against its mean ± SD when "
                 "re-checked.",
    "confusion_matrix": "The champion's confusion matrix (validation, its best epoch).",
    "roc_curve": "The champion's ROC curve (validation).",
    "gradcam": "Grad-CAM: where the champion looked (validation images).",
    "mask_overlays": "The champion's masks against the true ones (validation images).",
}
STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:.25em .6em;
text-align:left}th{background:#eee}img{max-width:100%}code{background:#f3f3f3}
figure{margin:1em 0;break-inside:avoid}figcaption{font-size:.9em;color:#555}
@media print{body{max-width:none}}"""


def _text(value: str) -> str:
    return html.escape(value, quote=False)  # text, not attributes: "study's" stays readable


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def sections(report: Report) -> list[tuple[str, list[Any]]]:
    """(heading, blocks); a block is a paragraph (str), a table (list of rows, the first its
    header) or a figure name (("figure", name))."""
    counts = report.data["counts"]
    columns = list(next(iter(counts.values())))
    data_table = [["split", *columns], *[[s, *(c[k] for k in columns)] for s, c in counts.items()]]
    guess = ", ".join(f"{k} {v:.3f}" for k, v in report.data["chance"].items())
    setup = [
        f"{report.description.rstrip('.')}. Objective: `{report.objective}`; {report.kind}.",
        f"Data: {report.data['source']}. A constant guess scores {guess} on validation.",
        data_table,
        "Settings: " + ", ".join(f"{k} = {v}" for k, v in report.settings.items())
        + f". Code: {report.code}.",
        f"Reproduce: `{report.command}`",
    ]
    results = [[["model", "trial", f"{report.objective} (validation)", "runs",
                 "test accuracy (95 % CI)", "epochs", "seconds"]]]
    for r in report.rows:
        value = _fmt(r.value) + (f" ± {r.sd:.3f}" if r.sd is not None else "")
        test = "-" if r.test is None else (
            f"{r.test:.3f} ({r.interval[0]:.3f}-{r.interval[1]:.3f}, n = {r.n_test})")
        results[0].append([r.label, f"#{r.trial}", value, r.runs, test, r.epochs,
                           _fmt(round(r.seconds)) if not math.isnan(r.seconds) else "-"])
    results.append("The test split is reported only: no choice was made on it.")
    changed = [[["setting", "lab recipe", "champion"],
                *[[k, _fmt(a), _fmt(b)] for k, a, b in report.diff]]] if report.diff else [
        "The champion is the lab's recipe: the search found nothing better."]
    importances = ([[["setting", "importance (fANOVA)"],
                     *[[k, f"{v:.3f}"] for k, v in report.importances.items()]]]
                   if report.importances else [])
    figures = report.figures
    shown = lambda *names: [("figure", n) for n in names if n in figures]  # noqa: E731
    return [
        ("What was searched", setup),
        ("Results", [*results, *shown("finalists")]),
        ("What the search changed", [*changed, *importances, *shown("slice")]),
        ("Learning curves", shown("learning_curves")),
        ("The champion", shown("confusion_matrix", "roc_curve", "gradcam", "mask_overlays")),
        ("The study's history", shown("history")),
        ("What it means", report.sentences),
    ]


def markdown(report: Report, images: str = "report_files") -> str:
    lines = [f"# Lab report: study `{report.study}` (task `{report.task}`)", ""]
    for heading, blocks in sections(report):
        lines += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, tuple):
                name = block[1]
                lines += [f"![{name}]({images}/{name}.png)", "", f"*{CAPTIONS[name]}*", ""]
            elif isinstance(block, list):
                header, *rows = block
                lines += ["| " + " | ".join(map(str, header)) + " |",
                          "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]
            else:
                lines += [block, ""]
    return "\n".join(lines)


def page(report: Report) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_text(report.study)}"
           f" report</title><style>{STYLE}</style></head><body>",
           f"<h1>Lab report: study <code>{_text(report.study)}</code> "
           f"(task <code>{_text(report.task)}</code>)</h1>"]
    for heading, blocks in sections(report):
        out.append(f"<h2>{_text(heading)}</h2>")
        for block in blocks:
            if isinstance(block, tuple):
                data = base64.b64encode(report.figures[block[1]]).decode()
                out.append(f"<figure><img alt='{block[1]}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{_text(CAPTIONS[block[1]])}</figcaption></figure>")
            elif isinstance(block, list):
                header, *rows = block
                out.append("<table><tr>" + "".join(f"<th>{_text(str(h))}</th>"
                                                   for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{_text(str(c))}</td>" for c in row)
                        + "</tr>" for row in rows]
                out.append("</table>")
            else:
                text = _text(block)
                while text.count("`") >= 2:  # `code` spans
                    text = text.replace("`", "<code>", 1).replace("`", "</code>", 1)
                out.append(f"<p>{text}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write(report: Report, folder: Path) -> tuple[Path, Path]:
    """`report.html` and `report.md` (with `report_files/`) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report_files").mkdir(exist_ok=True)
    for name, data in report.figures.items():
        (folder / "report_files" / f"{name}.png").write_bytes(data)
    html_path, md_path = folder / "report.html", folder / "report.md"
    html_path.write_text(page(report))
    md_path.write_text(markdown(report))
    return html_path, md_path


def report_study(study, tracking_uri: str | None, folder: Path, *, spec=None, problem=None
                 ) -> tuple[Path, Path]:
    """Collect `study`'s report, write it into `folder` and log it to the study's run
    (`report/`); the paths of its HTML and Markdown."""
    from mlflow.tracking import MlflowClient

    from search.records import study_facts
    from search.report.numbers import collect

    report = collect(study, tracking_uri, spec=spec, problem=problem)
    paths = write(report, folder)
    client = MlflowClient(tracking_uri) if tracking_uri else MlflowClient()
    client.log_artifacts(study_facts(study).parent_run_id, str(folder), "report")
    return paths


def compare_page(reports: list[Report]) -> tuple[str, str, dict[str, bytes]]:
    """One page answering a comparison question (AlexNet against VGG16, batch norm on or off)
    from several studies: their champions side by side, their curves on shared axes. Returns
    the HTML, the Markdown and the figures."""
    from search.tracking import plots

    table = [["study", "task", "objective", "champion (validation)", "runs",
              "test accuracy (95 % CI)", "lab recipe (validation)"]]
    for r in reports:
        champion = next(row for row in r.rows if row.label.startswith("champion"))
        lab = next((row for row in r.rows if row.label.startswith("lab recipe")), None)
        test = "-" if champion.test is None else (
            f"{champion.test:.3f} ({champion.interval[0]:.3f}-{champion.interval[1]:.3f})")
        table.append([r.study, r.task, r.objective, _fmt(champion.value) + (
            f" ± {champion.sd:.3f}" if champion.sd is not None else ""), champion.runs, test,
            _fmt(lab.value) if lab else "-"])
    figures = {"curves": plots.png(plots.shared_curves(
        {r.study: r.curves for r in reports if r.curves}, reports[0].objective))}
    said = [f"{r.study}: " + " ".join(r.sentences[:2]) for r in reports]
    best = max(reports, key=lambda r: next(row.value for row in r.rows
                                          if row.label.startswith("champion")))
    said.insert(0, f"The best champion on validation is study `{best.study}`'s.")
    title = "Comparison: " + ", ".join(f"`{r.study}`" for r in reports)
    md = "\n".join([f"# {title}", "", "| " + " | ".join(table[0]) + " |",
                    "|" + "---|" * len(table[0]),
                    *["| " + " | ".join(map(str, row)) + " |" for row in table[1:]], "",
                    "![curves](report_files/curves.png)", "",
                    "*Each study's champion: training (dashed) and validation (solid).*", "",
                    *[f"{s}\n" for s in said]])
    body = "".join("<tr>" + "".join(f"<td>{_text(str(c))}</td>" for c in row) + "</tr>"
                   for row in table[1:])
    data = base64.b64encode(figures["curves"]).decode()
    page_html = (f"<!doctype html><html><head><meta charset='utf-8'><title>comparison</title>"
                 f"<style>{STYLE}</style></head><body><h1>{_text(title)}</h1><table><tr>"
                 + "".join(f"<th>{_text(h)}</th>" for h in table[0]) + f"</tr>{body}"
                 f"</table><figure><img alt='curves' src='data:image/png;base64,{data}'>"
                 "<figcaption>Each study's champion: training (dashed) and validation (solid)."
                 "</figcaption></figure>"
                 + "".join(f"<p>{_text(s)}</p>" for s in said) + "</body></html>")
    return page_html, md, figures


def report_command(study: str | None, compared: list[str] | None, storage: str | None,
                   tracking_uri: str | None, out: str | None) -> int:
    """`medtune report`: one study's report, or several studies compared."""
    import optuna

    from search.report.numbers import collect
    from search.runtime.storages import open_storage
    from search.runtime.urls import mask_password
    from search.spec.settings import DEFAULT_STORAGE

    storage = storage or DEFAULT_STORAGE
    names = [study] if study else [n for n in " ".join(compared).replace(",", " ").split() if n]
    studies = []
    for name in names:
        try:
            studies.append(optuna.load_study(study_name=name, storage=open_storage(storage)))
        except KeyError:
            raise ValueError(f"no study {name!r} in {mask_password(storage)}: run `medtune tune` "
                             "for it first, or give the --storage it ran in") from None
    if study:
        html_path, md_path = report_study(studies[0], tracking_uri,
                                          Path(out or f"reports/{study}"))
        print(f"report: {html_path} and {md_path} (also logged to the study's MLflow run)")
        return 0
    folder = Path(out or f"reports/compare-{'-'.join(names)}")
    page_html, md, figures = compare_page([collect(s, tracking_uri) for s in studies])
    (folder / "report_files").mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        (folder / "report_files" / f"{name}.png").write_bytes(data)
    (folder / "report.html").write_text(page_html)
    (folder / "report.md").write_text(md)
    print(f"report: {folder / 'report.html'} and {folder / 'report.md'}")
    return 0


def write_after_tune(study: optuna.Study, tracking_uri: str, spec: StudySpec) -> None:
    """The study's report, written where `medtune report` writes it; a failure only warns:
    the study stands, and `medtune report` can write it later."""
    try:
        html_path, _ = report_study(study, tracking_uri, Path("reports", study.study_name),
                                    spec=spec)
        print(f"  report: {html_path} (and report.md beside it)", flush=True)
    except Exception as error:  # noqa: BLE001 (anything: the study is done, its report is not)
        print(f"medtune: the report was not written ({type(error).__name__}: {error}); "
              f"`medtune report --study {study.study_name}` writes it", file=sys.stderr)
