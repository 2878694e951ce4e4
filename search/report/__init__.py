"""`medtune report`: the lab report a student hands in, written from a study's own runs.

What it reads: the Optuna study (trials, the finalists' re-check, the test split's judgement),
the study's MLflow run (its settings, manifest) and its trials' runs (curves, plots), and the
data once more (counts per class, the lab recipe's test score). What it writes: one page as
`report.html` (images inline: it opens offline and prints) and `report.md` beside its images
(`report_files/`), logged to the study's run under `report/`. Everything in it is the study's
own numbers; its sentences are made from them by rules (`search.report.sentences`), no model.
"""
