"""Figures for people to look at; returned as matplotlib figures, logged by
`search.tracking`."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402

from search.records import facts, study_facts
from search.runtime.urls import mask_password  # noqa: E402


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "",
                    chance: Mapping[str, float] | None = None) -> plt.Figure:
    """One panel per metric (loss, accuracy, ...), training against validation, per epoch;
    `chance` (metric -> value) draws what a constant prediction scores on validation."""
    names = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for key, label in ((name, "train"), (f"val_{name}", "validation")):
            if key in history:
                values = history[key]
                ax.plot(np.arange(1, len(values) + 1), values, marker=".", label=label)
        _epoch_panel(ax, name, chance, "--")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _epoch_panel(ax, name: str, chance: Mapping[str, float] | None, style: str,
                 fontsize: float | None = None) -> None:
    """A per-epoch panel's constant-guess line (where `chance` knows `name`), axes, legend."""
    if chance and name in chance:
        ax.axhline(chance[name], color="grey", linestyle=style, linewidth=1.2,
                   label=f"constant guess ({chance[name]:.3f})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize)


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str], title: str = ""
) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.2 + 0.3 * len(class_names), 3.6 + 0.3 * len(class_names)))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(class_names))), display_labels=list(class_names),
        cmap="Blues", colorbar=False, ax=ax,
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig


def roc_curve(
    y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str], title: str = ""
) -> tuple[plt.Figure, float]:
    """ROC of a binary classifier's scores (probabilities or hinge margins), and its AUC."""
    fig, ax = plt.subplots(figsize=(4.4, 4.0))
    display = RocCurveDisplay.from_predictions(
        y_true, scores, pos_label=1, name=f"{class_names[1]} vs {class_names[0]}", ax=ax,
        plot_chance_level=True,
    )
    ax.set_title(title)
    fig.tight_layout()
    return fig, float(display.roc_auc)


def mask_overlays(
    images: np.ndarray, true_masks: np.ndarray, predicted: np.ndarray, title: str = ""
) -> plt.Figure:
    """Validation images with the true (green) and predicted (red) mask outlines, and dice."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for ax, image, truth, guess in zip(axes[0], images, true_masks, predicted, strict=True):
        ax.imshow(image, cmap="gray")
        for mask, color in ((truth, "lime"), (guess, "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors=color, linewidths=1.2)
        overlap = 2 * np.logical_and(truth, guess).sum()
        dice = (overlap + 1) / (truth.sum() + guess.sum() + 1)
        ax.set_title(f"dice {dice:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{title}\ngreen: true mask, red: predicted", fontsize=10)
    fig.tight_layout()
    return fig


def gradcam_overlays(
    images: np.ndarray,
    heatmaps: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
) -> plt.Figure:
    """Each image with its Grad-CAM map blended in as a JET heat map, true and predicted class."""
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.0), squeeze=False)
    for ax, image, heat, truth, guess in zip(axes[0], images, heatmaps, y_true, y_pred,
                                             strict=True):
        ax.imshow(image, cmap="gray")
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_title(f"true {class_names[truth]}\npred {class_names[guess]}", fontsize=9,
                     color="black" if truth == guess else "red")
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9))  # room for the title above the two-line captions
    return fig


def finalists(recheck: Mapping, objective: str) -> plt.Figure:
    """Each finalist's value in the search (its first run) against its mean ± SD over all its
    runs: how much of the search's ranking held up; the finalists' ensemble below them, where
    it was weighed."""
    rows = sorted(recheck["results"].items(), key=lambda item: -item[1]["searched"])
    ensemble = recheck.get("ensemble")
    height = 1.5 + 0.45 * (len(rows) + bool(ensemble))
    fig, ax = plt.subplots(figsize=(8, height))
    for y, (number, r) in enumerate(rows):
        champion = int(number) == recheck["champion"]
        ax.errorbar(r["mean"], y, xerr=r["sd"], fmt="o", capsize=4,
                    color="tab:green" if champion else "tab:blue",
                    label="mean ± SD over its runs" if y == 0 else None)
        ax.plot(r["values"], [y] * len(r["values"]), "|", color="grey", markersize=10,
                label="its runs" if y == 0 else None)
        ax.plot(r["searched"], y, "x", color="tab:red", markersize=8,
                label="its value in the search" if y == 0 else None)
    won = bool(ensemble and ensemble.get("chosen") and ensemble.get("model_id"))
    best = " best finalist" if won else " champion"
    labels = [f"#{n} ({r['n']} runs)" + (best if int(n) == recheck["champion"] else "")
              for n, r in rows]
    if ensemble:
        ax.errorbar(ensemble["mean"], len(rows), xerr=ensemble["sd"], fmt="D", capsize=4,
                    color="tab:purple", label="the finalists averaged (held-in runs)")
        labels.append("ensemble" + (" champion" if won else ""))
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel(objective)
    ax.set_title("Finalists: the search's value against the re-checked mean ± SD")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=8, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / height, 1, 1))  # the legend's strip below the axes
    return fig


def study_figures(study) -> dict[str, plt.Figure]:
    """Optuna's own study plots; a plot the study cannot make yet (too few trials) is left out."""
    import warnings

    import optuna.visualization.matplotlib as ovm

    makers = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "slice": ovm.plot_slice,
        "intermediate_values": ovm.plot_intermediate_values,  # shows where pruning cut trials
    }
    figures = {}
    for name, make in makers.items():
        # Optuna's plotting API is "experimental", and some of its axes (colour bars) do not
        # fit tight_layout: both only warn.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = make(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
            figure = np.ravel(axes)[0].figure
            figure.set_size_inches(max(8, figure.get_size_inches()[0]), 5)
            figure.tight_layout()
        figures[name] = figure
    return figures


