"""register-model (docs/DESIGN.md §6): a new registry version of the chosen model, and the champion/challenger gate.

Order matters: log and register the version, set `challenger`, re-score the current `champion` on the
same test split, write the decision into the version's description, and move `champion` last, so any
failure before that leaves the old champion serving.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlpipe.components.common import examples, manifest, mlflow_utils, model_artifact, scoring
from tlpipe.components.common.hashing import sha256_file
from tlpipe.components.common.log import get_logger
from tlpipe.components.register import registry, tflite
from tlpipe.components.register.params import RegisterParams

log = get_logger("register")
KFP_UI_URL_ENV = "KFP_UI_URL"  # the KFP dashboard's base URL (optional): versions get a `kfp_run_url` tag
SERVED_MODEL_CODE = Path(__file__).with_name("serving.py")  # the pyfunc, logged as MLflow "models from code"


@dataclass
class RegisterResult:
    """What register did: the version, whether it is now the champion, and why."""

    model_version: str
    promoted: bool
    decision: str
    new_score: float
    champion_score: float | None
    champion_version: str | None
    reused_version: bool
    metric: str


def _find_version(client, name: str, content_hash: str) -> str | None:
    """The version of `name` registered from the same model bytes and manifest, if any."""
    with registry.registry_errors("search model versions", name):
        found = client.search_model_versions(
            f"name = '{name}' and tags.`{registry.CONTENT_HASH_TAG}` = '{content_hash}'")
    return min((v.version for v in found), key=int) if found else None


def _score_champion(name: str, version: str, images, labels, classes, top_k) -> dict:
    """Load `models:/name/version` and score it on the test arrays.

    The served model (serving.py) gives the class probabilities of the prepared test images; a version logged
    before it (Keras flavour, probabilities out) is scored through its pyfunc `predict`.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    try:
        probs = model.unwrap_python_model().probabilities(images)
    except MlflowException:  # not a PythonModel
        probs = np.asarray(model.predict(images), dtype=np.float64)
    return scoring.classification_metrics(probs, labels, classes, top_k=top_k)


def _gate(new_score: float, champion_score: float, metric: str, min_improvement: float) -> tuple[bool, float]:
    """(better by at least min_improvement, improvement); for loss-like metrics lower is better."""
    gain = new_score - champion_score if scoring.METRIC_DIRECTIONS[metric] else champion_score - new_score
    return gain > 0 and gain >= min_improvement, gain


