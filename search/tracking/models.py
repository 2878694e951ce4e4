"""Models in MLflow read back and deleted: the models a study keeps (by model id, from any
machine that reaches the tracking store), and a registered model by its URI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import keras
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.runtime.urls import mask_password


def drop_model(client: MlflowClient, model_id: str) -> None:
    """Delete a kept model and its files (MLflow's own delete only marks it, and `mlflow gc`
    removes the files later), so a study's storage stays bounded."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    logged = client.get_logged_model(model_id)
    get_artifact_repository(logged.artifact_location, client.tracking_uri).delete_artifacts()
    client.delete_logged_model(model_id)


def live_models(client: MlflowClient, experiment_id: str, study: str) -> set[str]:
    """The ids of the models a study keeps now (not deleted)."""
    found, token = set(), None
    while True:
        page = client.search_logged_models(
            [experiment_id], filter_string=f"tags.`medtune.study` = '{study}'",
            page_token=token)
        found |= {m.model_id for m in page}
        token = page.token
        if not token:
            return found


def kept_model(model_id: str, tracking_uri: str | None = None
               ) -> tuple[keras.Model, dict[str, Any]]:
    """A kept model (`keep_model`) from MLflow, uncompiled, and its MLmodel metadata; from any
    machine that reaches the tracking store. A deleted or unknown id is a ValueError."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    client = MlflowClient(tracking_uri or mlflow.get_tracking_uri())
    try:
        logged = client.get_logged_model(model_id)
        if str(logged.status) != "READY":  # its upload failed
            raise MlflowException(f"its status is {logged.status}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(download_artifacts(artifact_uri=logged.artifact_location, dst_path=tmp,
                                             tracking_uri=client.tracking_uri))
            model = keras.saving.load_model(next(folder.glob("data/*.keras")), compile=False)
            metadata = Model.load(folder).metadata or {}
    except (MlflowException, StopIteration, OSError) as error:
        why = error.message if isinstance(error, MlflowException) else str(error) or "no model"
        store = mask_password(client.tracking_uri)
        raise ValueError(
            f"model {model_id} is not in the MLflow tracking store {store} ({why}): give the "
            "--tracking-uri the study logged to, or retrain the model (export --replay)"
        ) from None
    return model, metadata


def load_registered_model(uri: str, tracking_uri: str | None = None) -> keras.Model:
    """The Keras model of a registered medtune model, e.g. `models:/vgg_bone@champion`
    (a model `medtune export` registered, or any model logged with the Keras flavor)."""
    import mlflow.pyfunc

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        if "keras" in mlflow.models.get_model_info(uri).flavors:
            return mlflow.keras.load_model(uri)
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().keras_model
    except MlflowException as error:
        raise ValueError(
            f"cannot load {uri} from the MLflow Model Registry: {error.message}"
        ) from None

