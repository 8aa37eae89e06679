"""Deterministic split of groups into train/val/test, stratified per class by each group's majority class."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from tlpipe.components.common.examples import SPLITS
from tlpipe.components.ingest.params import check_ratios


def _order_key(group: str, salt: str = "") -> str:
    """Order of groups within a class: pseudo-random but fixed by the group id (and the salt, when given)."""
    return hashlib.sha256((f"{salt}:{group}" if salt else group).encode()).hexdigest()


def majority_class(labels: Sequence[str]) -> str:
    """Most frequent label; ties go to the smallest name."""
    counts = Counter(labels)
    return min(counts, key=lambda c: (-counts[c], c))


def split_groups(group_labels: Mapping[str, Sequence[str]], ratios: Mapping[str, float],
                 salt: str = "") -> dict[str, str]:
    """Map each group id to a split; another `salt` gives another split, just as deterministic.

    `group_labels[g]` lists the label of every image of group g. Per majority class, groups are taken in a
    fixed pseudo-random order. First every smaller split with a non-zero ratio (test, then val) is seeded with
    the first group that fits its target share (else the smallest group), so it gets at least one image of the
    class when the class has enough groups; then each remaining group goes to the split furthest below its
    target share of the class's images.
    """
    check_ratios(ratios)
    by_class: dict[str, list[str]] = defaultdict(list)
    for group, labels in group_labels.items():
        by_class[majority_class(labels)].append(group)
    assignment: dict[str, str] = {}
    for groups in by_class.values():
        assignment.update(_split_class(sorted(groups, key=lambda g: _order_key(g, salt)), group_labels, ratios))
    return assignment


def _split_class(groups: list[str], group_labels: Mapping[str, Sequence[str]],
                 ratios: Mapping[str, float]) -> dict[str, str]:
    size = {g: len(group_labels[g]) for g in groups}
    total = sum(size.values())
    filled = dict.fromkeys(SPLITS, 0)
    assignment: dict[str, str] = {}
    remaining = list(groups)
    for split in ("test", "val"):
        if ratios[split] > 0 and len(remaining) > 1:
            fitting = [g for g in remaining if size[g] <= max(1.0, ratios[split] * total)]
            seed = fitting[0] if fitting else min(remaining, key=lambda g: size[g])
            remaining.remove(seed)
            assignment[seed] = split
            filled[split] += size[seed]
    for group in remaining:
        split = max((s for s in SPLITS if ratios[s] > 0),
                    key=lambda s: (ratios[s] * total - filled[s], -SPLITS.index(s)))
        assignment[group] = split
        filled[split] += size[group]
    return assignment
