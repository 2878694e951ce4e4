"""Everything medtune writes to MLflow (runs, curves, plots, logged models), and the only package
that touches it."""
