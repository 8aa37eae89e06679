"""Throughput and latency of `tlpipe predict`'s core and of `tlpipe serve`'s JSON endpoint, Keras vs TFLite.

A version made by the real chain on a fresh embedded stack: the demo photos (examples/fish-egu2017-demo) ->
ingest -> preprocess at 160 px (the demo's size) -> train_frozen (MobileNetV2 alpha 0.35, random weights:
latency does not depend on them, 1 epoch) -> evaluate -> register. Rows: per call of batch 1 and 32, p50/p95
latency (ms per call), calls/s and images/s of
- predict: read the photo files, prepare them (common.images) and classify (what `tlpipe predict` does per batch);
- serve: one client posting KServe V2 requests (base64 photos) to a `tlpipe serve` subprocess on 127.0.0.1.
Run: .venv/bin/python -m bench.serve [--calls N]   (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import print_table, write_json
from tlpipe.stack.servers import stop_popen_group

DEMO = Path(__file__).resolve().parents[1] / "examples" / "fish-egu2017-demo" / "images"
SIZE, BATCHES = 160, (1, 32)


def register_demo_model(tmp: Path) -> str:
    """The models:/ reference of a champion registered by the real chain on the demo photos."""
    from tlpipe.components.evaluate import core as evaluate
    from tlpipe.components.ingest.core import ingest
    from tlpipe.components.ingest.upload import upload_folder
    from tlpipe.components.preprocess.core import preprocess
    from tlpipe.components.register import core as register
    from tlpipe.components.train import core as train
    from tlpipe.components.train.params import TrainParams
    from tlpipe.stack import DATA_BUCKET

    data, name = f"s3://{DATA_BUCKET}/bench-serve/{uuid.uuid4().hex[:8]}", "bench-serve"
    upload_folder(DEMO, data)
    ingest(data, tmp / "manifest", group_pattern=r"(\d{8}_\d{6})_")
    preprocess(str(tmp / "manifest"), str(tmp / "examples"), image_size=SIZE, spark_master="local[2]")
    train.train_frozen(tmp / "examples", tmp / "frozen", TrainParams(
        alpha=0.35, weights=None, epochs=1, augment=False, feature_cache="on", early_stopping_patience=0))
    result = evaluate.evaluate(tmp / "examples", {"frozen": tmp / "frozen"}, tmp / "eval", latency_repeats=2)
    best = evaluate.copy_best(result, {"frozen": tmp / "frozen"}, tmp / "best")
    version = register.register(best, tmp / "examples", tmp / "manifest", registered_model_name=name,
                                tflite_latency_repeats=2, force_promote=True).model_version
    return f"models:/{name}/{version}"


def _row(kind: str, form: str, batch: int, times: list[float]) -> dict:
    p50, p95 = (float(v) for v in np.percentile(np.array(times) * 1000, [50, 95]))
    per_s = len(times) / sum(times)
    return {"path": kind, "form": form, "batch": batch, "p50_ms": p50, "p95_ms": p95, "calls_per_s": per_s,
            "images_per_s": per_s * batch}


def bench_predict(reference: str, photos: list[Path], calls: int) -> list[dict]:
    from tlpipe.serving import predict

    rows = []
    for form in (None, "float32"):
        classifier = predict.load(reference, tflite=form)
        for batch in BATCHES:
            times = []
            for i in range(calls + 2):
                chosen = [photos[(i * batch + j) % len(photos)] for j in range(batch)]
                start = time.perf_counter()
                arrays = np.stack([classifier.prepare(p.read_bytes(), str(p)) for p in chosen])
                classifier.predict(arrays)
                times.append(time.perf_counter() - start)
            rows.append(_row("predict", classifier.info.form, batch, times[2:]))  # 2 warm-up calls
    return rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_serve(reference: str, photos: list[Path], calls: int) -> list[dict]:
    import requests

    from tlpipe.serving.predict import parse_reference

    encoded = [base64.b64encode(p.read_bytes()).decode() for p in photos]
    rows = []
    for form in (None, "float32"):
        port = _free_port()
        cmd = [sys.executable, "-m", "tlpipe", "serve", "-m", reference, "--port", str(port)]
        proc = subprocess.Popen(cmd + (["--tflite", "--tflite-variant", form] if form else []), stdout=subprocess.DEVNULL,
                                start_new_session=True)
        url = f"http://127.0.0.1:{port}/v2/models/{parse_reference(reference)[0]}/infer"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                    break
                except requests.ConnectionError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"tlpipe serve did not start ({' '.join(cmd)})") from None
                    time.sleep(0.5)
            with requests.Session() as session:
                for batch in BATCHES:
                    times = []
                    for i in range(calls + 2):
                        data = [encoded[(i * batch + j) % len(encoded)] for j in range(batch)]
                        body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [batch],
                                                       "data": data}]})
                        start = time.perf_counter()
                        answer = session.post(url, data=body, headers={"Content-Type": "application/json"})
                        times.append(time.perf_counter() - start)
                        answer.raise_for_status()
                    rows.append(_row("serve", f"tflite-{form}" if form else "keras", batch, times[2:]))
        finally:
            stop_popen_group(proc)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per row")
    args = parser.parse_args(argv)
    from tlpipe.stack import Stack

    photos = sorted(p for p in DEMO.rglob("*.jpg"))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        stack = Stack(Path(tmp) / "stack")
        stack.up()
        stack.apply_env(override=True)
        try:
            started = time.monotonic()
            reference = register_demo_model(Path(tmp))
            setup_s = time.monotonic() - started
            rows = bench_predict(reference, photos, args.calls) + bench_serve(reference, photos, args.calls)
        finally:
            stack.down(grace=5)
    print_table(rows)
    write_json("serve", rows, image_size=SIZE, model="MobileNetV2 alpha 0.35, random weights, 7 classes",
               calls_per_row=args.calls, setup_seconds=setup_s)


if __name__ == "__main__":
    main()