def register(
    best_model_dir: str | Path,
    examples_dir: str | Path,
    manifest_dir: str | Path,
    registered_model_name: str = RegisterParams.registered_model_name,
    min_improvement: float = RegisterParams.min_improvement,
    force_promote: bool = RegisterParams.force_promote,
    experiment: str = mlflow_utils.DEFAULT_EXPERIMENT,
    kfp_run_id: str = "local",
    metadata: dict | None = None,
    tflite_latency_repeats: int = RegisterParams.tflite_latency_repeats,
) -> RegisterResult:
    """Register the model in `best_model_dir` (a `model` artifact plus evaluation.json) and run the gate.

    Without evaluation.json the gate compares on scoring's default metric and top-k.
    """
    from mlflow.tracking import MlflowClient

    RegisterParams(registered_model_name=registered_model_name, min_improvement=min_improvement,
                   force_promote=force_promote, tflite_latency_repeats=tflite_latency_repeats).validate()
    name = registered_model_name
    best_model_dir, metadata = Path(best_model_dir), dict(metadata or {})
    model_path = model_artifact.model_file(best_model_dir)
    manifest_hash = manifest.content_hash(manifest_dir)
    try:
        evaluation = model_artifact.read_evaluation(best_model_dir)
    except model_artifact.ModelArtifactError:
        evaluation = {}
    metric = evaluation.get("selection_metric", scoring.DEFAULT_METRIC)
    top_k = int(evaluation.get("metrics", {}).get("top_k", scoring.DEFAULT_TOP_K))

    mlflow_utils.connect()
    client = MlflowClient()
    content_hash = hashlib.sha256(f"{sha256_file(model_path)}:{manifest_hash}".encode()).hexdigest()
    registry.ensure_registered_model(client, name, description="Fish image classifier (tlpipe)")

    images, labels, classes = scoring.load_test_arrays(examples_dir)
    model = model_artifact.load_model(best_model_dir)
    probs = scoring.predict_proba(scoring.compiled_predictor(model), images)
    metrics = scoring.classification_metrics(probs, labels, classes, top_k=top_k)
    new_score = float(metrics[metric])
    log.info("new model: test %s %.4f on %d images", metric, new_score, len(labels))

    # Under the registry lock: one version per content hash, and the aliases re-read before the gate.
    with registry.locked(client, name, f"register {content_hash[:12]}"):
        version = _find_version(client, name, content_hash)
        reused = version is not None
        if reused:
            log.info("%s version %s already holds these model bytes and manifest (%s…); reusing it",
                     name, version, content_hash[:12])
        else:
            version = _log_and_register(client, name, model, model_path, best_model_dir, images, labels, probs,
                                        metrics, evaluation, metadata, manifest_hash, content_hash,
                                        kfp_run_id, experiment, tflite_latency_repeats, examples_dir, top_k)

        with registry.registry_errors(f"set alias {registry.CHALLENGER!r}", name):
            client.set_registered_model_alias(name, registry.CHALLENGER, version)
        log.info("%s version %s is the challenger", name, version)

        champion = registry.alias_version(client, name, registry.CHAMPION)
        champion_score = None
        if champion is None:
            promote, decision = True, f"no champion yet: version {version} becomes champion ({metric} {new_score:.4f})"
        elif champion == version:
            promote, decision = False, f"version {version} is already the champion ({metric} {new_score:.4f})"
        else:
            try:
                champion_score = float(_score_champion(name, champion, images, labels, classes, top_k)[metric])
            except Exception as exc:  # a champion that cannot be loaded or scored must not block or pass silently
                reason = f"champion version {champion} could not be loaded or scored ({type(exc).__name__}: {exc})"
                log.warning(reason)
                promote = force_promote
                decision = (f"{reason}; promoted version {version} anyway because force_promote is set"
                            if force_promote else f"{reason}; version {version} NOT promoted (set force_promote "
                                                  f"to promote without a comparison)")
            else:
                better, gain = _gate(new_score, champion_score, metric, min_improvement)
                scores = (f"test {metric}: new version {version} {new_score:.4f} vs champion version {champion} "
                          f"{champion_score:.4f} (improvement {gain:+.4f}, required > 0 and >= {min_improvement})")
                if better:
                    promote, decision = True, f"promoted: {scores}"
                elif force_promote:
                    promote, decision = True, f"promoted by force_promote although not better: {scores}"
                else:
                    promote, decision = False, f"kept champion version {champion}: {scores}"
        log.info("gate: %s", decision)

        with registry.registry_errors("update the version description", name):
            client.update_model_version(name, version, description=decision)
            client.set_model_version_tag(name, version, "gate_decision", decision)
            if champion_score is not None:
                client.set_model_version_tag(name, version, f"champion_v{champion}_{metric}", f"{champion_score:.6f}")
        if promote:
            registry.move_champion(client, name, version)  # the last registry change
    _finish_parent_run(client, kfp_run_id, experiment)
    is_champion = promote or champion == version
    return RegisterResult(model_version=str(version), promoted=is_champion, decision=decision, new_score=new_score,
                          champion_score=champion_score, champion_version=champion, reused_version=reused,
                          metric=metric)


def _log_and_register(client, name, model, model_path, best_model_dir, images, labels, probs, metrics,
                      evaluation, metadata, manifest_hash, content_hash, kfp_run_id, experiment,
                      tflite_latency_repeats, examples_dir, top_k) -> str:
    """In the `register` MLflow run: the served model as a LoggedModel, its test metrics and TFLite forms; the version.

    The LoggedModel's source run is the chosen stage's training run (evaluation.json's `mlflow_run_ids`) when the
    tracking server knows it, else the register run; the version links to both the LoggedModel and that run.
    """
    import mlflow

    scalar = {f"test_{k}": float(metrics[k]) for k in scoring.METRIC_DIRECTIONS}
    run_ids = {f"mlflow_run_id.{stage}": run_id for stage, run_id in evaluation.get("mlflow_run_ids", {}).items()}
    stage = evaluation.get("stage") or metadata.get("stage", "unknown")
    kfp_run_id = mlflow_utils.current_kfp_run_id(kfp_run_id)
    tags = {"kfp_run_id": kfp_run_id, **_kfp_run_url(kfp_run_id), "manifest_sha256": manifest_hash,
            registry.CONTENT_HASH_TAG: content_hash, "model_sha256": sha256_file(model_path), "stage": str(stage),
            "backbone": str(metadata.get("backbone", "unknown")),
            "image_size": str(int(float(metadata.get("image_size") or images.shape[1]))),
            "classes": ",".join(evaluation.get("classes", [])) or str(probs.shape[1]),
            **run_ids, **{k: f"{v:.6f}" for k, v in scalar.items()}}
    training_run, training_tags = _training_run(client, evaluation.get("mlflow_run_ids", {}).get(stage))
    tags.update(training_tags)
    with mlflow_utils.stage_run("register", kfp_run_id=kfp_run_id, experiment=experiment,
                                tags={"registered_model_name": name}) as run:
        mlflow.log_params({"registered_model_name": name, "stage": stage, "manifest_sha256": manifest_hash,
                           "content_hash": content_hash})
        model_id = _log_served_model(client, name, best_model_dir, examples_dir, images[0], top_k, training_run)
        mlflow.log_metrics(scalar, model_id=model_id)
        tags["model_id"] = model_id
        with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
            for variant, path in tflite.export(model, tmp).items():
                result = tflite.score(path, images, labels, latency_repeats=tflite_latency_repeats)
                log.info("TFLite %s: accuracy %.4f, %.2f ms/image (p90 %.2f)", variant, result["accuracy"],
                         result["latency_ms_b1"], result["latency_ms_b1_p90"])
                mlflow.log_metrics({f"tflite_{variant}_{k}": v for k, v in result.items()})
                tags.update({f"tflite_{variant}_accuracy": f"{result['accuracy']:.6f}",
                             f"tflite_{variant}_latency_ms_b1": f"{result['latency_ms_b1']:.3f}"})
                mlflow.log_artifact(str(path), artifact_path="tflite")
        tags["mlflow_run_id.register"] = run.info.run_id
        tags["tflite_uri"] = f"runs:/{run.info.run_id}/tflite"
        with registry.registry_errors("create a model version", name):
            version = client.create_model_version(name, source=f"models:/{model_id}", tags=tags, model_id=model_id,
                                                  run_id=training_run or run.info.run_id).version
    log.info("registered %s version %s: LoggedModel %s of run %s", name, version, model_id,
             training_run or run.info.run_id)
    return str(version)


