"""The training parameters and their defaults: the one owner (core, CLI, bench and pipeline read them here).

Standard library only, so `tlpipe --help` stays fast. The KFP adapters repeat these defaults as literals (KFP
embeds their source); a test checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    feature_cache: str = "off"  # off | on | augmented:K (train_frozen only)
    backbone: str = "MobileNetV2"
    alpha: float = 1.0
    weights: str | None = "imagenet"
    dense_units: tuple[int, ...] = (512, 256)
    dropouts: tuple[float, ...] = (0.5, 0.3)
    unfreeze_layers: int = 50  # finetune only
    extra: dict = field(default_factory=dict)

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
        if feature_cache_views(self.feature_cache) and self.feature_cache != "on" and not self.augment:
            raise ValueError(f"feature_cache={self.feature_cache!r} needs augment=True (use 'on' without augmentation)")


def feature_cache_views(feature_cache: str) -> int:
    """0 for `off`, 1 for `on` (clean features), K for `augmented:K`; anything else is an error."""
    if feature_cache == "off":
        return 0
    if feature_cache == "on":
        return 1
    prefix, _, count = feature_cache.partition(":")
    if prefix == "augmented" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ValueError(f"feature_cache must be 'off', 'on' or 'augmented:K' (K >= 1), got {feature_cache!r}")


def is_better(row: dict, best: dict | None, monitor: str) -> bool:
    """Whether an epoch's val metrics beat the best so far: lower val_loss, or higher val_accuracy."""
    if best is None:
        return True
    return row[monitor] < best[monitor] if monitor == "val_loss" else row[monitor] > best[monitor]
