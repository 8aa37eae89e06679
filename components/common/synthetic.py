"""Deterministic, class-separable synthetic images: for tests, benchmarks and smoke runs on a new cluster.

Class k draws a filled shape of its own hue at a random place and size on a noisy background, so a
classifier can learn it well above chance while the images are not trivially identical.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def class_image(class_index: int, num_classes: int, seed: int, size: int = 64) -> Image.Image:
    """One RGB image of class `class_index`; the same arguments always give the same pixels."""
    rng = np.random.default_rng([class_index, seed])
    background = rng.integers(60, 196, size=(size, size, 1)) + rng.integers(-25, 26, size=(size, size, 3))
    img = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), "RGB")
    hue = class_index / max(num_classes, 1)
    rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, rng.uniform(0.75, 1.0)))
    extent = int(size * rng.uniform(0.45, 0.8))
    x0, y0 = (int(v) for v in rng.integers(0, size - extent + 1, size=2))
    box = (x0, y0, x0 + extent, y0 + extent)
    draw = ImageDraw.Draw(img)
    if class_index % 2:
        draw.ellipse(box, fill=rgb)
    else:
        draw.rectangle(box, fill=rgb)
    return img


def write_dataset(
    folder: str | Path,
    num_classes: int = 3,
    per_class: int = 10,
    size: int = 64,
    image_format: str = "JPEG",
    seed: int = 0,
) -> list[Path]:
    """Write a class-folder dataset (`folder/class_NN/img_NNNNN.<ext>`); returns the files written."""
    ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif", "WEBP": "webp"}[image_format.upper()]
    paths = []
    for k in range(num_classes):
        class_dir = Path(folder) / f"class_{k:02d}"
        class_dir.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = class_dir / f"img_{i:05d}.{ext}"
            class_image(k, num_classes, seed * 1_000_003 + i, size).save(path, format=image_format.upper())
            paths.append(path)
    return paths


def write_examples(
    folder: str | Path,
    num_classes: int = 3,
    per_split: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a synthetic `examples` artifact (docs/DESIGN.md §3): JPEG TFRecord shards per split + schema.json."""
    import hashlib
    import io

    from tlpipe.components.common import examples

    per_split = per_split or {"train": 30, "val": 9, "test": 9}
    folder = Path(folder)
    counts = {}
    for s, (split, n) in enumerate(per_split.items()):
        records = []
        for i in range(n):
            label = i % num_classes
            buf = io.BytesIO()
            class_image(label, num_classes, seed * 1_000_003 + s * 100_000 + i, size).save(buf, "JPEG", quality=90)
            data = buf.getvalue()
            records.append(examples.encode_example(data, label, hashlib.sha256(data).hexdigest().encode()))
        counts[split] = examples.write_tfrecord(folder / split / examples.shard_name(0), records)
    examples.write_schema(folder, image_size=size, channels=3, num_examples=counts, resize_mode="squash",
                          jpeg_quality=90,
                          classes=[f"class_{k:02d}" for k in range(num_classes)],
                          num_shards={split: 1 for split in per_split})
    return folder
