"""The report's sentences, made from its numbers by fixed rules (no language model): which
setting mattered most, whether the champion beat the lab recipe by more than chance, whether
it overfits, and what the re-check found."""

from __future__ import annotations

import math
from typing import Any

Report = Any  # search.report.numbers.Report (which imports this module: no import back)

OVERFIT_GAP = 0.1  # a train - validation gap this large at the best epoch is called overfitting


def sentences(report: Report) -> list[str]:
    said = [_importance(report), _versus_lab(report), _overfit(report), _recheck(report)]
    return [s for s in said if s]


def _importance(report: Report) -> str:
    if not report.importances:
        return ("Too few trials completed to say which setting mattered (Optuna's fANOVA "
                "needs several completed trials that differ).")
    (first, share), *rest = report.importances.items()
    text = f"The setting that mattered most was `{first}` ({share:.0%} of the explained variance"
    if rest:
        text += f"; then `{rest[0][0]}`, {rest[0][1]:.0%}"
    return text + ")."


def _versus_lab(report: Report) -> str:
    lab = next((r for r in report.rows if r.label.startswith("lab recipe")), None)
    champion = next((r for r in report.rows if r.label.startswith("champion")), None)
    if champion is None:
        return ""
    name = report.objective
    if lab is None or math.isnan(lab.value):
        return (f"The lab's recipe gave no {name} to compare (the study had none, or it was "
                f"stopped); the champion reached {champion.value:.3f}.")
    delta = champion.value - lab.value
    text = (f"The champion reached {champion.value:.3f} {name} against {lab.value:.3f} for the "
            f"lab's recipe ({delta:+.3f}).")
    if champion.interval and lab.test is not None and lab.interval:
        (low, high), (lab_low, lab_high) = champion.interval, lab.interval
        overlap = low <= lab_high and lab_low <= high
        text += (f" On the test split ({champion.n_test} images) it scored {champion.test:.3f} "
                 f"against {lab.test:.3f}: "
                 + ("the 95 % intervals overlap, so the test split cannot tell them apart."
                    if overlap else "the 95 % intervals do not overlap: a real difference."))
    return text


def _overfit(report: Report) -> str:
    gap = report.overfit
    if gap is None:
        return ""
    if gap >= OVERFIT_GAP:
        return (f"The champion overfits: at its best epoch its training value is {gap:.2f} "
                "above its validation value.")
    return (f"The champion does not overfit much: at its best epoch training and validation "
            f"differ by {gap:+.2f}.")


def _recheck(report: Report) -> str:
    record = report.finalists
    if not record:
        return ("Its value is one run on one validation split: expect less on new images "
                "(re-check finalists with `--finalists N` for a mean ± SD).")
    champion = record["results"][str(record["champion"])]
    text = (f"Re-checked over {champion['n']} runs ({record['method']}), the champion's mean is "
            f"{champion['mean']:.3f} ± {champion['sd']:.3f}, against {champion['searched']:.3f} "
            "when the search found it.")
    ensemble = record.get("ensemble")
    if ensemble and ensemble.get("chosen") and ensemble.get("model_id"):
        text += (f" The finalists' ensemble scored {ensemble['mean']:.3f} on the same runs and "
                 "is the exported champion.")
    return text
