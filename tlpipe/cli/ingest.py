"""`tlpipe ingest` (build the manifest of an S3 image dataset) and `tlpipe data upload` (put a folder into S3)."""

from __future__ import annotations

import argparse
import json

from tlpipe.components.ingest.params import DEDUPE_MODES, NEAR_DUPLICATE_METHODS, IngestParams, UploadParams


def _cmd_ingest(args: argparse.Namespace) -> int:
    from tlpipe.components.common.manifest import REPORT_HTML_FILE
    from tlpipe.components.ingest.core import ingest

    result = ingest(
        args.data_uri, args.out, train_ratio=args.train_ratio, val_ratio=args.val_ratio, test_ratio=args.test_ratio,
        dedupe=args.dedupe, near_duplicate_method=args.near_duplicate_method,
        near_duplicate_similarity=args.near_duplicate_similarity, near_duplicate_distance=args.near_duplicate_distance,
        group_pattern=args.group_pattern,
        expected_num_classes=args.expected_num_classes, min_images_per_class=args.min_images_per_class,
        allow_small_classes=args.allow_small_classes, max_image_pixels=args.max_image_pixels,
        max_bad_fraction=args.max_bad_fraction, max_workers=args.max_workers, memory_budget_mb=args.memory_budget_mb,
        allow_similar_class_names=args.allow_similar_class_names,
    )
    near = result.report["near_duplicates"]
    print(json.dumps({"out": str(result.out_dir), "num_images": result.num_images, "classes": result.classes,
                      "num_groups": result.num_groups, "per_split": result.split_counts,
                      "rejected": result.report["rejected"],
                      "hidden_ignored": result.report["hidden_objects_ignored"],
                      "near_duplicate_pairs_merged": near["merged_pairs"],
                      "report": str(result.out_dir / REPORT_HTML_FILE),
                      "manifest_sha256": result.manifest_sha256}, indent=2))
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    from tlpipe.components.ingest.upload import upload_folder

    result = upload_folder(args.folder, args.uri, max_workers=args.max_workers)
    print(f"{result.uploaded} uploaded ({result.bytes_uploaded / 1e6:.1f} MB), {result.skipped} already there "
          f"with the same sha256, {result.hidden_ignored} hidden files ignored")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`tlpipe ingest S3_URI --out DIR` and `tlpipe data upload FOLDER S3_URI`."""
    p = sub.add_parser(
        "ingest", help="validate, deduplicate, group and split an S3 class-folder image dataset into a manifest",
        description="List s3://bucket/prefix/<class>/.../<image>, decode and hash every object, group copies and "
                    "near-duplicates, split per group, and write manifest.parquet, classes.json, "
                    "ingest_report.json and ingest_report.html to --out. Connection from S3_ENDPOINT_URL, "
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION.")
    p.add_argument("data_uri", help="s3://bucket/prefix holding one folder per class")
    p.add_argument("--out", required=True, help="local folder for the manifest artifact")
    p.add_argument("--train-ratio", type=float, default=IngestParams.train_ratio, help="share of the groups in train")
    p.add_argument("--val-ratio", type=float, default=IngestParams.val_ratio, help="share of the groups in val")
    p.add_argument("--test-ratio", type=float, default=IngestParams.test_ratio, help="share of the groups in test")
    p.add_argument("--dedupe", choices=DEDUPE_MODES, default=IngestParams.dedupe,
                   help="off: keep copies; exact: drop byte-identical copies; near: also group near-duplicates")
    p.add_argument("--near-duplicate-method", choices=NEAR_DUPLICATE_METHODS, default=IngestParams.near_duplicate_method,
                   help="phash: 64-bit hash (flips, rotations, re-encodings); dct: also rescaled and centre-cropped "
                        "copies (whitened DCT of centre crops, cosine)")
    p.add_argument("--near-duplicate-similarity", type=float, default=IngestParams.near_duplicate_similarity,
                   help="dct: min cosine similarity of near-duplicates (check the merged pairs in the report)")
    p.add_argument("--near-duplicate-distance", type=int, default=IngestParams.near_duplicate_distance,
                   help="phash: max Hamming distance (bits of 64) between perceptual hashes of near-duplicates")
    p.add_argument("--group-pattern", default=IngestParams.group_pattern,
                   help=r"regex on the key whose first group names the source, e.g. '([^/]+)_fish\d+_frame\d+\.png$'")
    p.add_argument("--expected-num-classes", type=int, default=IngestParams.expected_num_classes,
                   help="fail unless this many classes (0: any)")
    p.add_argument("--min-images-per-class", type=int, default=IngestParams.min_images_per_class)
    p.add_argument("--allow-small-classes", action="store_true", default=IngestParams.allow_small_classes,
                   help="accept classes too small to put an image in every split")
    p.add_argument("--max-image-pixels", type=int, default=IngestParams.max_image_pixels,
                   help="reject larger images (bombs)")
    p.add_argument("--max-bad-fraction", type=float, default=IngestParams.max_bad_fraction,
                   help="fail when more than this fraction of objects is unusable")
    p.add_argument("--max-workers", type=int, default=IngestParams.max_workers,
                   help="parallel reads (connection pool size)")
    p.add_argument("--memory-budget-mb", type=int, default=IngestParams.memory_budget_mb,
                   help="MiB of images decoded at once (a larger image is decoded alone); does not change the result")
    p.add_argument("--allow-similar-class-names", action="store_true", default=IngestParams.allow_similar_class_names,
                   help="keep class folders that differ only by case or surrounding spaces as separate classes")
    p.set_defaults(func=_cmd_ingest)

    data = sub.add_parser("data", help="dataset helpers: upload a class-folder dataset to S3")
    actions = data.add_subparsers(dest="action", required=True)
    up = actions.add_parser(
        "upload", help="upload a folder to s3://bucket/prefix in parallel, skipping files already there",
        description="Upload every file under FOLDER (relative paths become keys). Resumable: an object already "
                    "stored with the same sha256 (object metadata) is skipped.")
    up.add_argument("folder", help="local folder, e.g. ./data with one sub-folder per class")
    up.add_argument("uri", help="destination s3://bucket/prefix (the bucket must exist)")
    up.add_argument("--max-workers", type=int, default=UploadParams.max_workers, help="parallel uploads")
    up.set_defaults(func=_cmd_upload)
