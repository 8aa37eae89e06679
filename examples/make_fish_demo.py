"""Rebuild examples/fish-egu2017-demo/images/ from the full fish-egu2017 set (how the shipped demo subset was made).

Keeps at most FRAMES_PER_VIDEO frames of each (class, video), evenly spaced, downsized so the longest side
is MAX_SIDE px and re-encoded as JPEG. Usage: python examples/make_fish_demo.py ../shared/data/fish-egu2017
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image

FRAMES_PER_VIDEO = 6
MAX_SIDE = 160
VIDEO_ID = re.compile(r"^(\d{8}_\d{6})_")
DEMO = Path(__file__).resolve().parent / "fish-egu2017-demo"
OUT = DEMO / "images"


def main(source: Path) -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    kept = 0
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        by_video: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(class_dir.glob("*.png")):
            by_video[VIDEO_ID.match(path.name).group(1)].append(path)
        for frames in by_video.values():
            step = max(1, len(frames) / FRAMES_PER_VIDEO)
            for path in [frames[int(i * step)] for i in range(min(FRAMES_PER_VIDEO, len(frames)))]:
                img = Image.open(path).convert("RGB")
                img.thumbnail((MAX_SIDE, MAX_SIDE))
                target = OUT / class_dir.name / (path.stem + ".jpg")
                target.parent.mkdir(parents=True, exist_ok=True)
                img.save(target, "JPEG", quality=85)
                kept += 1
    shutil.copy(source / "LICENSE_MIT_kratzert.txt", DEMO / "LICENSE_MIT_kratzert.txt")
    print(f"wrote {kept} images to {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