def trials_table(study):
    """One row per trial: state, value, params, epochs run, wall time (a pandas DataFrame)."""
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration",
                                          "user_attrs"))
    if table.empty:
        return table
    # Only queued trials so far: no durations yet, so the column holds no time deltas.
    table["seconds"] = pd.to_timedelta(table.pop("duration")).dt.total_seconds().round(1)
    keep = [c for c in table.columns if not c.startswith("user_attrs_")] + [
        c for c in ("user_attrs_epochs_run", "user_attrs_best_epoch",
                    "user_attrs_pruned_at_epoch", "user_attrs_fail_reason",
                    "user_attrs_baseline", "user_attrs_start", "user_attrs_mlflow_run_id")
        if c in table.columns]
    table = table[keep].rename(columns=lambda c: c.removeprefix("user_attrs_"))
    if "fail_reason" in table:  # an error's text may hold a storage URL
        table["fail_reason"] = table["fail_reason"].map(
            lambda reason: mask_password(reason) if isinstance(reason, str) else reason)
    return table


def best_trials_bars(table) -> plt.Figure:
    """Horizontal bars: each study's best trials by value, labelled with study and trial."""
    labels = [f"{row.study} #{row.trial}" for row in table.itertuples()]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.5))
    studies = list(dict.fromkeys(table["study"]))
    colors = plt.cm.tab10([studies.index(s) % 10 for s in table["study"]])
    ax.barh(labels[::-1], table["value"][::-1], color=colors[::-1])
    for y, value in enumerate(table["value"][::-1]):
        ax.text(value, y, f" {value:.4f}", va="center", fontsize=8)
    ax.set_xlabel(" / ".join(sorted(set(table["objective"]))))
    ax.set_xlim(0, max(1.0, table["value"].max() * 1.1))
    ax.set_title("best trials per study")
    fig.tight_layout()
    return fig


def shared_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], objective: str,
                  chance: Mapping[str, float] | None = None) -> plt.Figure:
    """Several runs' curves on shared axes: loss, and the objective's metric, each run's
    training (dashed) and validation (solid) per epoch; the constant guess as a grey line."""
    metric = objective.removeprefix("val_")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.cm.tab10.colors
    for ax, name in zip(axes, ("loss", metric), strict=True):
        for i, (label, history) in enumerate(curves.items()):
            for key, style, part in ((name, "--", "train"), (f"val_{name}", "-", "val")):
                if key in history:
                    values = history[key]
                    ax.plot(np.arange(1, len(values) + 1), values, style,
                            color=colors[i % 10], label=f"{label}, {part}")
        _epoch_panel(ax, name, chance, ":", fontsize=7)
    fig.tight_layout()
    return fig


def study_history(study) -> plt.Figure:
    """Best value so far against the epochs all trials spent; completed trials as dots,
    pruned ones as crosses, stuck or collapsed ones as red crosses."""
    import optuna

    TS = optuna.trial.TrialState
    fig, ax = plt.subplots(figsize=(9, 3.6))
    spent, best, xs, ys = 0, -np.inf, [], []
    for t in sorted(study.trials, key=lambda t: t.number):
        run = facts(t).epochs_run  # (a retry failed at once carries its parent's values)
        epochs = len(t.intermediate_values) if run is None else run
        spent += epochs
        last = list(t.intermediate_values.values())[-1] if t.intermediate_values else None
        if t.state == TS.COMPLETE:
            best = max(best, t.value)
            ax.plot(spent, t.value, "o", color="tab:blue", markersize=4)
        elif t.state == TS.PRUNED and last is not None:
            stuck = facts(t).stopped_because is not None
            ax.plot(spent, last, "x", color="tab:red" if stuck else "grey", markersize=5)
        if np.isfinite(best):
            xs.append(spent)
            ys.append(best)
    ax.step(xs, ys, where="post", color="tab:blue", label="best so far")
    ax.plot([], [], "x", color="grey", label="pruned")
    ax.plot([], [], "x", color="tab:red", label="stuck or collapsed")
    ax.set_xlabel("epochs spent (all trials)")
    ax.set_ylabel(study_facts(study).objective or "value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes (for a page that holds its images); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
