"""Training-stage benchmark on the real fish photos (../shared/data/fish-egu2017), split by video.

Runs the `--stages` (train_frozen, finetune, train_scratch; MobileNetV2 alpha 0.35, the shared ImageNet
weights) for several seeds (each seed its own video split, see write_fish_examples, and its own training
seed) and reports, per stage, test accuracy (mean of the seeds with its 95 % t-interval, min, max and every
split's) and wall time beside the original design's figures, plus a `majority` row: always the most frequent
class of the split's train+val images (the floor). Then, unless --skip-speed, on one seed: frozen-stage time
and images/s with feature_cache off / on / augmented:K, fine-tune images/s and single-image latency of the
saved model (model.predict vs a tf.function). The JSON also holds every seed's result (`per_seed`).

    .venv/bin/python -m bench.train                      # defaults: 160 px, 3 seeds, 10+10 epochs, fine-tune 1e-5
    .venv/bin/python -m bench.train --epochs 20 --finetune-epochs 15 --patience 5 --monitor val_accuracy \
        --finetune-learning-rate 1e-4 --no-finetune-augment          # the best recipe found (README)
    .venv/bin/python -m bench.train --seeds 12 --stages frozen,finetune --skip-speed  # 12 video splits, no scratch
    .venv/bin/python -m bench.train --seeds 12 --stages scratch --skip-speed    # scratch vs majority, 12 splits
    .venv/bin/python -m bench.train --image-size 96 --seeds 1 --epochs 3 --finetune-epochs 2 --max-per-video 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.common import interval, print_table, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
FISH_DIR = REPO_ROOT.parent / "shared" / "data" / "fish-egu2017"
WEIGHTS = REPO_ROOT.parent / "shared" / "weights" / "mobilenet_v2_0.35_224_no_top.weights.h5"
# The original design's method measured here (frozen MobileNetV2-0.35 + head, ImageDataGenerator, 160 px,
# split by video, 107-image test set): see issue 6.
ORIGINAL = {"train_frozen": (0.54, 23.5), "finetune": (0.52, None), "train_scratch": (0.33, 75.0)}
STAGES = ("frozen", "finetune", "scratch")


def video_id(path: Path) -> str:
    """The video a fish-egu2017 frame comes from: the file name's part before `_fish`."""
    return path.name.split("_fish")[0]


