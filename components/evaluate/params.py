"""The evaluate/compare parameters and their defaults: the one owner (the core and the pipeline read them).

Light: the standard library and the metric names of `tlpipe.components.common.scoring` (light to import too).
The KFP adapter repeats these defaults as literals (KFP embeds its source); a test checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlpipe.components.common.scoring import DEFAULT_METRIC, DEFAULT_TOP_K, METRIC_DIRECTIONS

SELECTION_METRICS = tuple(METRIC_DIRECTIONS)  # log_loss and ece: lower is better; the others: higher


@dataclass
class EvaluateParams:
    """How the candidates are scored and the best one chosen (docs/DESIGN.md §5)."""

    selection_metric: str = DEFAULT_METRIC  # one of SELECTION_METRICS, on val; a tie: the simpler stage
    top_k: int = DEFAULT_TOP_K  # top-k accuracy (capped at the number of classes)
    latency_repeats: int = 20  # timed CPU runs per batch size, after warm-up

    def validate(self) -> None:
        """A ValueError naming the parameter that is out of range."""
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(f"selection_metric must be one of {sorted(SELECTION_METRICS)}, "
                             f"got {self.selection_metric!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
