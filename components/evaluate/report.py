"""The self-contained HTML comparison report: tables, plots and thumbnails inlined as base64 PNG data URIs.

The figures are built from data a test can read back: `training_series` (the curves), the candidates'
`reliability` bins and `common.scoring.precision_recall_curves`; each `*_figure` returns the matplotlib Figure.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

CURVE_METRICS = ("train_accuracy", "val_accuracy", "train_loss", "val_loss")


def training_series(histories: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    """{stage: {"epoch": [1, 2, ...], "train_accuracy": [...], "val_accuracy", "train_loss", "val_loss"}}.

    From history.json as training writes it (`{"epochs": [one row per epoch], ...}`, docs/DESIGN.md §4);
    epochs are numbered from 1, a stage without recorded epochs is left out.
    """
    series = {}
    for stage, history in histories.items():
        rows = history.get("epochs") or []
        if rows:
            series[stage] = {"epoch": [int(r["epoch"]) + 1 for r in rows],
                             **{m: [float(r[m]) for r in rows] for m in CURVE_METRICS}}
    return series


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_uri(fig) -> str:
    """A matplotlib Figure as a PNG data URI (the figure is closed)."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buf.getvalue())


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def curves_figure(series: dict[str, dict[str, list[float]]]):
    """Accuracy (top) and loss (bottom) per epoch, train and val, one column per stage; None without series."""
    if not series:
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, len(series), figsize=(4 * len(series), 6), squeeze=False, sharey="row",
                             layout="constrained")
    for col, (stage, values) in enumerate(series.items()):
        for row, metric in enumerate(("accuracy", "loss")):
            ax = axes[row][col]
            for split in ("train", "val"):
                ax.plot(values["epoch"], values[f"{split}_{metric}"], marker="o", label=split)
            ax.set_title(f"{stage}: {metric}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, not 1.5
            ax.legend()
    return fig


def reliability_figure(candidates: dict[str, dict]):
    """Per scored stage: test accuracy vs mean confidence per confidence bin, against the diagonal, with ECE."""
    scored = {s: c for s, c in candidates.items() if c["status"] == "scored"}
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scored), figsize=(3.6 * len(scored), 3.6), squeeze=False, layout="constrained")
    for ax, (stage, cand) in zip(axes[0], scored.items(), strict=True):
        bins = [b for b in cand["reliability"] if b["count"]]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
               align="edge", alpha=0.7, edgecolor="black", label="accuracy per bin")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="black",
                label="mean confidence")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{stage}: ECE {cand['metrics']['ece']:.3f}")
        ax.legend(fontsize="small", loc="upper left")
    return fig


def precision_recall_figure(curves: dict[str, dict], stage: str):
    """One-vs-rest precision-recall curve per class (average precision in the legend); None without classes."""
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    for name, curve in curves.items():
        ax.step(curve["recall"], curve["precision"], where="post",
                label=f"{name} (AP {curve['average_precision']:.2f})")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.05), xlabel="recall", ylabel="precision",
           title=f"{stage}: precision-recall per class (test)")
    ax.legend(fontsize="small", loc="lower left")
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str):
    """The confusion matrix (rows: true class, columns: predicted) with counts."""
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
    return fig


def figures(result: dict, histories: dict[str, dict], pr_curves: dict[str, dict]) -> dict[str, str | None]:
    """The report's plots as data URIs: curves, reliability, precision_recall, confusion (None: nothing to plot)."""
    best = result["best_stage"]
    built = {"curves": curves_figure(training_series(histories)),
             "reliability": reliability_figure(result["candidates"]),
             "precision_recall": precision_recall_figure(pr_curves, best),
             "confusion": confusion_figure(result["candidates"][best]["metrics"]["confusion_matrix"],
                                           result["classes"], f"{best} on {result['num_test_examples']} test images")}
    return {name: figure_uri(fig) if fig is not None else None for name, fig in built.items()}


