"""The `model` artifact (docs/DESIGN.md §4): its one owner. Train writes it; finetune, evaluate and register read it.

A folder holding `model.keras`, `class_indices.json`, `history.json`, `curves.png` and `metadata.json`; or, for a
stage switched off, only the placeholder `skipped.json`. The `best_model` artifact that evaluate hands to
register is a copy of the chosen model folder plus `evaluation.json` (its test metrics and the choice).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tlpipe.components.common.manifest import class_index

MODEL_FILE = "model.keras"
CLASS_INDICES_FILE = "class_indices.json"
HISTORY_FILE = "history.json"
CURVES_FILE = "curves.png"
METADATA_FILE = "metadata.json"
SKIPPED_FILE = "skipped.json"
EVALUATION_FILE = "evaluation.json"

PathLike = str | os.PathLike


class ModelArtifactError(FileNotFoundError):
    """A folder is not the `model` artifact it should be (a file of the layout is missing)."""


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def _read_json(model_dir: PathLike, name: str) -> dict:
    path = Path(model_dir, name)
    if not path.exists():
        raise ModelArtifactError(f"{path} not found: {model_dir} is not a complete `model` artifact "
                                 f"(docs/DESIGN.md §4)")
    return json.loads(path.read_text())


# ----- the placeholder of a stage switched off -------------------------------------------------------
def write_skipped(model_dir: PathLike, stage: str, reason: str) -> None:
    """The placeholder `model` of a stage switched off: `skipped.json` only, no model."""
    _write_json(Path(model_dir, SKIPPED_FILE), {"stage": stage, "reason": reason})


def read_skipped(model_dir: PathLike) -> dict | None:
    """{"stage", "reason"} when `model_dir` is a placeholder, else None."""
    path = Path(model_dir, SKIPPED_FILE)
    return json.loads(path.read_text()) if path.exists() else None


# ----- the model folder --------------------------------------------------------------------------------
def model_file(model_dir: PathLike) -> Path:
    """The saved Keras model of an artifact; a clear error when the folder holds none."""
    path = Path(model_dir, MODEL_FILE)
    if not path.exists():
        skipped = read_skipped(model_dir)
        hint = f" (a placeholder: stage {skipped['stage']} was skipped)" if skipped else ""
        raise ModelArtifactError(f"{model_dir} holds no {MODEL_FILE}{hint}: not a `model` artifact "
                                 f"(docs/DESIGN.md §4)")
    return path


def load_model(model_dir: PathLike, compile: bool = False):
    """The Keras model of an artifact (imports Keras)."""
    import keras

    return keras.saving.load_model(model_file(model_dir), compile=compile)


def write_files(model_dir: PathLike, classes: list[str], history: dict, metadata: dict) -> None:
    """The JSON files beside model.keras: class index, per-epoch history, artifact metadata."""
    _write_json(Path(model_dir, CLASS_INDICES_FILE), class_index(classes))
    _write_json(Path(model_dir, HISTORY_FILE), history)
    _write_json(Path(model_dir, METADATA_FILE), metadata)


def read_classes(model_dir: PathLike) -> list[str]:
    return list(_read_json(model_dir, CLASS_INDICES_FILE)["classes"])


def read_history(model_dir: PathLike) -> dict:
    """`history.json`: {"stage", "best_epoch", "epochs": [one row per epoch], "stopped_early", "start", ...}."""
    return _read_json(model_dir, HISTORY_FILE)


def read_metadata(model_dir: PathLike) -> dict:
    """`metadata.json`: stage, backbone, image_size, mlflow_run_id, val_accuracy."""
    return _read_json(model_dir, METADATA_FILE)


# ----- best_model: the chosen model plus its evaluation --------------------------------------------------
def write_evaluation(model_dir: PathLike, evaluation: dict) -> None:
    _write_json(Path(model_dir, EVALUATION_FILE), evaluation)


def read_evaluation(model_dir: PathLike) -> dict:
    """`evaluation.json` of a `best_model` artifact: stage, metrics, latency, classes, explanation, run ids."""
    return _read_json(model_dir, EVALUATION_FILE)
