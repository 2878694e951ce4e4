"""Whom a study names champion: the models it keeps, finalists re-checked, the ensemble, the refit
and the test split."""
