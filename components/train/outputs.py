"""The `model` artifact a stage writes (docs/DESIGN.md §4), through the shared model_artifact module."""

from __future__ import annotations

from pathlib import Path

from tlpipe.components.common import model_artifact


def write_artifact(out_dir: Path, classifier, classes: list[str], history: dict, metadata: dict,
                   title: str) -> None:
    """model.keras (the classifier alone, no optimizer), class index, history, metadata, curves.png."""
    import keras

    inference = keras.Model(classifier.inputs, classifier.outputs, name="classifier")
    inference.save(Path(out_dir) / model_artifact.MODEL_FILE)
    model_artifact.write_files(out_dir, classes, history, metadata)
    plot_curves(history["epochs"], Path(out_dir) / model_artifact.CURVES_FILE, title=title)


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Accuracy and loss per epoch, train vs val."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.plot(epochs, [r[f"train_{metric}"] for r in rows], "o-", label=f"train {metric}")
        ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "o-", label=f"val {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} {metric}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
