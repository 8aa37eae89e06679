"""The self-contained HTML comparison report: tables, plots and thumbnails inlined as base64 PNG data URIs."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

# history.json key spellings seen from the training stages, first match wins.
HISTORY_KEYS = {
    "accuracy": ("train_accuracy", "accuracy", "acc"),
    "val_accuracy": ("val_accuracy", "val_acc"),
    "loss": ("train_loss", "loss"),
    "val_loss": ("val_loss",),
}


def history_series(history: dict, name: str) -> list[float] | None:
    """One per-epoch series of a history.json (e.g. `accuracy` also found as `train_accuracy`)."""
    for key in HISTORY_KEYS[name]:
        if key in history and history[key]:
            return [float(v) for v in history[key]]
    return None


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue())


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure(histories: dict[str, dict]) -> str | None:
    """Accuracy (top) and loss (bottom) per epoch, one column per stage, as a data URI."""
    histories = {s: h for s, h in histories.items() if h}
    if not histories:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(histories), figsize=(4 * len(histories), 6), squeeze=False, sharey="row",
                             layout="constrained")
    for col, (stage, history) in enumerate(histories.items()):
        for row, (train_key, val_key, title) in enumerate(
                [("accuracy", "val_accuracy", "accuracy"), ("loss", "val_loss", "loss")]):
            ax = axes[row][col]
            for key, label in ((train_key, "train"), (val_key, "val")):
                series = history_series(history, key)
                if series:
                    ax.plot(range(1, len(series) + 1), series, marker="o", label=label)
            ax.set_title(f"{stage}: {title}")
            ax.set_xlabel("epoch")
            ax.legend()
    return _png(fig)


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str) -> str:
    """The confusion matrix (rows: true class, columns: predicted) with counts, as a data URI."""
    plt = _pyplot()
    matrix = np.asarray(confusion)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (t, p), count in np.ndenumerate(matrix):
        ax.text(p, t, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return _png(fig)


def thumbnail(image: np.ndarray, size: int = 96) -> str:
    """One uint8 RGB image as a small PNG data URI."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_uri(buf.getvalue())


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.best{background:#e8f5e9;font-weight:bold}
.thumbs img{margin:2px;border:1px solid #999;image-rendering:pixelated;width:96px}
.note{color:#555}
"""

TABLE_COLUMNS = [("accuracy", "accuracy"), ("top_k_accuracy", "top-k acc."), ("macro_f1", "macro F1"),
                 ("macro_precision", "macro prec."), ("macro_recall", "macro rec."), ("log_loss", "log loss"),
                 ("ece", "ECE")]


def render(result: dict, curves_uri: str | None, confusion_uri: str, confused_thumbs: list[list[str]]) -> str:
    """The full HTML document of an evaluation `result` (see core.evaluate)."""
    e = html.escape
    best = result["best_stage"]
    head = "".join(f"<th>{e(label)}</th>" for _, label in TABLE_COLUMNS)
    rows = []
    for stage, cand in result["candidates"].items():
        if cand["status"] != "scored":
            rows.append(f"<tr><td>{e(stage)}</td><td colspan='{len(TABLE_COLUMNS) + 2}' class='note'>"
                        f"skipped: {e(cand.get('reason', ''))}</td></tr>")
            continue
        m, lat = cand["metrics"], cand["latency"]
        cells = "".join(f"<td>{m[key]:.4f}</td>" for key, _ in TABLE_COLUMNS)
        rows.append(f"<tr class='{'best' if stage == best else ''}'><td>{e(stage)}</td>{cells}"
                    f"<td>{lat['batch_1']['median_ms']:.2f} / {lat['batch_1']['p90_ms']:.2f}</td>"
                    f"<td>{lat['batch_32']['median_ms_per_image']:.2f} / {lat['batch_32']['p90_ms_per_image']:.2f}"
                    f"</td></tr>")
    per_class = result["candidates"][best]["metrics"]["per_class"]
    class_rows = "".join(
        f"<tr><td>{e(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td>"
        f"<td>{v['support']}</td></tr>" for c, v in per_class.items())
    confused = []
    for pair, thumbs in zip(result["most_confused"], confused_thumbs, strict=True):
        imgs = "".join(f"<img src='{uri}' alt='{e(pair['true'])} predicted as {e(pair['predicted'])}'>"
                       for uri in thumbs)
        confused.append(f"<li><b>{e(pair['true'])}</b> predicted as <b>{e(pair['predicted'])}</b>: "
                        f"{pair['count']} image(s)<div class='thumbs'>{imgs}</div></li>")
    curves = (f"<img src='{curves_uri}' alt='training curves of all stages'>" if curves_uri
              else "<p class='note'>No training history was available.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model comparison: {e(best)} chosen</title>
<style>{_STYLE}</style></head><body>
<h1>Model comparison on the test split</h1>
<p><b>Choice:</b> {e(result['explanation'])}</p>
<p><b>Transfer vs scratch:</b> {e(result['transfer_vs_scratch']['line'])}</p>
<p class="note">{result['num_test_examples']} test images, {len(result['classes'])} classes; top-k with k={result['top_k']};
selection metric: {e(result['selection_metric'])}. Latency: CPU, compiled tf.function, median / p90 over
{result['latency_repeats']} runs.</p>
<h2>Comparison</h2>
<table><tr><th>stage</th>{head}<th>ms/image, batch 1</th><th>ms/image, batch 32</th></tr>
{''.join(rows)}</table>
<h2>Training curves</h2>{curves}
<h2>Confusion matrix of {e(best)}</h2><img src='{confusion_uri}' alt='confusion matrix of {e(best)}'>
<h2>Per-class metrics of {e(best)}</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{class_rows}</table>
<h2>Most confused class pairs of {e(best)}</h2>
{'<ul>' + ''.join(confused) + '</ul>' if confused else '<p class="note">No misclassified test images.</p>'}
</body></html>
"""
