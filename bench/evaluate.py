"""CPU inference latency of the serving forms evaluate and register measure, on a real MobileNetV2 classifier.

MobileNetV2 alpha 0.35 at 224 px with the ImageNet weights from ../shared/weights (random weights when absent:
latency does not depend on them) and a 7-class head. Rows: Keras `model.predict`, the compiled `tf.function`
evaluate uses (batch 1 and 32), and the TFLite float32 / dynamic-range exports register logs.
Run: .venv/bin/python -m bench.evaluate
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import print_table, write_json

WEIGHTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "weights" / "mobilenet_v2_0.35_224_no_top.weights.h5"
SIZE, CLASSES, REPEATS = 224, 7, 30


def build_model():
    import keras

    weights = str(WEIGHTS) if WEIGHTS.exists() else None
    backbone = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, include_top=False,
                                              weights=weights)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x, training=False))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x)), weights is not None


def main() -> None:
    from tlpipe.components.common import scoring
    from tlpipe.components.register import tflite

    model, pretrained = build_model()
    images = np.random.default_rng(0).integers(0, 256, size=(32, SIZE, SIZE, 3)).astype(np.uint8)
    rows = []

    def row(form, batch, stats):
        rows.append({"form": form, "batch": batch, "median_ms_per_image": stats[0], "p90_ms_per_image": stats[1]})

    for _ in range(3):
        model.predict(images[:1], verbose=0)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        model.predict(images[:1], verbose=0)
        times.append((time.perf_counter() - start) * 1000)
    row("keras model.predict", 1, np.percentile(times, [50, 90]))
    predict = scoring.compiled_predictor(model)
    for batch in (1, 32):
        lat = scoring.measure_latency(predict, images, batch, repeats=REPEATS)
        row("compiled tf.function", batch, (lat["median_ms_per_image"], lat["p90_ms_per_image"]))
    labels = predict(images.astype(np.float32)).argmax(axis=1)
    with tempfile.TemporaryDirectory() as tmp:
        for variant, path in tflite.export(model, tmp).items():
            result = tflite.score(path, images, labels, latency_repeats=REPEATS)
            row(f"tflite {variant} (agreement {result['accuracy']:.2f}, {result['size_bytes'] / 1e6:.1f} MB)", 1,
                (result["latency_ms_b1"], result["latency_ms_b1_p90"]))
    print_table(rows)
    write_json("evaluate", rows, model="MobileNetV2 alpha 0.35 224px + 7-class head", pretrained=pretrained,
               repeats=REPEATS)


if __name__ == "__main__":
    main()
