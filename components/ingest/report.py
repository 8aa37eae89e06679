"""The ingest report (`ingest_report.json`: counts, warnings, every rejected object) and the checks that fail
a dataset which cannot produce a usable manifest (docs/DESIGN.md §2)."""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.examples import SPLITS
from tlpipe.components.common.log import get_logger
from tlpipe.components.common.manifest import REPORT_FILE, REPORT_HTML_FILE
from tlpipe.components.ingest.params import IngestParams
from tlpipe.components.ingest.reader import Listed

log = get_logger("ingest")

# Reasons that make an object *bad* (counted against max_bad_fraction); duplicates are not bad.
BAD_REASONS = {"empty", "not_an_image", "unsupported_format", "corrupt", "too_large", "not_in_class_folder",
               "bad_class_folder", "unsafe_key", "conflicting_label", "vanished"}


class IngestError(RuntimeError):
    """The dataset cannot produce a usable manifest (too many bad objects, too few classes, …)."""


# The parameters the report records, in this order.
RECORDED_PARAMS = ("dedupe", "near_duplicate_method", "near_duplicate_distance", "near_duplicate_similarity",
                   "group_pattern", "max_image_pixels", "max_bad_fraction", "max_object_bytes",
                   "allow_similar_class_names")
MERGED_SAMPLE = 24  # near-duplicate pairs the report shows: the weakest merges, nearest the threshold


def build(root_uri: str, listed: list[Listed], accepted: list[Listed], rejected: list[Listed], classes: list[str],
          groups: list[str], splits: list[str], markers: int, hidden: int, unmatched: int,
          merged: list[tuple[str, str, float]], params: IngestParams) -> dict:
    """The report document of one run (`groups` and `splits`: those of each accepted image; `merged`: the
    near-duplicate pairs that grouping.group_ids joined, as (key, key, score))."""
    ratios = params.ratios
    per_class = {c: dict.fromkeys((*SPLITS, "total"), 0) for c in classes}
    for item, split in zip(accepted, splits, strict=True):
        per_class[item.label][split] += 1
        per_class[item.label]["total"] += 1
    group_sizes = Counter(groups)
    by_reason = Counter(x.reason for x in rejected)
    bad = sum(n for reason, n in by_reason.items() if reason in BAD_REASONS)
    bucket = s3lib.split_uri(root_uri)[0]
    return {
        "data_uri": root_uri,
        "listed_objects": len(listed),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "bad_objects": bad,
        "bad_fraction": round(bad / len(listed), 6),
        "folder_markers_ignored": markers,
        "hidden_objects_ignored": hidden,  # reader.is_ignored: hidden names (.DS_Store, .git/...), __MACOSX, Thumbs.db
        "num_classes": len(classes),
        "classes": classes,
        "per_class": per_class,
        "per_split": {s: splits.count(s) for s in SPLITS},
        "num_groups": len(group_sizes),
        "largest_group": max(group_sizes.values(), default=0),
        "groups_with_more_than_one_image": sum(1 for n in group_sizes.values() if n > 1),
        "group_sizes": {str(size): count for size, count in sorted(Counter(group_sizes.values()).items())},
        "near_duplicates": _near_duplicates(merged, accepted, bucket, params),
        "group_pattern_unmatched": unmatched,
        "warnings": _warnings(group_sizes, len(accepted), unmatched, ratios) + _similar_names_warnings(classes, params),
        "ratios": ratios,
        "params": {name: getattr(params, name) for name in RECORDED_PARAMS},
        "rejected_objects": [{"uri": s3lib.join_uri(bucket, x.key), "reason": x.reason, "detail": x.detail}
                             for x in rejected],
    }


def _near_duplicates(merged: list[tuple[str, str, float]], accepted: list[Listed], bucket: str,
                     params: IngestParams) -> dict:
    """How near-duplicates were found, how many pairs were joined, and the MERGED_SAMPLE weakest of them."""
    if params.dedupe != "near":
        return {"method": "off", "merged_pairs": 0, "sample": []}
    dct = params.near_duplicate_method == "dct"
    by_key = {x.key: x for x in accepted}
    weakest = sorted(merged, key=lambda p: (p[2] if dct else -p[2], p[0], p[1]))[:MERGED_SAMPLE]
    return {
        "method": params.near_duplicate_method,
        "score": "cosine similarity (>= threshold)" if dct else "Hamming distance in bits (<= threshold)",
        "threshold": params.near_duplicate_similarity if dct else params.near_duplicate_distance,
        "merged_pairs": len(merged),
        "sample": [{"a": s3lib.join_uri(bucket, a), "b": s3lib.join_uri(bucket, b), "score": score,
                    "labels": [by_key[a].label, by_key[b].label],
                    "sizes": [[by_key[k].info.width, by_key[k].info.height] for k in (a, b)]}
                   for a, b, score in weakest],
    }


