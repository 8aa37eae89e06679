"""The register-model parameters and their defaults: the one owner (core, pipeline, `tlpipe models`).

Standard library only. The KFP adapter repeats these defaults as literals (KFP embeds its source); a test
checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RegisterParams:
    """The registry name and the champion/challenger gate (docs/DESIGN.md §6)."""

    registered_model_name: str = "fish-classifier"
    min_improvement: float = 0.0  # the new version must beat the champion by > 0 and >= this
    force_promote: bool = False  # promote even when not better or when the champion cannot be scored
    tflite_latency_repeats: int = 50  # timed single-image runs of each TFLite export (core only)

    def validate(self) -> None:
        """A ValueError naming the parameter that is out of range."""
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")
