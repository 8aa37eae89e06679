"""KFP adapters of ingest (wrapped with dsl.component by the pipeline at compile time).

The defaults are literals (KFP embeds each function's source); a test checks them against params.py.
"""

from kfp.dsl import Dataset, Output


def ingest_op(
    data_uri: str,
    manifest: Output[Dataset],
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    dedupe: str = "near",
    near_duplicate_method: str = "dct",
    near_duplicate_similarity: float = 0.95,
    near_duplicate_distance: int = 4,
    group_pattern: str = "",
    expected_num_classes: int = 0,
    min_images_per_class: int = 1,
    allow_small_classes: bool = False,
    max_image_pixels: int = 89_478_485,
    max_bad_fraction: float = 0.05,
    max_workers: int = 16,
    memory_budget_mb: int = 512,
    allow_similar_class_names: bool = False,
    listing_fingerprint: str = "",
    experiment: str = "fish-classification",
) -> int:
    """Validate, deduplicate, group and split the class-folder images under `data_uri` into `manifest`.

    Lists s3://bucket/prefix/<class>/.../<image> (docs/DESIGN.md §1), decodes and hashes every object, keeps
    copies and near-duplicates in one split group and writes the manifest artifact (docs/DESIGN.md §2).

    Args:
        data_uri: s3://bucket/prefix holding one folder per class.
        manifest: the output: manifest.parquet, classes.json, ingest_report.json and ingest_report.html (the
            report with thumbnails of merged near-duplicate pairs, to check the threshold on).
        train_ratio: share of the images in the train split (> 0); the three ratios sum to 1.
        val_ratio: share of the images in the val split (may be 0).
        test_ratio: share of the images in the test split (may be 0).
        dedupe: off (keep byte-identical copies), exact (drop them) or near (also group near-duplicates).
        near_duplicate_method: phash (64-bit hash: flips, rotations, re-encodings) or dct (also rescaled and
            centre-cropped copies; whitened DCT of centre crops, cosine).
        near_duplicate_similarity: dct only: min cosine similarity of near-duplicates (0.95: 26 cross-video
            pairs of 540k on fish-egu2017).
        near_duplicate_distance: phash only: max Hamming distance (bits of 64) between perceptual hashes of
            near-duplicates.
        group_pattern: regex on the key whose first group names the source (its images share a split);
            empty: group by content only.
        expected_num_classes: the pipeline's num_classes: fail unless this many classes are found; 0: as many
            as the data has.
        min_images_per_class: fail when a class has fewer accepted images.
        allow_small_classes: accept classes too small to put an image in every split.
        max_image_pixels: reject larger images (decompression bombs), checked before decoding.
        max_bad_fraction: fail when more than this fraction of the objects is unusable.
        max_workers: parallel reads (the S3 connection pool size).
        memory_budget_mb: MiB of images decoded at once (encoded bytes + pixels estimated from each header); an
            image larger than the budget is decoded alone. Does not change the result.
        allow_similar_class_names: keep class folders that differ only by case or surrounding spaces (cat,
            cat , Cat) as separate classes (with a warning); by default they fail.
        listing_fingerprint: from listing_fingerprint_op; unused by the work itself, it changes the step's
            cache key whenever the objects under `data_uri` change, so a cached manifest is never stale.
        experiment: MLflow experiment of the pipeline's parent run, which gets these parameters and the
            manifest data set (when MLFLOW_TRACKING_URI is set).

    Returns:
        The number of classes.
    """
    from tlpipe.components.ingest.core import ingest

    result = ingest(
        data_uri, manifest.path, train_ratio=train_ratio, val_ratio=val_ratio, test_ratio=test_ratio,
        dedupe=dedupe, near_duplicate_method=near_duplicate_method, near_duplicate_similarity=near_duplicate_similarity,
        near_duplicate_distance=near_duplicate_distance, group_pattern=group_pattern,
        expected_num_classes=expected_num_classes, min_images_per_class=min_images_per_class,
        allow_small_classes=allow_small_classes, max_image_pixels=max_image_pixels,
        max_bad_fraction=max_bad_fraction, max_workers=max_workers, memory_budget_mb=memory_budget_mb,
        allow_similar_class_names=allow_similar_class_names, experiment=experiment,
        manifest_uri=manifest.uri,
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
    """Fingerprint the listing under `data_uri`: the cache key of ingest.

    Run uncached before ingest: its output changes whenever an object under the prefix is added, removed,
    renamed or rewritten. Lists the keys only (one request per 1000), reads no object.

    Args:
        data_uri: s3://bucket/prefix of the dataset.

    Returns:
        `<count>:<sha256>` over the (key, ETag, size) of every object, in key order.
    """
    from tlpipe.components.ingest.fingerprint import listing_fingerprint

    return listing_fingerprint(data_uri)