def sampled_uris(report: dict) -> list[str]:
    """The URIs of the images in the report's sample of merged pairs, each once."""
    pairs = report["near_duplicates"]["sample"]
    return list(dict.fromkeys(uri for pair in pairs for uri in (pair["a"], pair["b"])))


def _warnings(group_sizes: Counter, n: int, unmatched: int, ratios: dict[str, float]) -> list[str]:
    """Signs that the split groups may not be what the user meant."""
    out = []
    smallest = min(r for r in ratios.values() if r > 0)
    largest = max(group_sizes.values(), default=0)
    if largest >= 10 and largest > smallest * n:
        out.append(f"the largest split group holds {largest} of {n} images, more than the smallest split's share "
                   f"({smallest:.0%}): near-duplicate chains or a broad group_pattern merged many images; check "
                   f"the merged pairs in {REPORT_HTML_FILE}, near_duplicate_similarity (dct) or "
                   f"near_duplicate_distance (phash), and group_pattern")
    if unmatched:
        out.append(f"group_pattern did not match {unmatched} of {n} keys: those are grouped by content only")
    for warning in out:
        log.warning("%s", warning)
    return out


def similar_class_names(classes: list[str]) -> list[list[str]]:
    """Sets of class names that differ only by case, surrounding spaces or Unicode normal form ('cat', 'Cat ')."""
    by_key: dict[str, list[str]] = defaultdict(list)
    for name in classes:
        by_key[unicodedata.normalize("NFC", name).strip().casefold()].append(name)
    return [names for names in by_key.values() if len(names) > 1]


def _similar_names_warnings(classes: list[str], params: IngestParams) -> list[str]:
    """Similar class names kept apart by allow_similar_class_names (without it, `check` fails on them)."""
    if not params.allow_similar_class_names:
        return []
    out = [f"class folders {', '.join(map(repr, names))} differ only by case or surrounding spaces and are kept as "
           f"separate classes (allow_similar_class_names)" for names in similar_class_names(classes)]
    for warning in out:
        log.warning("%s", warning)
    return out


def check(report: dict, classes: list[str], root_uri: str, params: IngestParams) -> None:
    """Raise IngestError when the report shows a dataset unfit for training; warn of allowed small classes."""
    max_bad_fraction, expected_num_classes = params.max_bad_fraction, params.expected_num_classes
    min_images_per_class, ratios = params.min_images_per_class, params.ratios
    if report["bad_fraction"] > max_bad_fraction:
        bad = [f"{r['uri']}: {r['reason']}" for r in report["rejected_objects"] if r["reason"] in BAD_REASONS]
        examples = "; ".join(bad[:5])
        raise IngestError(f"{report['bad_objects']} of {report['listed_objects']} objects under {root_uri} are bad "
                          f"({report['bad_fraction']:.1%} > max_bad_fraction={max_bad_fraction:.1%}): "
                          f"{report['rejected_by_reason']}; e.g. {examples}; all listed in {REPORT_FILE}")
    similar = similar_class_names(classes)
    if similar and not params.allow_similar_class_names:
        sets = "; ".join(", ".join(map(repr, names)) for names in similar)
        raise IngestError(f"class folders under {root_uri} differ only by case or surrounding spaces: {sets}. Rename "
                          f"them to one name (their images then form one class), or set allow_similar_class_names "
                          f"to keep them as separate classes")
    found = f"found {len(classes)}: {', '.join(classes) or '(none)'}"
    if expected_num_classes and len(classes) != expected_num_classes:
        raise IngestError(f"expected_num_classes={expected_num_classes} but {found} (under {root_uri})")
    if len(classes) < 2:
        raise IngestError(f"a classifier needs at least 2 classes with accepted images under {root_uri}; {found}")
    small = {c: n["total"] for c, n in report["per_class"].items() if n["total"] < min_images_per_class}
    if small:
        raise IngestError(f"classes with fewer than min_images_per_class={min_images_per_class} accepted images: "
                          f"{small}")
    active = [s for s in SPLITS if ratios[s] > 0]
    empty = {c: [s for s in active if n[s] == 0] for c, n in report["per_class"].items()}
    empty = {c: s for c, s in empty.items() if s}
    if empty and not params.allow_small_classes:
        detail = "; ".join(f"{c} ({report['per_class'][c]['total']} images): no image in {', '.join(s)}"
                           for c, s in empty.items())
        raise IngestError(f"classes too small to give every split an image: {detail}. Add images (or distinct "
                          f"groups), change the ratios, or set allow_small_classes")
    for c, s in empty.items():
        log.warning("class %s has no image in split(s) %s (allowed by allow_small_classes)", c, ", ".join(s))