def thumbnail(image: np.ndarray, size: int = 96) -> str:
    """One uint8 RGB image as a small PNG data URI."""
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return data_uri(buf.getvalue())


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.best{background:#e8f5e9;font-weight:bold}
td.val{background:#e3f2fd}
.thumbs img{margin:2px;border:1px solid #999;image-rendering:pixelated;width:96px}
.note{color:#555}
.warn{background:#fff3e0;border-left:4px solid #ef6c00;padding:6px 10px}
"""

TABLE_COLUMNS = [("accuracy", "accuracy"), ("top_k_accuracy", "top-k acc."), ("macro_f1", "macro F1"),
                 ("macro_precision", "macro prec."), ("macro_recall", "macro rec."), ("log_loss", "log loss"),
                 ("ece", "ECE")]


def _absent_warning(split: str, absent: list[str], classes: list[str]) -> str:
    if not absent:
        return ""
    return (f"<p class='warn'><b>Warning:</b> the {split} split has no images of {html.escape(', '.join(absent))}. "
            f"Its macro precision, recall and F1 are averaged over the {len(classes) - len(absent)} classes "
            f"present, not counting the absent ones as 0.</p>")


def _chance(result: dict) -> str:
    """Per scored stage, its test accuracy against the majority-class rate; a warning for those at chance."""
    items = []
    for stage, cand in result["candidates"].items():
        if cand["status"] == "scored":
            chance = cand["chance"]
            label = (f"<b>{html.escape(stage)} is {chance['verdict']}:</b>" if chance["at_chance"]
                     else f"{html.escape(stage)}:")
            items.append(f"<li class='{'warn' if chance['at_chance'] else ''}'>{label} {html.escape(chance['line'])}</li>")
    return f"<ul>{''.join(items)}</ul>"


def _tune(result: dict, figures: dict) -> str:
    """The recipe search: the tune step's choice and Optuna's plots; empty without a tune step."""
    found = result.get("tune") or {}
    if not found:
        return ""
    plots = "".join(_img(uri, f"tune: {name.split(':', 1)[1].removesuffix('.png').replace('_', ' ')}", "")
                    for name, uri in figures.items() if name.startswith("tune:"))
    return f"<h2>Recipe search (tune={html.escape(found['tune'])})</h2><p>{html.escape(found['line'])}</p>{plots}"


def _img(uri: str | None, alt: str, missing: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>" if uri else f"<p class='note'>{html.escape(missing)}</p>"


def render(result: dict, figures: dict[str, str | None], confused_thumbs: list[list[str]]) -> str:
    """The full HTML document of an evaluation `result` (see core.evaluate) with its `figures` (see figures())."""
    e = html.escape
    best, metric, classes = result["best_stage"], result["selection_metric"], result["classes"]
    head = "".join(f"<th>test {e(label)}</th>" for _, label in TABLE_COLUMNS)
    rows = []
    for stage, cand in result["candidates"].items():
        if cand["status"] != "scored":
            rows.append(f"<tr><td>{e(stage)}</td><td colspan='{len(TABLE_COLUMNS) + 3}' class='note'>"
                        f"skipped: {e(cand.get('reason', ''))}</td></tr>")
            continue
        m, lat = cand["metrics"], cand["latency"]
        cells = "".join(f"<td>{m[key]:.4f}</td>" for key, _ in TABLE_COLUMNS)
        rows.append(f"<tr class='{'best' if stage == best else ''}'><td>{e(stage)}</td>"
                    f"<td class='val'>{cand['val_metrics'][metric]:.4f}</td>{cells}"
                    f"<td>{lat['batch_1']['median_ms']:.2f} / {lat['batch_1']['p90_ms']:.2f}</td>"
                    f"<td>{lat['batch_32']['median_ms_per_image']:.2f} / {lat['batch_32']['p90_ms_per_image']:.2f}"
                    f"</td></tr>")
    best_metrics = result["candidates"][best]["metrics"]
    class_rows = "".join(
        f"<tr><td>{e(c)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td><td>{v['f1']:.3f}</td>"
        f"<td>{v['support']}</td></tr>" if v["support"] else
        f"<tr><td>{e(c)}</td><td colspan='3' class='note'>absent from the test split: not in the macro means</td>"
        f"<td>0</td></tr>" for c, v in best_metrics["per_class"].items())
    confused = []
    for pair, thumbs in zip(result["most_confused"], confused_thumbs, strict=True):
        imgs = "".join(f"<img src='{uri}' alt='{e(pair['true'])} predicted as {e(pair['predicted'])}'>"
                       for uri in thumbs)
        confused.append(f"<li><b>{e(pair['true'])}</b> predicted as <b>{e(pair['predicted'])}</b>: "
                        f"{pair['count']} image(s)<div class='thumbs'>{imgs}</div></li>")
    warnings = (_absent_warning("val", result["candidates"][best]["val_metrics"]["absent_classes"], classes)
                + _absent_warning("test", result["absent_classes"], classes))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model comparison: {e(best)} chosen</title>
<style>{_STYLE}</style></head><body>
<h1>Model comparison: {e(best)} chosen</h1>
<p><b>Choice:</b> {e(result['explanation'])}</p>
<p><b>How it was chosen:</b> on the val split ({result['num_val_examples']} images), by val {e(metric)}; a tie
goes to the simpler stage (frozen, then finetuned, then scratch). The test split ({result['num_test_examples']}
images) is only reported: it took no part in the choice, so the test figures below are not inflated by it.</p>
<p><b>Transfer vs scratch:</b> {e(result['transfer_vs_scratch']['line'])}</p>
<p><b>Chance level</b> (a stage whose test accuracy is within the bootstrap 95 % interval of always answering the
majority class has not shown that it learned anything):</p>
{_chance(result)}
{warnings}
<p class="note">{len(classes)} classes; top-k with k={result['top_k']}. Latency: CPU, compiled tf.function,
median / p90 over {result['latency_repeats']} runs.</p>
<h2>Comparison</h2>
<table><tr><th>stage</th><th>val {e(metric)} (chooses)</th>{head}
<th>ms/image, batch 1</th><th>ms/image, batch 32</th></tr>
{''.join(rows)}</table>
{_tune(result, figures)}
<h2>Calibration (test): reliability diagrams and ECE</h2>
<p class="note">ECE (expected calibration error) is the gap between confidence and accuracy, averaged over 15
confidence bins weighted by their share of images. Bars below the diagonal: over-confident in that bin.</p>
{_img(figures['reliability'], 'reliability diagrams of all stages', 'No scored model.')}
<h2>Training curves</h2>
{_img(figures['curves'], 'training curves of all stages', 'No training history was available.')}
<h2>Confusion matrix of {e(best)} (test)</h2>{_img(figures['confusion'], f'confusion matrix of {best}', '')}
<h2>Precision-recall per class of {e(best)} (test)</h2>
{_img(figures['precision_recall'], f'precision-recall curves of {best}', 'No class has test images.')}
<h2>Per-class metrics of {e(best)} (test)</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{class_rows}</table>
<h2>Most confused class pairs of {e(best)} (test)</h2>
{'<ul>' + ''.join(confused) + '</ul>' if confused else '<p class="note">No misclassified test images.</p>'}
</body></html>
"""
