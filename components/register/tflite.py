"""TFLite exports of a Keras classifier (float32 and dynamic-range quantised), scored and timed on CPU."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tlpipe.components.common.log import get_logger, output_shown_on_failure

log = get_logger("register")

VARIANTS = ("float32", "dynamic_range")


def export(model, out_dir: str | Path) -> dict[str, Path]:
    """Write model_float32.tflite and model_dynamic_range.tflite; returns {variant: path}."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for variant in VARIANTS:
        paths[variant] = out_dir / f"model_{variant}.tflite"
        # The converter prints every tensor it saves, and loading it prints TensorFlow's C++ banners.
        with output_shown_on_failure(f"the TFLite {variant} conversion"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if variant == "dynamic_range":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights, float activations
            flatbuffer = converter.convert()
        paths[variant].write_bytes(flatbuffer)
        log.info("TFLite %s: %s (%.1f KiB)", variant, paths[variant], paths[variant].stat().st_size / 1024)
    return paths


def score(path: str | Path, images: np.ndarray, labels: np.ndarray, latency_repeats: int = 50) -> dict:
    """Test accuracy of a .tflite classifier (one image per call) and its single-image latency (median, p90)."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def predict(image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])[0]

    predicted = np.array([int(np.argmax(predict(image))) for image in images])
    times = []
    for i in range(latency_repeats):
        start = time.perf_counter()
        predict(images[i % len(images)])
        times.append((time.perf_counter() - start) * 1000.0)
    median, p90 = (float(v) for v in np.percentile(times, [50, 90]))
    return {"accuracy": float((predicted == labels).mean()), "latency_ms_b1": median, "latency_ms_b1_p90": p90,
            "size_bytes": Path(path).stat().st_size}
