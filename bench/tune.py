"""Recipe-search benchmark on the real fish photos (../shared/data/fish-egu2017) over many video splits.

The backbone features of every image are computed once, keyed by the image's sha256 (clean, mirrored and K
augmented views); each split (ingest's `split_groups` over the videos, salt = split number) then reports test
accuracy and wall time of:
- `majority`: always the most frequent class of the split's train+val images (the floor);
- `probe`: logistic regression on the clean train+val features (the frozen-feature ceiling of the issue);
  `probe_train` the same on the train images alone (what the pipeline's frozen stage trains on: val picks);
- `design`: the design's frozen stage on the cached features (head 512/256, dropout 0.5/0.3, Adam 1e-3,
  10 epochs, augmented:K views, best epoch by val loss (`--monitor`), patience 3);
- `tune_frozen`: the tune step's search (tune.run_worker on the split's train+val features, grouped by video),
  then the frozen stage trained with its choice;
- `tune_all` (only when `--methods` names it: it fine-tunes, on the images): the real tune step with tune=all
  on the split's examples (and a manifest grouping by video), then the real train_frozen and finetune stages
  with its choices; the row is the fine-tuned model's test accuracy, `tune_all_frozen` the frozen model's;
- `scratch` (only when `--methods` names it): the real train_scratch stage at the design's settings (10 epochs,
  augmentation, Adam 1e-3) on the split's examples (bench.train `--stages scratch` measures it too).
All of them in one command: `--methods majority,probe,probe_train,design,tune_frozen,tune_all,scratch`.

    .venv/bin/python -m bench.tune --splits 12                      # MobileNetV2-0.35, 160 px, the shared weights
    .venv/bin/python -m bench.tune --splits 12 --alpha 1.0 --image-size 224 \
        --weights mobilenet_v2_imagenet.keras          # the original design's backbone (tlpipe weights import)
    .venv/bin/python -m bench.tune --splits 3 --trials 10 --image-size 96
    .venv/bin/python -m bench.tune --splits 12 --trials 10 --methods majority,probe,tune_all --finetune-epochs 5 \
        --finetune-trials 3 --space '{"feature_cache": {"choices": ["on", "flips"]}}'    # tune=all, ~6 min a split
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import interval, print_table, write_json
from bench.train import FISH_DIR, WEIGHTS, test_accuracy, video_id, write_fish_examples

DESIGN = dict(learning_rate=1e-3, dense_units=(512, 256), dropouts=(0.5, 0.3), epochs=10, feature_cache="augmented:4",
              augment=True)
METHODS = ("majority", "probe", "probe_train", "design", "tune_frozen", "tune_all", "scratch")


def load_images(image_size: int) -> tuple[list[str], dict[str, dict]]:
    """Every fish-egu2017 frame processed as preprocess does: {sha256: {label, video, jpeg}} and the classes."""
    import hashlib

    from tlpipe.components.common import images
    from tlpipe.components.preprocess.params import PreprocessParams

    classes = sorted(p.name for p in FISH_DIR.iterdir() if p.is_dir())
    found = {}
    for label, name in enumerate(classes):
        for path in sorted((FISH_DIR / name).glob("*.png")):
            data = images.process(path.read_bytes(), image_size, PreprocessParams.resize_mode,
                                  PreprocessParams.jpeg_quality)
            found[hashlib.sha256(data).hexdigest()] = {"label": label, "video": video_id(path), "jpeg": data}
    return classes, found


def features_by_hash(found: dict[str, dict], classes: list[str], image_size: int, views: int, params) -> dict:
    """{"clean"|"flip": [N, D], "design": [K, N, D], "sha": [...]}: each image's features, computed once."""
    import tensorflow as tf

    from tlpipe.components.train import data, features, trainer

    shas = sorted(found)
    decoded = tf.data.Dataset.from_tensor_slices([found[s]["jpeg"] for s in shas]).map(
        lambda b: (tf.cast(tf.reshape(tf.io.decode_jpeg(b, channels=3), (image_size, image_size, 3)), tf.float32), 0))
    classifier = trainer.stage_classifier("train_frozen", params, len(classes), image_size)
    design = data.augmentation(params.seed)
    run = {name: features.feature_function(classifier, augment)
           for name, augment in (("clean", None), ("flip", features.flip), ("design", design))}
    out = {"sha": shas, "clean": features.extract(run["clean"], decoded, 64)[0],
           "flip": features.extract(run["flip"], decoded, 64)[0],
           "design": np.stack([features.extract(run["design"], decoded, 64)[0] for _ in range(views)])}
    return out


