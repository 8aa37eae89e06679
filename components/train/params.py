"""The training parameters and their defaults: the one owner (core, CLI, bench and pipeline read them here).

Standard library only, so `tlpipe --help` stays fast. The KFP adapters repeat these defaults as literals (KFP
embeds their source); a test checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

BACKBONES = ("MobileNetV2", "ResNet50", "EfficientNetB0")  # the stock backbones model.py builds
MONITORS = ("val_loss", "val_accuracy")  # what early stopping and best-weights restore compare
TOP_K = 3  # top-k accuracy on val (k = N-1 for fewer classes)


@dataclass
class TrainParams:
    """Everything that decides a stage's result (also the fingerprint a checkpoint must match).

    `epochs` / `learning_rate` are those of train_frozen and train_scratch, `finetune_epochs` /
    `finetune_learning_rate` those of finetune (see `stage_epochs`, `stage_learning_rate`).
    """

    batch_size: int = 32
    epochs: int = 10
    learning_rate: float = 1e-3
    finetune_epochs: int = 10
    finetune_learning_rate: float = 1e-5
    augment: bool = True
    early_stopping_patience: int = 3  # <= 0: no early stopping
    early_stopping_monitor: str = "val_loss"  # or val_accuracy: which val metric picks the best epoch
    use_class_weights: bool = False
    seed: int = 42
    feature_cache: str = "off"  # off | on | flips | augmented:K (train_frozen only)
    backbone: str = "MobileNetV2"
    alpha: float = 1.0
    weights: str | None = "imagenet"
    dense_units: tuple[int, ...] = (512, 256)
    dropouts: tuple[float, ...] = (0.5, 0.3)
    unfreeze_layers: int = 50  # finetune only
    weight_decay: float = 0.0  # > 0: AdamW with this decoupled weight decay (train_frozen, train_scratch)
    label_smoothing: float = 0.0  # share of the target spread over all classes (train_frozen, train_scratch)
    extra: dict = field(default_factory=dict)

    def tuned(self, chosen: dict) -> TrainParams:
        """These parameters with the tune step's choice (`train_params` or `finetune_params` of its tune_result)
        in place; `extra["tuned"]` names them (the tune step logs their pipeline values on the parent run)."""
        return replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items()},
                       extra={**self.extra, "tuned": sorted({*self.extra.get("tuned", ()), *chosen})})

    def stage_epochs(self, stage: str) -> int:
        return self.finetune_epochs if stage == "finetune" else self.epochs

    def stage_learning_rate(self, stage: str) -> float:
        return self.finetune_learning_rate if stage == "finetune" else self.learning_rate

    def validate(self, stage: str) -> None:
        """A ValueError naming the parameter that `stage` cannot train with."""
        prefix = "finetune_" if stage == "finetune" else ""
        for name, value in (("batch_size", self.batch_size), (f"{prefix}epochs", self.stage_epochs(stage))):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.stage_learning_rate(stage) > 0:
            raise ValueError(f"{prefix}learning_rate must be > 0, got {self.stage_learning_rate(stage)}")
        if self.early_stopping_monitor not in MONITORS:
            raise ValueError(f"early_stopping_monitor must be one of {MONITORS}, got {self.early_stopping_monitor!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if feature_cache_views(self.feature_cache) > 1 and self.feature_cache != "flips" and not self.augment:
            raise ValueError(f"feature_cache={self.feature_cache!r} needs augment=True (use 'on' without augmentation)")


def feature_cache_views(feature_cache: str) -> int:
    """0 for `off`, 1 for `on` (clean features), 2 for `flips` (and mirrored), K for `augmented:K`; else an error."""
    if feature_cache == "off":
        return 0
    if feature_cache == "on":
        return 1
    if feature_cache == "flips":
        return 2
    prefix, _, count = feature_cache.partition(":")
    if prefix == "augmented" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"feature_cache must be 'off', 'on', 'flips' or 'augmented:K' (K >= 1), got {feature_cache!r}")


def is_better(row: dict, best: dict | None, monitor: str) -> bool:
    """Whether an epoch's val metrics beat the best so far: lower val_loss, or higher val_accuracy."""
    if best is None:
        return True
    return row[monitor] < best[monitor] if monitor == "val_loss" else row[monitor] > best[monitor]