def write_fish_examples(src: Path, dst: Path, image_size: int, ratios: dict[str, float] | None = None,
                        max_per_video: int | None = None, split_salt: str = "", seed: int = 0) -> Path:
    """An `examples` artifact of fish-egu2017 made with the product's own split and image processing.

    Ingest's `split_groups` (groups = video ids, stratified per class, train/val/test 0.7/0.15/0.15 by
    default) keeps every video whole in one split and each split near its share of every class; another
    `split_salt` gives another such split (test accuracy swings by ~0.07 between them here). Images go
    through `common.images.process` with preprocess's defaults (squash to image_size, JPEG quality 95),
    recorded in schema.json as preprocess records them.
    """
    from tlpipe.components.common import examples, images
    from tlpipe.components.ingest.split import split_groups
    from tlpipe.components.preprocess.params import PreprocessParams

    resize_mode, quality = PreprocessParams.resize_mode, PreprocessParams.jpeg_quality
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    frames: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for label, name in enumerate(classes):
        for path in sorted((src / name).glob("*.png")):
            frames[video_id(path)].append((label, path))
    if max_per_video:  # evenly spaced frames; before the split, so the ratios hold for what is kept
        frames = {v: f[:: max(1, len(f) // max_per_video)][:max_per_video] for v, f in frames.items()}
    assignment = split_groups({v: [classes[label] for label, _ in f] for v, f in frames.items()},
                              ratios or {"train": 0.7, "val": 0.15, "test": 0.15}, salt=split_salt)
    records: dict[str, list[bytes]] = defaultdict(list)
    for vid, video_frames in sorted(frames.items()):
        for label, path in video_frames:
            data = images.process(path.read_bytes(), image_size, resize_mode, quality)
            records[assignment[vid]].append(
                examples.encode_example(data, label, hashlib.sha256(data).hexdigest().encode()))
    counts = {}
    for split in examples.SPLITS:
        rows = records[split]
        random.Random(seed).shuffle(rows)
        counts[split] = examples.write_tfrecord(dst / split / examples.shard_name(0), rows)
    examples.write_schema(dst, image_size=image_size, channels=3, num_examples=counts, classes=classes,
                          num_shards={s: 1 for s in examples.SPLITS}, resize_mode=resize_mode, jpeg_quality=quality,
                          source="fish-egu2017, split by video")
    return dst


def test_accuracy(model_dir: Path, examples_dir: Path) -> float:
    from tlpipe.components.common import model_artifact
    from tlpipe.components.train import data

    model = model_artifact.load_model(model_dir)
    labels, preds = [], []
    for x, y in data.batches(data.image_dataset(examples_dir, "test"), 64):
        preds.append(np.argmax(model.predict_on_batch(x), axis=1))
        labels.append(y.numpy())
    return float(np.mean(np.concatenate(preds) == np.concatenate(labels)))


def majority_accuracy(examples_dir: Path) -> float:
    """Test accuracy of always predicting the most frequent class of the train+val images."""
    from tlpipe.components.train import data

    pool = np.concatenate([data.labels(examples_dir, "train"), data.labels(examples_dir, "val")])
    return float(np.mean(data.labels(examples_dir, "test") == np.bincount(pool).argmax()))


def latency_ms(model_dir: Path, image_size: int, repeats: int) -> dict:
    """Median single-image latency: model.predict and a compiled tf.function."""
    import tensorflow as tf

    from tlpipe.components.common import model_artifact

    model = model_artifact.load_model(model_dir)
    x = np.random.default_rng(0).uniform(0, 255, (1, image_size, image_size, 3)).astype("float32")

    @tf.function
    def fn(t):
        return model(t, training=False)

    out = {}
    for name, call in (("predict", lambda: model.predict(x, verbose=0)), ("tf_function", lambda: fn(x).numpy())):
        call()
        times = []
        for _ in range(repeats):
            tic = time.perf_counter()
            call()
            times.append((time.perf_counter() - tic) * 1000)
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    from tlpipe.components.train import core
    from tlpipe.components.train.params import MONITORS, TrainParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (42, 43, ...) to average")
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs, help="frozen and scratch epochs")
    parser.add_argument("--finetune-epochs", type=int, default=TrainParams.finetune_epochs)
    parser.add_argument("--unfreeze-layers", type=int, default=TrainParams.unfreeze_layers)
    parser.add_argument("--finetune-learning-rate", type=float, default=TrainParams.finetune_learning_rate)
    parser.add_argument("--feature-cache", default="on", help="frozen stage in the accuracy runs")
    parser.add_argument("--finetune-augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--patience", type=int, default=TrainParams.early_stopping_patience)
    parser.add_argument("--monitor", default=TrainParams.early_stopping_monitor, choices=MONITORS,
                        help="early_stopping_monitor of every stage")
    parser.add_argument("--batch-size", type=int, default=TrainParams.batch_size)
    parser.add_argument("--max-per-video", type=int, default=None, help="subsample frames (smaller, faster)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--skip-scratch", action="store_true", help="drop scratch from --stages")
    parser.add_argument("--skip-speed", action="store_true", help="no speed section (it trains extra models)")
    parser.add_argument("--latency-repeats", type=int, default=50)
    parser.add_argument("--name", default="train")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s and not (args.skip_scratch and s == "scratch")]
    if not stages or set(stages) - set(STAGES):
        parser.error(f"--stages: a comma-separated subset of {','.join(STAGES)}, got {args.stages!r}")
    if "finetune" in stages and "frozen" not in stages:
        parser.error("--stages: finetune starts from the frozen model, so it needs frozen too")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    if not FISH_DIR.is_dir() or not WEIGHTS.is_file():
        raise SystemExit(f"needs {FISH_DIR} and {WEIGHTS} (../shared beside the repository)")

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        base = dict(batch_size=args.batch_size, early_stopping_patience=args.patience,
                    early_stopping_monitor=args.monitor, backbone="MobileNetV2", alpha=0.35)
        runs: dict[str, list[dict]] = defaultdict(list)
        splits, split_seconds = {}, {}
        for seed in range(42, 42 + args.seeds):  # each seed: its own video split and its own training seed
            tic = time.perf_counter()
            out = work / f"seed{seed}"
            ex = write_fish_examples(FISH_DIR, out / "examples", args.image_size, max_per_video=args.max_per_video,
                                     split_salt=str(seed))
            splits[seed] = json.loads((ex / "schema.json").read_text())["num_examples"]
            results = []
            if "frozen" in stages:
                results.append(core.train_frozen(ex, out / "frozen", TrainParams(
                    **base, seed=seed, epochs=args.epochs, weights=str(WEIGHTS), feature_cache=args.feature_cache),
                    track=False))
            if "finetune" in stages:
                results.append(core.finetune(ex, out / "frozen", out / "finetune", TrainParams(
                    **base, seed=seed, finetune_epochs=args.finetune_epochs,
                    finetune_learning_rate=args.finetune_learning_rate, unfreeze_layers=args.unfreeze_layers,
                    augment=args.finetune_augment), track=False))
            if "scratch" in stages:
                results.append(core.train_scratch(ex, out / "scratch", TrainParams(
                    **base, seed=seed, epochs=args.epochs), track=False))
            for result in results:
                runs[result.stage].append({"seed": seed, "seconds": result.seconds, "val": result.val_accuracy,
                                           "test": test_accuracy(Path(result.out_dir), ex),
                                           "epochs": result.epochs_run, "best_epoch": result.best_epoch})
            runs["majority"].append({"seed": seed, "test": majority_accuracy(ex)})
            split_seconds[seed] = time.perf_counter() - tic
            logging.info("split %d: test %s in %.0f s", seed, {k: round(v[-1]["test"], 3) for k, v in runs.items()},
                         split_seconds[seed])
        rows = []
        for stage, results in runs.items():  # majority last: the table's columns are the first row's
            tests = [r["test"] for r in results]
            mean, low, high = interval(tests)
            row = {"stage": stage, "test_acc_mean": mean, "ci95_low": low, "ci95_high": high,
                   "test_acc_min": min(tests), "test_acc_max": max(tests)}
            if stage in ORIGINAL:
                orig_acc, orig_s = ORIGINAL[stage]
                row.update(val_acc_mean=statistics.mean(r["val"] for r in results),
                           wall_s_mean=statistics.mean(r["seconds"] for r in results),
                           epochs_run="/".join(str(r["epochs"]) for r in results),
                           original_test_acc=orig_acc, original_wall_s=orig_s if orig_s else "-")
            rows.append({**row, "per_split": " ".join(f"{t:.3f}" for t in tests)})
        print_table(rows)
        print(f"wall time per split: mean {statistics.mean(split_seconds.values()):.0f} s "
              f"({' '.join(f'{s:.0f}' for s in split_seconds.values())})")
        speed, lat = ([], None) if args.skip_speed else speed_section(work, base, args)
        write_json(args.name, rows, speed=speed, latency_ms=lat, settings=vars(args),
                   num_examples_per_seed=splits, split_seconds=split_seconds, per_seed=runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def speed_section(work: Path, base: dict, args) -> tuple[list[dict], dict]:
    """On seed 42's split: frozen-stage time and images/s per feature_cache, fine-tune images/s, latency."""
    from tlpipe.components.train import core
    from tlpipe.components.train.params import TrainParams

    ex = work / "seed42" / "examples"
    speed = []
    for cache in ("off", "on", "augmented:4"):
        result = core.train_frozen(ex, work / f"cache-{cache.replace(':', '-')}", TrainParams(
            **{**base, "early_stopping_patience": 0}, seed=42, epochs=args.epochs, weights=str(WEIGHTS),
            feature_cache=cache), track=False)
        ips = [e["images_per_second"] for e in json_history(Path(result.out_dir))]
        speed.append({"run": f"frozen feature_cache={cache}", "wall_s": result.seconds,
                      "img_s_min": min(ips), "img_s_max": max(ips), "val_acc": result.val_accuracy})
    ft = core.finetune(ex, work / "cache-off", work / "ft-speed", TrainParams(
        **{**base, "early_stopping_patience": 0}, seed=42, finetune_epochs=max(2, args.finetune_epochs // 2),
        finetune_learning_rate=args.finetune_learning_rate, unfreeze_layers=args.unfreeze_layers), track=False)
    ips = [e["images_per_second"] for e in json_history(Path(ft.out_dir))[1:]] or [0.0]
    speed.append({"run": f"finetune last {args.unfreeze_layers} layers (epochs after the first)",
                  "wall_s": ft.seconds, "img_s_min": min(ips), "img_s_max": max(ips), "val_acc": ft.val_accuracy})
    lat = latency_ms(work / "cache-off", args.image_size, args.latency_repeats)
    print_table(speed)
    print(f"single-image latency @{args.image_size}px: model.predict {lat['predict']:.1f} ms, "
          f"tf.function {lat['tf_function']:.1f} ms")
    return speed, lat


def json_history(model_dir: Path) -> list[dict]:
    from tlpipe.components.common import model_artifact

    return model_artifact.read_history(model_dir)["epochs"]


if __name__ == "__main__":
    main()
