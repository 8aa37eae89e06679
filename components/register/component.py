"""KFP adapter of register-model (DESIGN.md §6). The pipeline wraps `register_op` with dsl.component."""

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
    """Register the best model in the MLflow registry as `challenger`; move `champion` when it wins the gate."""
    from collections import namedtuple

    from components.register import core

    result = core.register(best_model.path, examples.path, manifest.path,
                           registered_model_name=registered_model_name, min_improvement=min_improvement,
                           force_promote=force_promote, experiment=experiment, kfp_run_id=kfp_run_id,
                           metadata=dict(best_model.metadata))
    outputs = namedtuple("RegisterOutputs", ["model_version", "promoted", "decision"])
    return outputs(result.model_version, result.promoted, result.decision)
