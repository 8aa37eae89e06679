"""The `manifest` artifact (docs/DESIGN.md §2): its one owner. Ingest writes it; preprocess and register read it.

A folder holding `manifest.parquet` (one row per accepted image, columns `MANIFEST_SCHEMA`), `classes.json`
(the class index), `ingest_report.json` (counts and every rejected object) and `ingest_report.html` (the same for
a person, with thumbnails of merged near-duplicates). pyarrow is imported lazily, so
the images without it (train) can still use the class index and the hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

from tlpipe.components.common.examples import SPLITS
from tlpipe.components.common.hashing import sha256_file

MANIFEST_FILE = "manifest.parquet"
CLASSES_FILE = "classes.json"
REPORT_FILE = "ingest_report.json"
REPORT_HTML_FILE = "ingest_report.html"  # the same report for a person: counts, group sizes, merged pairs' thumbnails
# (name, pyarrow type name) of every column, in order
COLUMNS = (("uri", "string"), ("label", "string"), ("label_index", "int32"), ("split", "string"),
           ("sha256", "string"), ("phash", "string"), ("group", "string"), ("bytes", "int64"),
           ("width", "int32"), ("height", "int32"), ("format", "string"))
REQUIRED_COLUMNS = ("uri", "label", "label_index", "split", "sha256")  # what the examples are made from

PathLike = str | os.PathLike


class ManifestError(ValueError):
    """A `manifest` artifact that breaks its contract (missing columns, unknown splits, labels off the index)."""


def class_index(classes: list[str]) -> dict:
    """The class index document (`classes.json`, and `class_indices.json` of a model): names in index order."""
    return {"classes": list(classes), "class_to_index": {c: i for i, c in enumerate(classes)}}


def schema():
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in COLUMNS])


def _join(base: str, name: str) -> str:
    return f"{str(base).rstrip('/')}/{name}"


def _write_json(path: Path, doc: dict) -> None:
    """Atomically (a temporary name, then rename); non-ASCII class names stay readable."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    tmp.replace(path)


def clear(manifest_dir: PathLike) -> None:
    """Remove the artifact's files (and leftover temporary ones): a writer calls it before any work, so that a run
    that fails at any point never leaves an earlier run's files looking current."""
    for name in (MANIFEST_FILE, CLASSES_FILE, REPORT_FILE, REPORT_HTML_FILE):
        for path in (Path(manifest_dir, name), Path(manifest_dir, f".{name}.tmp")):
            path.unlink(missing_ok=True)


def write_report(manifest_dir: PathLike, report: dict) -> None:
    Path(manifest_dir).mkdir(parents=True, exist_ok=True)
    _write_json(Path(manifest_dir, REPORT_FILE), report)


def write_report_html(manifest_dir: PathLike, html: str) -> None:
    """Atomically, like the JSON report."""
    path = Path(manifest_dir, REPORT_HTML_FILE)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)


def write(manifest_dir: PathLike, columns: dict[str, list], classes: list[str]) -> str:
    """Write classes.json, then manifest.parquet (each atomically; the manifest last, so that its presence means
    the artifact is complete); returns the sha256 of manifest.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest_dir = Path(manifest_dir)
    manifest_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pydict(columns, schema=schema())
    _write_json(manifest_dir / CLASSES_FILE, class_index(classes))
    tmp = manifest_dir / f".{MANIFEST_FILE}.tmp"
    pq.write_table(table, tmp)
    tmp.replace(manifest_dir / MANIFEST_FILE)
    return sha256_file(manifest_dir / MANIFEST_FILE)


def read(manifest: str, read_bytes: Callable[[str], bytes] | None = None):
    """(rows as a pandas DataFrame of REQUIRED_COLUMNS, class names, sha256 of manifest.parquet), validated.

    `manifest` is a folder path, or any URI that `read_bytes` can read (preprocess passes its s3:// reader).
    """
    import pyarrow.parquet as pq

    read_bytes = read_bytes or (lambda path: Path(path).read_bytes())
    where = _join(manifest, MANIFEST_FILE)
    raw = read_bytes(where)
    table = pq.read_table(io.BytesIO(raw))
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ManifestError(f"{where} lacks columns {missing} (docs/DESIGN.md §2)")
    df = table.select(list(REQUIRED_COLUMNS)).to_pandas()
    classes = list(json.loads(read_bytes(_join(manifest, CLASSES_FILE)))["classes"])
    if df.empty:
        raise ManifestError(f"{where} has no rows")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"manifest has unknown splits {bad_split}; expected {SPLITS}")
    expected = df["label"].map({name: i for i, name in enumerate(classes)})
    mismatch = df[expected.isna() | (expected != df["label_index"])]
    if not mismatch.empty:
        row = mismatch.iloc[0]
        raise ManifestError(f"{len(mismatch)} manifest rows disagree with {CLASSES_FILE}, e.g. {row['uri']}: "
                            f"label {row['label']!r} with label_index {row['label_index']}")
    if df["uri"].duplicated().any():
        raise ManifestError(f"manifest lists {int(df['uri'].duplicated().sum())} URIs twice, "
                            f"e.g. {df.loc[df['uri'].duplicated(), 'uri'].iloc[0]}")
    return df.astype({"label_index": "int64"}), classes, hashlib.sha256(raw).hexdigest()


def content_hash(manifest_dir: PathLike) -> str:
    """sha256 of manifest.parquet: what a registered model version records as its data set."""
    path = Path(manifest_dir, MANIFEST_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {manifest_dir} is not a `manifest` artifact "
                                f"(docs/DESIGN.md §2)")
    return sha256_file(path)
