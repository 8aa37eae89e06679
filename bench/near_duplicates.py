"""Near-duplicate detection on real photos: how many transformed copies each method misses, how many different
videos it merges, its time per image and its search time at 100 000 images.

fish-egu2017 (../shared/data/fish-egu2017): 300 frames drawn with a fixed seed, each copied eight ways; every copy
row runs the method's own search over the 1 053 originals plus the 300 copies (as ingest does) and counts the
copies not paired with their original. Cross-video merges: pairs among the originals whose video ids differ (the
file name's part before `_fish`/`_nofish`).

    .venv/bin/python -m bench.near_duplicates [--data ../shared/data/fish-egu2017] [--search-n 20000]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import print_table, write_json
from tlpipe.components.ingest import descriptor
from tlpipe.components.ingest.descriptor import descriptor_pairs
from tlpipe.components.ingest.grouping import near_duplicate_pairs
from tlpipe.components.ingest.imaging import ImageInfo, inspect_image
from tlpipe.components.ingest.params import DEFAULT_NEAR_DUPLICATE_DISTANCE, DEFAULT_NEAR_DUPLICATE_SIMILARITY

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fish-egu2017"
VIDEO = re.compile(r"^(.+?)_(?:no)?fish\d")


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _crop(img: Image.Image, share: float) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * share), round(h * share)
    return img.crop((dx, dy, w - dx, h - dy))


COPIES: dict[str, Callable[[Image.Image], bytes]] = {
    "mirrored, JPEG q90": lambda im: _encode(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "JPEG", quality=90),
    "rotated 90°, JPEG q90": lambda im: _encode(im.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90),
    "re-encoded JPEG q75": lambda im: _encode(im, "JPEG", quality=75),
    "half size (Lanczos)": lambda im: _encode(im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS)),
    "double size (bicubic)": lambda im: _encode(im.resize((im.width * 2, im.height * 2), Image.Resampling.BICUBIC)),
    "5 % cropped off each side": lambda im: _encode(_crop(im, 0.05)),
    "7 % cropped off each side": lambda im: _encode(_crop(im, 0.07)),
    "10 % cropped off each side": lambda im: _encode(_crop(im, 0.10)),
    "20 % cropped off each side": lambda im: _encode(_crop(im, 0.20)),
}


def phash_pairs(infos: list[ImageInfo], distance: int = DEFAULT_NEAR_DUPLICATE_DISTANCE) -> set[tuple[int, int]]:
    pairs = near_duplicate_pairs([x.phash for x in infos], [x.phash_variants for x in infos], distance)
    return {(a, b) for a, b in pairs.tolist()}


def dct_pairs(infos: list[ImageInfo], similarity: float = DEFAULT_NEAR_DUPLICATE_SIMILARITY) -> set[tuple[int, int]]:
    pairs, _ = descriptor_pairs([x.descriptor for x in infos], similarity)
    return {(a, b) for a, b in pairs.tolist()}


def search_seconds(n: int) -> float:
    """Seconds of the dct search over `n` synthetic descriptors (random coefficients, a few planted copies)."""
    rng = np.random.default_rng(0)
    coeffs = rng.normal(size=(n, len(descriptor.CROP_SCALES), descriptor.K, descriptor.K)).astype(np.float16)
    blobs = [c.tobytes() for c in coeffs]
    started = time.perf_counter()
    descriptor_pairs(blobs, DEFAULT_NEAR_DUPLICATE_SIMILARITY)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="fish-egu2017 folder (<class>/<frame>.png)")
    parser.add_argument("--frames", type=int, default=300, help="frames copied per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-n", type=int, default=20_000,
                        help="synthetic images for the search timing (extrapolated as n² to 100 000)")
    args = parser.parse_args(argv)
    files = sorted(args.data.glob("*/*.png"))
    if not files:
        parser.error(f"--data {args.data}: no <class>/*.png files (fish-egu2017 lives in ../shared/data)")
    videos = [VIDEO.match(f.name).group(1) for f in files]
    originals = [f.read_bytes() for f in files]
    sample = sorted(np.random.default_rng(args.seed).choice(len(files), args.frames, replace=False).tolist())

    started = time.perf_counter()
    infos = [inspect_image(b, 10**9) for b in originals]
    inspect_ms = (time.perf_counter() - started) * 1000 / len(infos)
    decoded = []
    for b in originals:
        with Image.open(io.BytesIO(b)) as im:
            im.load()
            decoded.append(im.copy())
    started = time.perf_counter()
    for im in decoded:
        descriptor.crop_descriptor(im)
    dct_ms = (time.perf_counter() - started) * 1000 / len(decoded)

    methods = {"phash": phash_pairs, "dct": dct_pairs}
    rows = []
    n = len(infos)
    for name, make in COPIES.items():
        copies = []
        for i in sample:
            with Image.open(io.BytesIO(originals[i])) as im:
                copies.append(inspect_image(make(im.convert("RGB")), 10**9))
        row = {"copy": name}
        for method, find in methods.items():
            found = find(infos + copies)
            missed = sum((i, n + c) not in found for c, i in enumerate(sample))
            row[f"missed_{method}"] = f"{missed} / {len(sample)}"
        rows.append(row)
    for method, find in methods.items():
        found = find(infos)
        cross = sum(videos[a] != videos[b] for a, b in found)
        rows.append({"copy": f"originals: pairs across / within videos ({method})",
                     f"missed_{method}": f"{cross} / {len(found) - cross}"})
    print_table(rows, ["copy", "missed_phash", "missed_dct"])
    print(f"time per image: inspect_image (decode, sha256, phash, dct) {inspect_ms:.1f} ms, of which the dct "
          f"descriptor {dct_ms:.1f} ms (one process on this machine's {len(os.sched_getaffinity(0))} cores)")
    search_s = search_seconds(args.search_n)
    at_100k = search_s * (100_000 / args.search_n) ** 2
    print(f"dct search: {search_s:.1f}s at {args.search_n} images -> {at_100k:.0f}s at 100 000 (n²)")
    write_json("near_duplicates", rows, frames=len(sample), seed=args.seed, images=n,
               phash_distance=DEFAULT_NEAR_DUPLICATE_DISTANCE, dct_similarity=DEFAULT_NEAR_DUPLICATE_SIMILARITY,
               inspect_ms_per_image=round(inspect_ms, 2), dct_descriptor_ms_per_image=round(dct_ms, 2),
               search_n=args.search_n, search_seconds=round(search_s, 2),
               search_seconds_100k_extrapolated=round(at_100k, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
