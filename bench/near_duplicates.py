"""Near-duplicate detection on real photos: how many transformed copies each method misses, how many different
videos it merges, its time per image and its search time at 100 000 images.

fish-egu2017 (../shared/data/fish-egu2017): 300 frames drawn with a fixed seed, each copied nine ways; every copy
row runs the method's own search over the 1 053 originals plus the 300 copies (as ingest does) and counts the
copies not paired with their original. Cross-video merges: pairs among the originals whose video ids differ (the
file name's part before `_fish`/`_nofish`).

Search at 100 000 images: no real set that large is here, so the pictures are random off-centre crops (55-90 % of
each side, mirrored or not) of the real frames, with --planted of them copies (mirrored, half size, 5 % and 10 %
crops) of others. Above descriptor.EXACT_MAX the search uses its IVF index; the exact search is out of reach at
that size, so the index's misses are counted on the planted pairs: those whose exact score reaches the threshold
and that the index did not return.

    .venv/bin/python -m bench.near_duplicates [--data ../shared/data/fish-egu2017] [--search-n 100000]
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


def _background(frames: list[Image.Image], k: int, rng: np.random.Generator) -> Image.Image:
    """A distinct picture from a real frame: a random off-centre crop of 55-90 % of each side, mirrored or not."""
    im = frames[k % len(frames)]
    w, h = im.size
    s = rng.uniform(0.55, 0.9)
    x, y = rng.uniform(0, w * (1 - s)), rng.uniform(0, h * (1 - s))
    crop = im.crop((round(x), round(y), round(x + w * s), round(y + h * s)))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


PLANTED = {  # copies planted among the synthetic images of the search timing
    "mirrored": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "half size": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
    "5 % crop": lambda im: _crop(im, 0.05),
    "10 % crop": lambda im: _crop(im, 0.10),
}


def search_at(files: list[Path], n: int, planted: int) -> dict:
    """The dct search over `n` descriptors of real-looking pictures (random crops of the real frames, decoded at
    320 px) of which `planted` are copies (PLANTED, in turn) of others: its time, and how many of the planted
    pairs whose exact score reaches the threshold it finds (the exact search cannot run at this size)."""
    frames = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            im.thumbnail((320, 320))
            frames.append(im)
    rng = np.random.default_rng(1)
    chosen = rng.choice(n - planted, planted, replace=False).tolist()  # the pictures that get a planted copy
    wanted, kept, blobs = set(chosen), {}, []
    for k in range(n - planted):  # only the chosen pictures are kept (all 100 000 would take ~6 GB)
        im = _background(frames, k, rng)
        blobs.append(descriptor.crop_descriptor(im))
        if k in wanted:
            kept[k] = im
    makers = list(PLANTED.values())
    pairs = []
    for c, i in enumerate(chosen):
        blobs.append(descriptor.crop_descriptor(makers[c % len(makers)](kept[i])))
        pairs.append((i, len(blobs) - 1))
    started, cpu = time.perf_counter(), time.process_time()
    found, _ = descriptor_pairs(blobs, DEFAULT_NEAR_DUPLICATE_SIMILARITY)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu  # CPU of all threads: less load-bound
    found = {(a, b) for a, b in found.tolist()}
    coeffs = np.frombuffer(b"".join(blobs), dtype=np.float16).reshape(n, -1, descriptor.K, descriptor.K)
    vectors = descriptor._whitened(coeffs.astype(np.float32))  # whitened by all n, as the search does

    def exact(i: int, j: int) -> float:
        flips = descriptor._flips(vectors[[i, j], 0])
        return float(max((flips[0] @ vectors[j, 0]).max(), (flips[1] @ vectors[i, 0]).max(),
                         (vectors[j, 1:] @ vectors[i, 0]).max(), (vectors[i, 1:] @ vectors[j, 0]).max()))

    expected = [p for p in pairs if exact(*p) >= DEFAULT_NEAR_DUPLICATE_SIMILARITY]
    return {"search_n": n, "search_seconds": round(seconds, 1), "search_cpu_seconds": round(cpu, 1),
            "search_pairs": len(found), "planted_pairs": planted, "planted_pairs_at_threshold": len(expected),
            "planted_pairs_found": sum(p in found for p in expected)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="fish-egu2017 folder (<class>/<frame>.png)")
    parser.add_argument("--frames", type=int, default=300, help="frames copied per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-n", type=int, default=100_000,
                        help="images of the search timing (random crops of the frames, with planted copies)")
    parser.add_argument("--planted", type=int, default=2000, help="planted copies among them")
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
    search = search_at(files, args.search_n, args.planted)
    method = "exact" if args.search_n <= descriptor.EXACT_MAX else "IVF index"
    print(f"dct search ({method}): {search['search_seconds']}s ({search['search_cpu_seconds']}s CPU) at "
          f"{args.search_n} images; planted copies found {search['planted_pairs_found']} of the "
          f"{search['planted_pairs_at_threshold']} (of {args.planted}) whose exact score reaches "
          f"{DEFAULT_NEAR_DUPLICATE_SIMILARITY}; {search['search_pairs']} pairs in all")
    write_json("near_duplicates", rows, frames=len(sample), seed=args.seed, images=n,
               phash_distance=DEFAULT_NEAR_DUPLICATE_DISTANCE, dct_similarity=DEFAULT_NEAR_DUPLICATE_SIMILARITY,
               inspect_ms_per_image=round(inspect_ms, 2), dct_descriptor_ms_per_image=round(dct_ms, 2),
               search_method=method, **search)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