def _kfp_run_url(kfp_run_id: str) -> dict[str, str]:
    """{"kfp_run_url": ...} when $KFP_UI_URL (the KFP dashboard's base URL) is set and this is a pipeline run."""
    base = os.environ.get(KFP_UI_URL_ENV, "").strip().rstrip("/")
    if not base or kfp_run_id == "local":
        return {}
    return {"kfp_run_url": f"{base}/#/runs/details/{kfp_run_id}"}


def _training_run(client, run_id: str | None) -> tuple[str | None, dict[str, str]]:
    """`run_id` (the chosen stage's training run) when the tracking server knows it, else None; and the tag
    `training_model_id`: the LoggedModel the training stage logged in that run (its Keras model), if any."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None, {}
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        log.warning("training run %s not found on the tracking server (%s): the LoggedModel's source run is the "
                    "register run", run_id, exc.error_code)
        return None, {}
    trained = [o.model_id for o in (run.outputs.model_outputs if run.outputs else [])]
    return run_id, ({"training_model_id": trained[-1]} if trained else {})


def _preparation(examples_dir) -> dict:
    """How the examples' images were made (schema.json): the served model prepares request images alike."""
    schema = examples.read_schema(examples_dir)
    return {"image_size": int(schema["image_size"]), "resize_mode": schema["resize_mode"],
            "jpeg_quality": int(schema["jpeg_quality"])}


def _served_signature(top_k: int):
    """Encoded image bytes in (column `image`); label, probability and the top-k (label, probability) out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array, Object, Property

    ranked = Array(Object([Property("label", "string"), Property("probability", "double")]))
    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                          outputs=Schema([ColSpec("string", "label"), ColSpec("double", "probability"),
                                          ColSpec(ranked, "top_k")]),
                          params=ParamSchema([ParamSpec("top_k", "long", top_k)]))


def _log_served_model(client, name, best_model_dir, examples_dir, example_image, top_k, training_run) -> str:
    """Log serving.py (the pyfunc) with the best_model folder as a LoggedModel; its model id.

    Also an output of the training run (the register run, active, gets it as an output from log_model).
    """
    import io

    import mlflow
    import pandas as pd
    from mlflow.entities import LoggedModelOutput
    from PIL import Image

    config = {**_preparation(examples_dir), "top_k": int(top_k)}
    logged = mlflow.initialize_logged_model(name=name, source_run_id=training_run, model_type="image-classifier",
                                            params={k: str(v) for k, v in config.items()})
    png = io.BytesIO()
    Image.fromarray(example_image).save(png, "PNG")
    mlflow.pyfunc.log_model(name=name, python_model=str(SERVED_MODEL_CODE), model_id=logged.model_id,
                            artifacts={"model": str(best_model_dir)}, model_config=config,
                            signature=_served_signature(config["top_k"]),
                            input_example=pd.DataFrame({"image": [png.getvalue()]}),
                            pip_requirements=_served_requirements())
    if training_run:
        client.log_outputs(training_run, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id


def _served_requirements() -> list[str]:
    """The pinned distributions of what serving.py imports (given, not inferred: inference loads the model again).

    serving.py also imports `tlpipe` (not on PyPI): the serving environment needs it installed.
    """
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions()
    return [f"{dist}=={version(dist)}" for module in ("tensorflow", "keras", "PIL", "numpy", "pandas")
            for dist in dists[module][:1]]


def _finish_parent_run(client, kfp_run_id: str, experiment: str) -> None:
    """Mark the pipeline's parent MLflow run FINISHED (register is the last step); none outside a pipeline."""
    if not mlflow_utils.in_pipeline(kfp_run_id):
        return
    run_id = mlflow_utils.current_kfp_run_id(kfp_run_id)
    parent = mlflow_utils.parent_run_id(run_id, experiment)
    client.set_terminated(parent, status="FINISHED")
    log.info("MLflow parent run %s of pipeline run %s marked FINISHED", parent, run_id)