def fit_head(recipe, views: np.ndarray, y: np.ndarray, val: tuple, test: tuple) -> float:
    """The frozen stage on cached features (epoch e: view e mod V, best epoch by the recipe's
    early_stopping_monitor, stopped after early_stopping_patience epochs without a gain): its test accuracy."""
    import keras

    from tlpipe.components.train import trainer
    from tlpipe.components.train.model import build_head
    from tlpipe.components.train.params import is_better

    keras.utils.set_random_seed(recipe.seed)
    classes = int(max(y.max(), val[1].max(), test[1].max())) + 1
    head = build_head(views.shape[-1], classes, recipe.dense_units, recipe.dropouts, recipe.seed)
    optimizer = (keras.optimizers.AdamW(recipe.learning_rate, weight_decay=recipe.weight_decay) if recipe.weight_decay
                 else keras.optimizers.Adam(recipe.learning_rate))
    head.compile(optimizer=optimizer, loss=trainer.smoothed_loss(classes, recipe.label_smoothing), metrics=["accuracy"])
    best, weights, wait = None, head.get_weights(), 0
    for epoch in range(recipe.epochs):
        order = np.random.default_rng(recipe.seed * 1000 + epoch).permutation(len(y))
        head.fit(views[epoch % len(views)][order], y[order], batch_size=recipe.batch_size, verbose=0)
        scores = head.evaluate(*val, verbose=0, return_dict=True)
        row = {"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
        if is_better(row, best, recipe.early_stopping_monitor):
            best, weights, wait = row, head.get_weights(), 0
        else:
            wait += 1
            if 0 < recipe.early_stopping_patience <= wait:
                break
    head.set_weights(weights)
    return float(head.evaluate(*test, verbose=0, return_dict=True)["accuracy"])


def write_video_manifest(found: dict[str, dict], classes: list[str], dst: Path) -> Path:
    """A `manifest` artifact whose only use here is the images' groups (sha256 -> video), as ingest writes it."""
    from tlpipe.components.common import manifest

    rows = [{"uri": f"fish/{sha}", "label": classes[info["label"]], "label_index": info["label"], "split": "",
             "sha256": sha, "phash": "", "group": info["video"], "bytes": len(info["jpeg"]), "width": 0,
             "height": 0, "format": "JPEG"} for sha, info in sorted(found.items())]
    manifest.write(dst, {name: [r[name] for r in rows] for name, _ in manifest.COLUMNS}, classes)
    return dst


def tune_all(ex: Path, base, seed: int, args, manifest_dir: Path, work: Path) -> tuple[float, float, dict]:
    """The pipeline's tune=all path on one split: (finetuned test accuracy, frozen test accuracy, tune's choice)."""
    from tlpipe.components.train import core, tune
    from tlpipe.components.train.params import TuneParams

    train = replace(base, seed=seed, finetune_epochs=args.finetune_epochs)
    params = TuneParams(tune="all", tune_trials=args.trials, tune_timeout_s=0, tune_space=args.space,
                        tune_finetune_trials=args.finetune_trials, tune_finetune_timeout_s=0)
    best = tune.tune(ex, work / "tuned", params, train, manifest_dir=manifest_dir, track=False)
    core.train_frozen(ex, work / "frozen", train.tuned(best["train_params"]), track=False)
    core.finetune(ex, work / "frozen", work / "finetune", train.tuned(best["finetune_params"]), track=False)
    return test_accuracy(work / "finetune", ex), test_accuracy(work / "frozen", ex), best


def views_of(cache: dict, mode: str, idx: np.ndarray) -> np.ndarray:
    if mode == "on":
        return cache["clean"][idx][None]
    if mode == "flips":
        return np.stack([cache["clean"][idx], cache["flip"][idx]])
    return cache["design"][: int(mode.split(":")[1]), idx]


def main(argv: list[str] | None = None) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tlpipe.components.ingest.split import split_groups
    from tlpipe.components.train import tune
    from tlpipe.components.train.params import MONITORS, TrainParams, TuneParams

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("--trials", type=int, default=TuneParams.tune_trials)
    parser.add_argument("--views", type=int, default=4, help="augmented views per image (augmented:K)")
    parser.add_argument("--methods", default="majority,probe,probe_train,design,tune_frozen",
                        help=f"comma-separated subset of {','.join(METHODS)} (tune_all fine-tunes: slow)")
    parser.add_argument("--space", default=TuneParams.tune_space, help="tune_space JSON of the searches")
    parser.add_argument("--monitor", default=TrainParams.early_stopping_monitor, choices=MONITORS,
                        help="early_stopping_monitor of the trained stages (not of the search's trials)")
    parser.add_argument("--finetune-trials", type=int, default=TuneParams.tune_finetune_trials,
                        help="tune_all: trials of the fine-tune search")
    parser.add_argument("--finetune-epochs", type=int, default=TrainParams.finetune_epochs,
                        help="tune_all: epochs of a fine-tune trial (and of the stage) at most")
    parser.add_argument("--name", default="tune")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    if not methods or set(methods) - set(METHODS):
        parser.error(f"--methods: a comma-separated subset of {','.join(METHODS)}, got {args.methods!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")

    base = TrainParams(alpha=args.alpha, weights=args.weights, batch_size=32, early_stopping_patience=3,
                       early_stopping_monitor=args.monitor)
    tic = time.perf_counter()
    classes, found = load_images(args.image_size)
    cache = features_by_hash(found, classes, args.image_size, args.views, base)
    extract_s = time.perf_counter() - tic
    shas = cache["sha"]
    labels = np.array([found[s]["label"] for s in shas])
    videos = defaultdict(list)
    for i, s in enumerate(shas):
        videos[found[s]["video"]].append(i)
    runs, splits = defaultdict(list), []
    work = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    manifest_dir = write_video_manifest(found, classes, work / "manifest") if "tune_all" in methods else None
    for split in range(args.splits):
        assignment = split_groups({v: [classes[labels[i]] for i in idx] for v, idx in videos.items()},
                                  {"train": 0.7, "val": 0.15, "test": 0.15}, salt=str(42 + split))
        part = {name: np.array(sorted(i for v, idx in videos.items() if assignment[v] == name for i in idx))
                for name in ("train", "val", "test")}
        val, test = (cache["clean"][part["val"]], labels[part["val"]]), (cache["clean"][part["test"]], labels[part["test"]])
        pool = np.concatenate([part["train"], part["val"]])
        majority = int(np.bincount(labels[pool]).argmax())
        seed = 42 + split
        info = {"images": {name: len(idx) for name, idx in part.items()},
                "test_videos": sum(a == "test" for a in assignment.values()), "majority_class": classes[majority],
                "test_largest_class_share": float(np.bincount(labels[part["test"]]).max() / len(part["test"]))}
        if "majority" in methods:
            runs["majority"].append((float(np.mean(labels[part["test"]] == majority)), 0.0))
        for method, fitted in (("probe", pool), ("probe_train", part["train"])):
            if method in methods:
                t = time.perf_counter()
                probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(
                    cache["clean"][fitted], labels[fitted])
                runs[method].append((float(probe.score(*test)), time.perf_counter() - t))
        if "design" in methods:
            t = time.perf_counter()
            design = replace(base, seed=seed, **DESIGN)
            runs["design"].append((fit_head(design, views_of(cache, design.feature_cache, part["train"]),
                                            labels[part["train"]], val, test), time.perf_counter() - t))
        out = work / f"split{split}"
        out.mkdir()
        if "tune_frozen" in methods:
            t = time.perf_counter()
            params = TuneParams(tune_trials=args.trials, tune_timeout_s=0, tune_space=args.space)
            space = params.space()
            np.savez(out / tune.FEATURES_FILE, clean=cache["clean"][pool], flip=cache["flip"][pool],
                     design=cache["design"][:, pool], labels=labels[pool])
            settings = tune.worker_settings(out, params, replace(base, seed=seed), space,
                                            [found[shas[i]]["video"] for i in pool])
            (out / tune.SETTINGS_FILE).write_text(json.dumps(settings))
            chosen = tune.summarise(tune.run_worker(out, 0), replace(base, seed=seed), space, out)
            recipe = replace(base, seed=seed).tuned(chosen["train_params"])
            runs["tune_frozen"].append((fit_head(recipe, views_of(cache, recipe.feature_cache, part["train"]),
                                                 labels[part["train"]], val, test), time.perf_counter() - t))
            info.update(tune_choice=chosen["train_params"], tune_cv_accuracy=chosen["cv_accuracy"])
        if {"tune_all", "scratch"} & set(methods):  # these train on the images: the split as an examples artifact
            ex = write_fish_examples(FISH_DIR, out / "examples", args.image_size, split_salt=str(seed))
            written = json.loads((ex / "schema.json").read_text())["num_examples"]
            if written != info["images"]:  # the same video split as the other rows
                raise RuntimeError(f"split {split}: the examples hold {written}, the other rows {info['images']}")
        if "scratch" in methods:
            from tlpipe.components.train import core

            t = time.perf_counter()
            core.train_scratch(ex, out / "scratch", replace(base, seed=seed), track=False)
            runs["scratch"].append((test_accuracy(out / "scratch", ex), time.perf_counter() - t))
        if "tune_all" in methods:
            t = time.perf_counter()
            finetuned, frozen, best = tune_all(ex, base, seed, args, manifest_dir, out)
            seconds = time.perf_counter() - t
            runs["tune_all"].append((finetuned, seconds))
            runs["tune_all_frozen"].append((frozen, seconds))
            info.update(tune_all_line=best["line"], tune_all_finetune=best["finetune"])
        splits.append(info)
        logging.info("split %d: %s", split, {k: round(v[-1][0], 3) for k, v in runs.items()})
    rows = []
    for method, results in runs.items():
        mean, low, high = interval([acc for acc, _ in results])
        rows.append({"method": method, "test_acc_mean": mean, "ci95_low": low, "ci95_high": high,
                     "min": min(a for a, _ in results), "max": max(a for a, _ in results),
                     "wall_s_mean": statistics.mean(s for _, s in results),
                     "wall_s_total": sum(s for _, s in results),
                     "per_split": " ".join(f"{a:.3f}" for a, _ in results)})
    print_table(rows)
    print(f"features of {len(shas)} images ({1 + 1 + args.views} views) computed once in {extract_s:.0f}s")
    write_json(args.name, rows, settings=vars(args), extract_seconds=extract_s,
               per_split={k: [{"test_acc": a, "wall_s": s} for a, s in v] for k, v in runs.items()}, splits=splits)


if __name__ == "__main__":
    main()
