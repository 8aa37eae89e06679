"""KFP adapter of register-model (docs/DESIGN.md §6). The pipeline wraps `register_op` with dsl.component."""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Model


def register_op(
    best_model: Input[Model],
    examples: Input[Dataset],
    manifest: Input[Dataset],
    registered_model_name: str = "fish-classifier",
    min_improvement: float = 0.0,
    force_promote: bool = False,
    experiment: str = "fish-classification",
    kfp_run_id: str = "local",
) -> NamedTuple("RegisterOutputs", [("model_version", str), ("promoted", bool), ("decision", str)]):
    """Register the best model in the MLflow registry as `challenger`; move `champion` when it wins the gate.

    The same model bytes and manifest reuse their version. The gate re-scores the current champion on the same
    test split; the decision goes into the version's description. `champion` moves last.

    Args:
        best_model: The `best_model` artifact of evaluate: the chosen model plus `evaluation.json`.
        examples: The `examples` artifact; its test split scores the new version and the champion.
        manifest: The `manifest` artifact of ingest; its hash is recorded with the version.
        registered_model_name: The registered model in the MLflow model registry.
        min_improvement: How much the new version must beat the champion by (on evaluate's selection metric)
            to take the `champion` alias; it must also be better by more than 0.
        force_promote: Promote even when the new version is not better, or the champion cannot be scored.
        experiment: The MLflow experiment of the pipeline's parent run.
        kfp_run_id: The pipeline run whose MLflow parent run this step logs under ("local": $KFP_RUN_ID).

    Returns:
        RegisterOutputs: `model_version` (the registry version of the model), `promoted` (whether it is the
        champion after this step, also when it already was) and `decision` (the gate's decision in words).
    """
    from collections import namedtuple

    from tlpipe.components.register import core

    result = core.register(best_model.path, examples.path, manifest.path,
                           registered_model_name=registered_model_name, min_improvement=min_improvement,
                           force_promote=force_promote, experiment=experiment, kfp_run_id=kfp_run_id,
                           metadata=dict(best_model.metadata))
    outputs = namedtuple("RegisterOutputs", ["model_version", "promoted", "decision"])
    return outputs(result.model_version, result.promoted, result.decision)
