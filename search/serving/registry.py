"""The MLflow Model Registry: the export's run, the champion logged as Keras and as the image
pyfunc and registered under its alias; a registered model loaded back."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.tracking import plots
from search.tracking.runs import MAX_TAG, log_params, own_run
from search.tracking.trial_run import TrialRun

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def export_run(
    name: str, params: Mapping[str, Any], tags: Mapping[str, str], *,
    experiment: str = "medtune", tracking_uri: str | None = None,
) -> Iterator[TrialRun]:
    """The run of one export: the replay's epochs, both values, the models. A refused or failed
    export ends FAILED with the reason in the `error` tag."""
    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    run_id, own = own_run(client, name, experiment, {"medtune.kind": "export", **tags})
    log_params(client, run_id, params)
    run = TrialRun(client, run_id, name)
    try:
        yield run
    except BaseException as error:
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:MAX_TAG])
        if own:
            client.set_terminated(run_id, "FAILED")
        raise
    if run.history:
        run.log_figure(plots.learning_curves(run.history, title=f"{name}: replay"),
                       "plots/learning_curves.png")
    if own:
        client.set_terminated(run_id)


@dataclass
class Registered:
    name: str
    version: str
    model_uri: str  # models:/<name>@champion
    keras_uri: str  # the plain Keras model, same weights
    previous: str | None  # the version that was champion before, now challenger


def register_model(
    run: TrialRun, model: keras.Model, preprocessing: Mapping[str, Any], name: str,
    requirements: list[str],
) -> Registered:
    """Log `model` twice in `run`, as the Keras 3 flavor (signature and input example) and as
    the image pyfunc (`search.serving.predictor`); register the pyfunc under `name` as
    `champion`."""
    import mlflow.keras
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from search.serving import predictor

    mlflow.set_tracking_uri(run.client.tracking_uri)  # the flavors' loggers read the global URI
    size = preprocessing["image_size"]
    example = np.full((1, size, size, 1), 0.5, dtype="float32")
    with tempfile.TemporaryDirectory() as tmp:
        keras_dir = Path(tmp, "keras_model")
        # mlflow.keras.log_model fails to save an input example (it writes the example before
        # making the model folder); save_model into an existing folder works.
        keras_dir.mkdir()
        signature = infer_signature(example, model.predict(example, verbose=0))
        mlflow.keras.save_model(model, str(keras_dir), signature=signature,
                                input_example=example, pip_requirements=requirements)
        run.client.log_artifacts(run.run_id, str(keras_dir), "keras_model")
        settings_file = Path(tmp, predictor.PREPROCESSING_FILE)
        settings_file.write_text(json.dumps(dict(preprocessing), indent=2))
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=predictor.__file__,
                artifacts={"keras_model": str(next(keras_dir.glob("data/*.keras"))),
                           "preprocessing": str(settings_file)},
                code_paths=[str(PROJECT_ROOT / p) for p in ("search", "datasets", "models")],
                pip_requirements=requirements,
            )
    client = run.client
    try:
        previous = client.get_model_version_by_alias(name, "champion").version
    except MlflowException:
        previous = None
        if not client.search_registered_models(f"name = '{name}'"):
            client.create_registered_model(
                name, description=f"medtune models of {preprocessing['task']}"
            )
    version = client.create_model_version(
        name, info.model_uri, run_id=run.run_id, model_id=info.model_id,
        tags={"medtune.task": preprocessing["task"]},
    ).version
    if previous is not None:
        client.set_registered_model_alias(name, "challenger", previous)
    client.set_registered_model_alias(name, "champion", version)
    return Registered(name, version, f"models:/{name}@champion",
                      f"runs:/{run.run_id}/keras_model", previous)
