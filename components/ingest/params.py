"""Ingest's parameters: the one owner of their defaults, choices and checks (standard library only, so that
`tlpipe --help` imports nothing heavy). Core, CLI and pipeline take their defaults from here; the KFP adapters
repeat them as literals (a test compares them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

DEDUPE_MODES = ("off", "exact", "near")
# Max Hamming distance (of 64 bits) between the flip/rotation-invariant DCT perceptual hashes of near-duplicates.
# Flipped/rotated copies score 0-2 and re-encoded ones 0-2; on the real fish frames (1053 images, 161 videos) 4 joins
# 21 cross-video pairs of 540k (a difference hash joined 419), so unrelated low-texture photos stay apart. Re-crops
# of more than ~2% per side move the hash by 4-20 bits: name the source with group_pattern to catch those.
DEFAULT_NEAR_DUPLICATE_DISTANCE = 4
# near_duplicate_method: phash (the 64-bit hash above: flips, rotations, re-encodings) or dct (descriptor.py: also
# rescaled and centre-cropped copies), and dct's cosine threshold; bench/near_duplicates.py measured both.
NEAR_DUPLICATE_METHODS = ("phash", "dct")
DEFAULT_NEAR_DUPLICATE_SIMILARITY = 0.95


@dataclass(frozen=True)
class IngestParams:
    """Every parameter of `core.ingest` (README.md of this component explains each); checked when built."""

    train_ratio: float = 0.7
    val_ratio: float = 0.15
    test_ratio: float = 0.15
    dedupe: str = "near"
    near_duplicate_distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE
    near_duplicate_method: str = "dct"
    near_duplicate_similarity: float = DEFAULT_NEAR_DUPLICATE_SIMILARITY
    group_pattern: str = ""
    expected_num_classes: int = 0
    min_images_per_class: int = 1
    allow_small_classes: bool = False
    max_image_pixels: int = 89_478_485  # Pillow's decompression-bomb limit
    max_bad_fraction: float = 0.05
    max_workers: int = 16
    max_object_bytes: int = 256 * 2**20
    memory_budget_mb: int = 512  # images being decoded at once: encoded bytes + decoded pixels (from headers)
    allow_similar_class_names: bool = False  # else class folders differing only by case/spaces fail

    def __post_init__(self) -> None:
        check_ratios(self.ratios)
        if self.dedupe not in DEDUPE_MODES:
            raise ValueError(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, got {self.dedupe!r}")
        if not 0 <= self.near_duplicate_distance <= 32:
            raise ValueError(f"near_duplicate_distance must be 0..32 bits, got {self.near_duplicate_distance}")
        if self.near_duplicate_method not in NEAR_DUPLICATE_METHODS:
            raise ValueError(f"near_duplicate_method must be one of {', '.join(NEAR_DUPLICATE_METHODS)}, got "
                             f"{self.near_duplicate_method!r}")
        if not 0 < self.near_duplicate_similarity <= 1:
            raise ValueError(f"near_duplicate_similarity must be in (0, 1] (cosine), got {self.near_duplicate_similarity}")
        if self.group_pattern:
            compile_group_pattern(self.group_pattern)
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.memory_budget_mb < 1:
            raise ValueError(f"memory_budget_mb must be >= 1 (MB of images decoded at once), got {self.memory_budget_mb}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.max_image_pixels < 1 or self.min_images_per_class < 1 or self.expected_num_classes < 0:
            raise ValueError("max_image_pixels and min_images_per_class must be >= 1, expected_num_classes >= 0")

    @property
    def ratios(self) -> dict[str, float]:
        return {"train": self.train_ratio, "val": self.val_ratio, "test": self.test_ratio}


@dataclass(frozen=True)
class UploadParams:
    """Parameters of `upload.upload_folder` (`tlpipe data upload`)."""

    max_workers: int = 16  # parallel uploads


def check_ratios(ratios: Mapping[str, float]) -> None:
    if any(r < 0 for r in ratios.values()):
        raise ValueError(f"split ratios must be >= 0, got {dict(ratios)}")
    if ratios["train"] <= 0:
        raise ValueError(f"train_ratio must be > 0, got {ratios['train']}")
    if abs(sum(ratios.values()) - 1) > 1e-6:
        raise ValueError(f"train_ratio + val_ratio + test_ratio must be 1, got {sum(ratios.values()):.6g} "
                         f"({dict(ratios)})")


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"group_pattern {pattern!r} is not a valid regular expression: {exc}") from None
    if regex.groups < 1:
        raise ValueError(f"group_pattern {pattern!r} needs a capture group: its first group is the group id")
    return regex
