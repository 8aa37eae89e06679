"""The `tune_result` artifact (docs/DESIGN.md §3a): its one owner. The tune step writes it; train-frozen and
evaluate read it.

A folder holding `best_params.json`: `tune` (off | frozen), `line` (one sentence: what was chosen and why),
`train_params` (what train_frozen trains with: with tune=off the given values), `seconds`; after a search also
`cv_accuracy`, `best_trial`, `fold_accuracies`, `folds`, `trials` ({complete, pruned, fail}), `space`, `plots`
(the PNG files of the studies in the folder), `num_images`, `num_groups`, `extract_seconds`; after tune=all also
`finetune_params` (what finetune trains with) and `finetune` (the fine-tune search: `val_accuracy`,
`start_val_accuracy`, `best_trial`, `trials`, `space`, `fold_images`, `seconds`). A search also leaves its
Optuna journal `study.journal` there (unless the studies live in an RDB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BEST_FILE = "best_params.json"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
JOURNAL_FILE = "study.journal"


def write(result_dir: str | os.PathLike, best: dict) -> Path:
    """Write `best` as the folder's best_params.json; returns its path."""
    path = Path(result_dir, BEST_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(best, indent=2))
    return path


def read(result_dir: str | os.PathLike) -> dict:
    """The folder's best_params.json; a FileNotFoundError naming the folder when it is not a tune_result."""
    path = Path(result_dir, BEST_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {result_dir} is not a `tune_result` artifact of the tune step "
                                "(docs/DESIGN.md §3a)")
    best = json.loads(path.read_text())
    if not isinstance(best.get("train_params"), dict):
        raise ValueError(f"{path} has no train_params: not a `tune_result` written by the tune step")
    return best


def plots(result_dir: str | os.PathLike, best: dict) -> dict[str, bytes]:
    """{file name: PNG bytes} of the study's plots that `best` names and the folder holds."""
    return {name: Path(result_dir, name).read_bytes() for name in best.get("plots", [])
            if Path(result_dir, name).is_file()}
