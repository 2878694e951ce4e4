"""The exported model as MLflow pyfunc: raw image files or arrays of any size in, predictions out.

It applies the task's own preprocessing (gray, the same anti-aliased resize as training, scaled
to [0, 1]), so `mlflow.pyfunc.load_model("models:/<name>@champion").predict(["scan.png"])` and
`mlflow models serve` work on images as users have them. Accepted inputs:

- a path, or a list of paths, to image files;
- a pandas DataFrame with a `path` column (files) or an `image_base64` column (encoded image files,
  the form that travels over HTTP: `{"dataframe_records": [{"image_base64": "..."}]}`);
- an array: (H, W) one gray image, (H, W, 3|4) one color image, (N, H, W) or (N, H, W, C) a stack;
  uint8 0-255, or floats in [0, 1];
- a list of such arrays (of different sizes).

A classifier returns a DataFrame: `class` (name), `class_index`, and the scores (`score`: the
probability of the second class, or the hinge margin; or `p_<class>` for each of several classes).
A segmenter returns the lung-probability maps, (N, S, S) at the model's input size.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

from datasets.images import load_gray, resize, resize_array, to_gray, unit_range
from models.losses import predicted_classes

PREPROCESSING_FILE = "preprocessing.json"


def gray_images(model_input: Any, size: int) -> np.ndarray:
    """Any accepted input -> (N, size, size) uint8, decoded and resized as in training."""
    if isinstance(model_input, (str, Path)):
        model_input = [model_input]
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            model_input = list(model_input["path"])
        elif "image_base64" in model_input.columns:
            return np.stack([_decoded(text, size) for text in model_input["image_base64"]])
        else:
            raise ValueError(
                f"a DataFrame input needs a `path` or an `image_base64` column; it has "
                f"{', '.join(map(str, model_input.columns))}"
            )
    if isinstance(model_input, list) and model_input and isinstance(model_input[0], (str, Path)):
        return np.stack([load_gray(Path(p), size) for p in model_input])
    if isinstance(model_input, list):
        return np.concatenate([gray_images(np.asarray(a), size) for a in model_input])
    array = np.asarray(model_input)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        array = array[None]  # one image
    if array.ndim not in (3, 4) or array.size == 0:
        raise ValueError(f"cannot read images from an array of shape {array.shape}: give "
                         "(H, W), (H, W, 3), (N, H, W) or (N, H, W, C)")
    if array.dtype != np.uint8:  # floats in [0, 1] (or already 0-255)
        scale = 255.0 if float(array.max(initial=0)) <= 1.0 else 1.0
        array = np.clip(array.astype("float32") * scale, 0, 255).astype("uint8")
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return resize_array(array, size)


def _decoded(text: str, size: int) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text)))
    except (ValueError, OSError) as error:
        raise ValueError(f"`image_base64` does not hold an image file: {error}") from None
    return np.asarray(resize(to_gray(image), size), dtype="uint8")


# Inputs vary by design (files, encoded images, arrays of any size), which type hints cannot say.
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class ImagePredictor(mlflow.pyfunc.PythonModel):
    """Loads the Keras model saved beside it (artifact `keras_model`) and its preprocessing."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras  # loaded with the model, not when this module is imported

        self.keras_model = keras.saving.load_model(context.artifacts["keras_model"],
                                                   compile=False)
        self.settings = json.loads(Path(context.artifacts["preprocessing"]).read_text())

    def predict(self, context, model_input, params=None):  # no hints: inputs vary, see above
        images = gray_images(model_input, self.settings["image_size"])
        outputs = np.asarray(self.keras_model.predict(unit_range(images[..., None]), verbose=0))
        if self.settings["kind"] == "segmentation":
            return outputs[..., 0]
        names = self.settings["class_names"]
        index = predicted_classes(outputs, self.settings["loss"])
        if outputs.shape[1] > 1:
            scores = {f"p_{name}": outputs[:, i] for i, name in enumerate(names)}
        else:
            scores = {"score": outputs[:, 0]}
        return pd.DataFrame({"class": [names[i] for i in index], "class_index": index, **scores})


# Logged as "models from code" (this file, not a pickled object): loading runs this line.
mlflow.models.set_model(ImagePredictor())
