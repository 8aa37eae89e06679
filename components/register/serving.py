"""The served model (MLflow "models from code"): encoded images of any size in; per image the label, its
probability and the top-k, named from the model's own class index.

register logs this file with `mlflow.pyfunc.log_model(python_model=<this file>)`: MLflow keeps a copy with the
model and runs it when the model loads. Artifact `model`: the `best_model` folder (model.keras,
class_indices.json, ...). model_config: `image_size`, `resize_mode`, `jpeg_quality` (the examples' schema.json:
a request image is prepared as the training images were, by `tlpipe.components.common.images`) and `top_k`
(the default of the request parameter `top_k`). Serving needs the `tlpipe` package installed.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from tlpipe.components.common import images, model_artifact, scoring

INPUT_COLUMN = "image"  # encoded image bytes (JPEG, PNG, ...; base64 in a JSON request)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The Keras classifier behind the training-time image preparation."""

    def load_context(self, context):
        folder = context.artifacts["model"]
        self.classes = model_artifact.read_classes(folder)
        self.forward = scoring.compiled_predictor(model_artifact.load_model(folder))
        self.config = dict(context.model_config)

    def probabilities(self, arrays: np.ndarray) -> np.ndarray:
        """Class probabilities [N, classes] of prepared uint8 images [N, S, S, 3] (what the gate scores)."""
        return scoring.predict_proba(self.forward, arrays)

    def prepare(self, data: bytes, row: int) -> np.ndarray:
        """One request image as training saw it; a bad one is an invalid input naming its row."""
        try:
            return images.to_array(bytes(data), int(self.config["image_size"]), self.config["resize_mode"],
                                   int(self.config["jpeg_quality"]))
        except Exception as exc:  # any decoder failure: the caller sent something that is not an image
            raise MlflowException.invalid_parameter_value(
                f"{INPUT_COLUMN!r} of row {row} is not a decodable image: {type(exc).__name__}: {exc}") from exc

    def predict(self, context, model_input, params=None):
        """`model_input`: a DataFrame with column `image`; one answer row per image."""
        top_k = min(int((params or {}).get("top_k", self.config["top_k"])), len(self.classes))
        if top_k < 1:
            raise MlflowException.invalid_parameter_value(f"top_k must be >= 1, got {top_k}")
        arrays = [self.prepare(data, row) for row, data in enumerate(model_input[INPUT_COLUMN])]
        probs = self.probabilities(np.stack(arrays)) if arrays else np.zeros((0, len(self.classes)))
        rows = []
        for p in probs:
            best = np.argsort(-p, kind="stable")[:top_k]
            rows.append({"label": self.classes[best[0]], "probability": float(p[best[0]]),
                         "top_k": [{"label": self.classes[i], "probability": float(p[i])} for i in best]})
        return pd.DataFrame(rows, columns=["label", "probability", "top_k"])


mlflow.models.set_model(ImageClassifier())