TUNE_MODES = ("off", "frozen", "all")
# The frozen-stage search space (tune.py): {name: {"low", "high", "log"} | {"choices": [...]} | a fixed value}.
# dense_units: comma-separated head sizes ("" = no hidden layer: a linear probe); one dropout after each.
DEFAULT_TUNE_SPACE = {
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "dense_units": {"choices": ["", "128", "256", "512,256"]},
    "dropout": {"low": 0.0, "high": 0.6},
    "weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "feature_cache": {"choices": ["on", "flips", "augmented:4"]},
}
# The fine-tune search (tune=all): the finetune stage's unfrozen depth, learning rate and augmentation; its epochs
# are the best epoch of the chosen trial (at most finetune_epochs).
DEFAULT_FINETUNE_SPACE = {
    "unfreeze_layers": {"choices": [20, 50, 100]},
    "finetune_learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    "augment": {"choices": [False, True]},
}


@dataclass
class TuneParams:
    """The recipe search before training (tune.py): what it searches, for how long, where the study lives."""

    tune: str = "frozen"  # off | frozen (the frozen-stage search on cached features) | all (and then fine-tuning)
    tune_trials: int = 20  # trials of the frozen study (all workers together)
    tune_timeout_s: float = 90.0  # wall-clock budget of the frozen search; 0: none
    tune_space: str = ""  # JSON replacing entries of DEFAULT_TUNE_SPACE / DEFAULT_FINETUNE_SPACE
    tune_finetune_trials: int = 4  # trials of the fine-tune study (tune=all)
    tune_finetune_timeout_s: float = 900.0  # wall-clock budget of the fine-tune search; 0: none
    tune_folds: int = 3  # grouped k-fold cross-validation over the train+val groups
    tune_max_epochs: int = 30  # per fold, with early stopping on the fold's val accuracy
    tune_patience: int = 5
    tune_storage: str = ""  # "": a journal file in the output folder; an RDB URL (sqlite:///, postgresql://) or a journal file
    tune_workers: int = 1  # processes sharing the study

    def validate(self) -> None:
        """A ValueError naming the parameter that is out of range."""
        if self.tune not in TUNE_MODES:
            raise ValueError(f"tune must be one of {TUNE_MODES}, got {self.tune!r}")
        for name in ("tune_trials", "tune_finetune_trials", "tune_max_epochs", "tune_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tune_folds < 2:
            raise ValueError(f"tune_folds must be >= 2 (cross-validation), got {self.tune_folds}")
        for name in ("tune_timeout_s", "tune_finetune_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def space(self) -> dict:
        """DEFAULT_TUNE_SPACE (the frozen search) with the entries of `tune_space` (JSON) in place of the defaults."""
        return {**DEFAULT_TUNE_SPACE, **{k: v for k, v in self._overrides().items() if k in DEFAULT_TUNE_SPACE}}

    def finetune_space(self) -> dict:
        """DEFAULT_FINETUNE_SPACE (the fine-tune search) with the entries of `tune_space` in place of the defaults."""
        return {**DEFAULT_FINETUNE_SPACE,
                **{k: v for k, v in self._overrides().items() if k in DEFAULT_FINETUNE_SPACE}}

    def _overrides(self) -> dict:
        import json

        try:
            override = json.loads(self.tune_space) if self.tune_space.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"tune_space is not valid JSON ({exc}): give e.g. '{{\"feature_cache\": \"on\"}}'") from None
        known = sorted({**DEFAULT_TUNE_SPACE, **DEFAULT_FINETUNE_SPACE})
        if not isinstance(override, dict) or set(override) - set(known):
            raise ValueError(f"tune_space must be a JSON object with keys among {known}, got {self.tune_space!r}")
        for name, entry in override.items():
            _check_space_entry(name, entry)
        return override


def _check_space_entry(name: str, entry) -> None:
    """A ValueError naming the tune_space entry that is neither a value, {"choices": [...]} nor {"low", "high"}."""
    if isinstance(entry, dict) and "choices" in entry:
        values = entry["choices"]
        if not isinstance(values, list) or not values:
            raise ValueError(f"tune_space {name}: choices must be a non-empty list, got {values!r}")
    elif isinstance(entry, dict):
        low, high = entry.get("low"), entry.get("high")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low <= high:
            raise ValueError(f"tune_space {name}: a range needs numbers low <= high, got {entry!r}")
        if entry.get("log") and low <= 0:
            raise ValueError(f"tune_space {name}: a log range needs low > 0, got {entry!r}")
        values = []
    else:
        values = [entry]
    if name == "unfreeze_layers" and not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in values):
        raise ValueError(f"tune_space unfreeze_layers: layer counts must be whole numbers >= 1, got {entry!r}")
    if name == "feature_cache":
        for mode in values:
            if feature_cache_views(str(mode)) == 0:
                raise ValueError(f"tune_space feature_cache: the search trains on cached features: "
                                 f"'on', 'flips' or 'augmented:K', not {mode!r}")
