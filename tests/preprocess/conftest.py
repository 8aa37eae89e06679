"""Fixtures of the preprocess tests: one local[2] SparkSession, and manifests of real objects in the real S3."""

from __future__ import annotations

import hashlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlpipe.components.common import manifest
from tlpipe.components.common.synthetic import class_image

CLASSES = ["angelfish", "bass", "carp"]
SPLIT_CYCLE = ["train"] * 7 + ["val"] * 2 + ["test"]


def encode(img: Image.Image, kind: int) -> tuple[bytes, str]:
    """Encode one RGB image in one of 8 awkward forms (mode/format combinations); returns (bytes, format)."""
    out = io.BytesIO()
    if kind == 0:
        img.save(out, "JPEG", quality=90)
    elif kind == 1:
        img.convert("L").save(out, "PNG")
    elif kind == 2:
        img.convert("P", palette=Image.Palette.ADAPTIVE).save(out, "GIF")
    elif kind == 3:
        rgba = img.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(out, "PNG")
    elif kind == 4:
        img.convert("CMYK").save(out, "JPEG", quality=90)
    elif kind == 5:  # 16-bit greyscale PNG
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(grey).save(out, "PNG")
    elif kind == 6:  # stored rotated, with the EXIF orientation that turns it upright
        exif = Image.Exif()
        exif[0x0112] = 6
        img.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", quality=90, exif=exif)
    else:
        img.save(out, "WEBP", quality=90)
    return out.getvalue(), ["JPEG", "PNG", "GIF", "PNG", "JPEG", "PNG", "JPEG", "WEBP"][kind]


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    """Write the manifest artifact (docs/DESIGN.md §2) of `rows` through its owner, common.manifest."""
    columns = {name: [r[name] for r in rows] for name in ("uri", "label", "label_index", "split", "sha256", "bytes",
                                                           "width", "height", "format")}
    columns |= {"phash": ["0" * 16 for _ in rows], "group": [r["sha256"][:16] for r in rows]}
    manifest.write(folder, columns, CLASSES)
    manifest.write_report(folder, {"accepted": len(rows), "rejected": []})
    return folder


@pytest.fixture
def make_manifest(s3_client, bucket, tmp_path):
    """make_manifest(n, bad=0) -> (manifest dir, rows): n mixed images in S3 (+ `bad` undecodable objects)."""

    def make(n: int, bad: int = 0, name: str = "manifest") -> tuple[Path, list[dict]]:
        rng = np.random.default_rng(n)
        rows = []
        for i in range(n + bad):
            label_index = i % len(CLASSES)
            if i < n:
                w, h = (int(v) for v in rng.integers(20, 90, size=2))
                img = class_image(label_index, len(CLASSES), seed=i, size=max(w, h)).resize((w, h))
                data, fmt = encode(img, i % 8)
            else:  # passed ingest, fails here: a truncated JPEG and plain text
                w = h = 0
                fmt = "JPEG"
                full, _ = encode(class_image(0, 3, seed=i, size=64), 0)
                data = full[: len(full) // 3] if i % 2 else b"this is not an image at all"
            key = f"images/{CLASSES[label_index]}/img_{i:04d}.{fmt.lower()}"
            s3_client.put_object(bucket, key, io.BytesIO(data), len(data))
            rows.append({"uri": f"s3://{bucket}/{key}", "label": CLASSES[label_index], "label_index": label_index,
                         "split": SPLIT_CYCLE[i % len(SPLIT_CYCLE)], "sha256": hashlib.sha256(data).hexdigest(),
                         "bytes": len(data), "width": w, "height": h, "format": fmt})
        return write_manifest(tmp_path / name, rows), rows

    return make


@pytest.fixture(scope="session")
def spark(stack):
    """One local[2] SparkSession for the whole test session (started after the stack set the S3 env)."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter (its venv)
    session = (SparkSession.builder.master("local[2]").appName("tlpipe-preprocess-tests")
               .config("spark.driver.memory", "512m").config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "4")
               .getOrCreate())
    yield session
    session.stop()
