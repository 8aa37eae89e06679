"""KFP adapter of ingest: maps the `manifest` output artifact and parameters onto components.ingest.core."""

from kfp.dsl import Dataset, Output


def ingest_op(
    data_uri: str,
    manifest: Output[Dataset],
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    dedupe: str = "near",
    near_duplicate_distance: int = 4,
    group_pattern: str = "",
    expected_num_classes: int = 0,
    min_images_per_class: int = 1,
    allow_small_classes: bool = False,
    max_image_pixels: int = 89_478_485,
    max_bad_fraction: float = 0.05,
    max_workers: int = 16,
    listing_fingerprint: str = "",
) -> int:
    """Validate, deduplicate, group and split the class-folder images under `data_uri` into `manifest`
    (manifest.parquet, classes.json, ingest_report.json); returns the number of classes.

    `listing_fingerprint` (from listing_fingerprint_op) is not used by the work itself: it makes the step's
    cache key change whenever the objects under `data_uri` change, so a cached manifest is never stale.
    """
    from components.ingest.core import ingest

    result = ingest(
        data_uri, manifest.path, train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio,
        dedupe=dedupe, near_duplicate_distance=near_duplicate_distance, group_pattern=group_pattern,
        expected_num_classes=expected_num_classes, min_images_per_class=min_images_per_class,
        allow_small_classes=allow_small_classes, max_image_pixels=max_image_pixels,
        max_bad_fraction=max_bad_fraction, max_workers=max_workers,
    )
    manifest.metadata.update({
        "data_uri": data_uri,
        "num_images": result.num_images,
        "num_classes": len(result.classes),
        "classes": result.classes,
        **{f"num_{split}": n for split, n in result.split_counts.items()},
        "num_groups": result.num_groups,
        "num_rejected": result.report["rejected"],
        "manifest_sha256": result.manifest_sha256,
        "listing_fingerprint": listing_fingerprint,
    })
    return len(result.classes)


def listing_fingerprint_op(data_uri: str) -> str:
    """`<count>:<sha256>` of the (key, ETag, size) listing under `data_uri`; run uncached, it keys ingest's cache."""
    from components.ingest.fingerprint import listing_fingerprint

    return listing_fingerprint(data_uri)
