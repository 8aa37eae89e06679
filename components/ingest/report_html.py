"""`ingest_report.html`: the ingest report for a person (counts, warnings, split group sizes, and the merged
near-duplicate pairs nearest the threshold side by side, so that the threshold can be checked on the data)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable
from html import escape

from minio import Minio
from minio.error import S3Error
from PIL import Image

from tlpipe.components.common import s3 as s3lib
from tlpipe.components.common.log import get_logger

log = get_logger("ingest")

THUMB_SIDE = 160  # px, the longer side of a thumbnail
REJECTED_SHOWN = 50

_STYLE = """body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0 20px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:middle}th{background:#f3f3f3}
.bar{background:#4a7fb5;height:12px}.warn{color:#a15c00}.cross{color:#b00020;font-weight:bold}
img{display:block;width:160px;height:auto}.key{font-family:monospace;font-size:12px;word-break:break-all}"""


def thumbnail(data: bytes) -> str:
    """A small JPEG of the image as a data: URI (JPEGs decoded at reduced scale)."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
        img = img.convert("RGB")
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails(s3: Minio, endpoint: str, uris: Iterable[str]) -> dict[str, str]:
    """{uri: data URI} of the images at `uris`, read again (one at a time); an image no longer readable is left out."""
    out = {}
    for uri in uris:
        bucket, key = s3lib.split_uri(uri)
        try:
            out[uri] = thumbnail(s3lib.read_object(s3, bucket, key, endpoint=endpoint))
        except (OSError, ValueError, S3Error) as exc:  # changed or deleted since it was checked
            log.warning("no thumbnail of %s for the report: %s", uri, exc)
    return out


def _table(head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """An HTML table; the cells are HTML already."""
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _image(uri: str, size: list[int], thumbs: dict[str, str]) -> str:
    """The thumbnail (shown at one width, whatever the image's size), the URI and the size in pixels."""
    src = thumbs.get(uri)
    picture = f'<img src="{src}" alt="{escape(uri)}">' if src else "<em>(not readable)</em>"
    return f'{picture}<div class="key">{escape(uri)}<br>{size[0]} × {size[1]} px</div>'


def render(report: dict, thumbs: dict[str, str]) -> str:
    """The page of `report` (report.build's document); `thumbs`: {uri: data URI} of the sampled pairs' images."""
    near = report["near_duplicates"]
    parts = [f"<h1>Ingest report</h1><p class=key>{escape(report['data_uri'])}</p>",
             _table(("listed", "accepted", "rejected", "bad fraction", "hidden/system ignored", "classes", "groups"),
                    [(str(report["listed_objects"]), str(report["accepted"]), str(report["rejected"]),
                      f"{report['bad_fraction']:.2%}", str(report["hidden_objects_ignored"]),
                      str(report["num_classes"]), str(report["num_groups"]))])]
    parts += [f'<p class="warn">⚠ {escape(w)}</p>' for w in report["warnings"]]
    splits = list(report["per_split"])
    parts.append("<h2>Classes per split</h2>" + _table(
        ("class", *splits, "total"),
        ([escape(c), *(str(n[s]) for s in splits), str(n["total"])] for c, n in report["per_class"].items())))

    sizes = {int(k): v for k, v in report["group_sizes"].items()}
    most = max(sizes.values(), default=1)
    parts.append("<h2>Split groups by size</h2><p>Images of one group always land in one split (same bytes, "
                 "near-duplicates, one group_pattern source).</p>" + _table(
                     ("images in the group", "groups", ""),
                     ((str(size), str(count), f'<div class="bar" style="width:{max(1, 300 * count // most)}px"></div>')
                      for size, count in sorted(sizes.items()))))

    if near["method"] == "off":
        parts.append("<h2>Near-duplicates</h2><p>Not searched (dedupe is not near).</p>")
    else:
        parts.append(f"<h2>Near-duplicates</h2><p>Method <b>{escape(near['method'])}</b>, score: "
                     f"{escape(near['score'])}, threshold <b>{near['threshold']}</b>: "
                     f"<b>{near['merged_pairs']}</b> pairs merged. Shown: the {len(near['sample'])} weakest merges "
                     f"(nearest the threshold). If these are different pictures, tighten the threshold; if copies "
                     f"you know of are missing, loosen it or name their source with group_pattern.</p>")
        rows = []
        for pair in near["sample"]:
            a, b = pair["labels"]
            classes = escape(a) if a == b else f'<span class="cross">{escape(a)} ≠ {escape(b)}</span>'
            (size_a, size_b) = pair["sizes"]
            rows.append((_image(pair["a"], size_a, thumbs), _image(pair["b"], size_b, thumbs), str(pair["score"]),
                         classes))
        parts.append(_table(("image", "merged with", "score", "class"), rows) if rows else "<p>No pair merged.</p>")

    rejected = report["rejected_objects"]
    if rejected:
        more = f" (first {REJECTED_SHOWN} of {len(rejected)}: all in the JSON report)" if len(rejected) > REJECTED_SHOWN else ""
        parts.append(f"<h2>Rejected objects{more}</h2>" + _table(
            ("object", "reason", "detail"),
            ((f'<span class="key">{escape(r["uri"])}</span>', escape(r["reason"]), escape(r["detail"]))
             for r in rejected[:REJECTED_SHOWN])))
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>Ingest report</title><style>{_STYLE}</style>'
            f"</head><body>{''.join(parts)}</body></html>")
