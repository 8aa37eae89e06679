"""A registered version (or a model folder) as a batch classifier of encoded images: `tlpipe predict`'s core,
shared by the page (app.py).

A `models:/name@alias` or `models:/name/<version>` reference loads the registered pyfunc
(components/register/serving.py): its class index and its model_config (`image_size`, `resize_mode`,
`jpeg_quality`), so each image is prepared as training saw it (`common.images`). `--tflite` swaps the Keras
forward pass for the version's TFLite export, logged on its register run (version tag `tflite_uri`).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tlpipe.components.common import images
from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import output_shown_on_failure
from tlpipe.serving import params

REGISTRY_PREFIX = "models:/"
READ_WORKERS = 4  # images read and prepared at once (S3 round trips, JPEG decoding)


@dataclass
class ModelInfo:
    """Which model answers: its registry name, version and aliases (a folder: its name, no version)."""

    reference: str
    name: str
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    form: str = "keras"  # or tflite-float32 / tflite-dynamic_range


class Classifier:
    """Prepared uint8 images in; class probabilities and the top-k out."""

    def __init__(self, classes: list[str], config: dict, forward: Callable[[np.ndarray], np.ndarray],
                 info: ModelInfo):
        self.classes, self.config, self.forward, self.info = list(classes), dict(config), forward, info

    def prepare(self, data: bytes, source: str) -> np.ndarray:
        """One encoded image as training saw it; a ValueError naming `source` when it is not an image."""
        try:
            return images.to_array(bytes(data), int(self.config["image_size"]), self.config["resize_mode"],
                                   int(self.config["jpeg_quality"]))
        except Exception as exc:  # any decoder failure
            raise ValueError(f"{source} is not a decodable image ({type(exc).__name__}: {exc})") from exc

    def predict(self, arrays: np.ndarray, top_k: int = params.TOP_K) -> list[dict]:
        """Per image: label, probability and top_k [{label, probability}], best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        probs = self.forward(np.asarray(arrays, dtype=np.float32)) if len(arrays) else np.zeros((0, 1))
        rows = []
        for p in np.asarray(probs, dtype=np.float64):
            best = np.argsort(-p, kind="stable")[:top_k]
            rows.append({"label": self.classes[best[0]], "probability": float(p[best[0]]),
                         "top_k": [{"label": self.classes[i], "probability": float(p[i])} for i in best]})
        return rows


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` -> (name, None, alias); `models:/name/3` -> (name, "3", None)."""
    rest = reference[len(REGISTRY_PREFIX):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ValueError(f"model {reference!r}: expected models:/<name>@<alias> or models:/<name>/<version>")


def _tflite_forward(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A TFLite interpreter as a batch forward pass (resized to each batch; one call at a time)."""
    import tensorflow as tf

    # Its constructor warns that tf.lite moves to LiteRT, and its first allocation prints an XNNPACK INFO line.
    with output_shown_on_failure("loading the TFLite model"):
        interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=os.cpu_count())
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    lock, shape = threading.Lock(), [None]

    def forward(batch: np.ndarray) -> np.ndarray:
        with lock:
            if shape[0] != batch.shape:
                interpreter.resize_tensor_input(inp, batch.shape)
                interpreter.allocate_tensors()
                shape[0] = batch.shape
            interpreter.set_tensor(inp, batch)
            interpreter.invoke()
            return interpreter.get_tensor(out).copy()

    return forward


def _download_tflite(mv, variant: str, reference: str) -> Path:
    import mlflow

    uri = mv.tags.get("tflite_uri")
    if not uri:
        raise ValueError(f"model {reference!r}: version {mv.version} has no TFLite export (no tflite_uri tag)")
    dest = Path(tempfile.mkdtemp(prefix="tlpipe-tflite-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/model_{variant}.tflite", dst_path=str(dest)))


def load(reference: str = params.DEFAULT_MODEL, tflite: str | None = None) -> Classifier:
    """The classifier behind `reference`: a registry reference or a model folder (an MLflow model, or a
    `model` artifact prepared with preprocess's defaults); `tflite`: a variant of the version's TFLite export."""
    if tflite is not None and tflite not in params.TFLITE_VARIANTS:
        raise ValueError(f"tflite must be one of {params.TFLITE_VARIANTS}, got {tflite!r}")
    if reference.startswith(REGISTRY_PREFIX):
        return _load_registered(reference, tflite)
    if tflite is not None:
        raise ValueError(f"--tflite needs a {REGISTRY_PREFIX} reference: the TFLite exports are logged with the "
                         f"registered version, not in the folder {reference!r}")
    return _load_folder(Path(reference))


def _load_pyfunc(uri: str):
    """The served python model (components/register/serving.py) behind an MLflow model URI or folder."""
    import mlflow

    # MLflow warns each python model without type hints, on each load (under filters of its own).
    with output_shown_on_failure(f"loading {uri}"):
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()


def _load_registered(reference: str, tflite: str | None) -> Classifier:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from tlpipe.components.common import mlflow_utils

    name, version, alias = parse_reference(reference)
    mlflow_utils.connect()
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        raise ValueError(f"model {reference!r}: {exc.message}") from exc
    served = _load_pyfunc(f"{REGISTRY_PREFIX}{name}/{mv.version}")
    info = ModelInfo(reference, name, str(mv.version), sorted(mv.aliases or []))
    forward = served.probabilities
    if tflite:
        forward, info.form = _tflite_forward(_download_tflite(mv, tflite, reference)), f"tflite-{tflite}"
    return Classifier(served.classes, served.config, forward, info)


def _load_folder(folder: Path) -> Classifier:
    from tlpipe.components.common import model_artifact, scoring
    from tlpipe.components.preprocess.params import PreprocessParams

    if not folder.is_dir():
        raise ValueError(f"model {str(folder)!r}: not a {REGISTRY_PREFIX} reference and no such folder")
    info = ModelInfo(str(folder), folder.resolve().name)
    if (folder / "MLmodel").is_file():
        served = _load_pyfunc(str(folder))
        return Classifier(served.classes, served.config, served.probabilities, info)
    try:
        model = model_artifact.load_model(folder)
        size = int(model_artifact.read_metadata(folder).get("image_size") or model.input_shape[1])
        classes = model_artifact.read_classes(folder)
    except model_artifact.ModelArtifactError as exc:
        raise ValueError(f"model {str(folder)!r}: neither an MLflow model (MLmodel) nor a model artifact "
                         f"({exc})") from exc
    config = {"image_size": size, "resize_mode": PreprocessParams.resize_mode,
              "jpeg_quality": PreprocessParams.jpeg_quality}
    forward = scoring.compiled_predictor(model)
    return Classifier(classes, config, lambda batch: scoring.predict_proba(forward, batch), info)


def list_sources(inputs: Iterable[str]) -> list[str]:
    """Files, folders (their images, recursively), s3:// objects and prefixes -> image paths and URIs."""
    found = []
    for item in inputs:
        if s3lib.is_s3_uri(item):
            found += _s3_sources(item)
            continue
        path = Path(item)
        if path.is_file():
            found.append(str(path))
        elif path.is_dir():
            listed = sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_image_name(p.name))
            if not listed:
                raise ValueError(f"{item}: no images in the folder ({', '.join(params.IMAGE_SUFFIXES)})")
            found += listed
        else:
            raise ValueError(f"{item}: no such file or folder")
    return found


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(params.IMAGE_SUFFIXES)


def _s3_sources(uri: str) -> list[str]:
    from minio.error import S3Error

    bucket, key = s3lib.split_uri(uri)
    s3 = s3lib.client()
    if key and not key.endswith("/"):
        try:
            s3.stat_object(bucket, key)
            return [uri]
        except S3Error as exc:
            if exc.code not in ("NoSuchKey", "NoSuchObject"):
                raise
    prefix = s3lib.join_uri(bucket, f"{key.rstrip('/')}/" if key else "")
    listed = sorted(s3lib.join_uri(bucket, k) for k in s3lib.iter_keys(s3, prefix) if _is_image_name(k.rsplit("/")[-1]))
    if not listed:
        raise ValueError(f"{uri}: no such object and no images under it")
    return listed


def read_source(source: str, s3=None) -> bytes:
    """The bytes of a local file or an s3:// object."""
    if s3lib.is_s3_uri(source):
        bucket, key = s3lib.split_uri(source)
        return s3lib.read_object(s3 or s3lib.client(), bucket, key)
    return Path(source).read_bytes()


def predict_sources(classifier: Classifier, sources: list[str], batch_size: int = params.BATCH_SIZE,
                    top_k: int = params.TOP_K, progress: bool = True) -> list[dict]:
    """Classify `sources` in batches of `batch_size`, with a progress bar on stderr; one row per source."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    s3 = s3lib.client() if any(s3lib.is_s3_uri(s) for s in sources) else None
    rows = []
    with ThreadPoolExecutor(READ_WORKERS) as pool, tqdm(total=len(sources), unit="image", file=sys.stderr,
                                                        disable=not progress or None) as bar:
        for start in range(0, len(sources), batch_size):
            batch = sources[start:start + batch_size]
            arrays = list(pool.map(lambda s: classifier.prepare(read_source(s, s3), s), batch))
            rows += [{"file": s, **row} for s, row in zip(batch, classifier.predict(np.stack(arrays), top_k),
                                                          strict=True)]
            bar.update(len(batch))
    return rows


def _ranked(row: dict) -> str:
    return ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top_k"])


def write(rows: list[dict], fmt: str, stream, info: ModelInfo) -> None:
    """`rows` as a table, CSV (top_k as JSON) or JSON ({"model": ..., "predictions": [...]})."""
    if fmt == "json":
        json.dump({"model": asdict(info), "predictions": rows}, stream, indent=2)
        stream.write("\n")
    elif fmt == "csv":
        writer = csv.writer(stream)
        writer.writerow(["file", "label", "probability", "top_k"])
        for row in rows:
            writer.writerow([row["file"], row["label"], f"{row['probability']:.6f}", json.dumps(row["top_k"])])
    elif fmt == "table":
        cells = [(r["file"], r["label"], f"{r['probability']:.3f}", _ranked(r)) for r in rows]
        header = ("file", "label", "probability", "top-k")
        widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
        for line in (header, tuple("-" * w for w in widths), *cells):
            stream.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")
    else:
        raise ValueError(f"format must be one of {params.FORMATS}, got {fmt!r}")
