"""Fixtures of the register tests: a manifest (the trained model comes from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def manifest_dir(tmp_path_factory, session_examples) -> Path:
    """A small `manifest` artifact (docs/DESIGN.md §2) describing the synthetic examples."""
    import json

    import pandas as pd

    from tlpipe.components.common.examples import read_schema
    from tlpipe.components.common.manifest import CLASSES_FILE, MANIFEST_FILE

    folder = tmp_path_factory.mktemp("manifest")
    classes = read_schema(session_examples)["classes"]
    rows = [{"uri": f"s3://tlpipe/fish/{c}/img_{i}.jpg", "label": c, "label_index": k, "split": s,
             "sha256": f"{k}{i}{s}", "phash": "0" * 16, "group": f"{c}-{i}", "bytes": 1000, "width": 32,
             "height": 32, "format": "JPEG"} for k, c in enumerate(classes) for i in range(3)
            for s in ("train", "val", "test")]
    pd.DataFrame(rows).to_parquet(folder / MANIFEST_FILE)
    (folder / CLASSES_FILE).write_text(json.dumps({"classes": classes,
                                                     "class_to_index": {c: i for i, c in enumerate(classes)}}))
    return folder
