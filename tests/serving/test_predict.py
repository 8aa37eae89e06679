"""`tlpipe predict` on the demo photos with a version the real chain registered (tests/serving/conftest.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tlpipe.cli.main import main
from tlpipe.components.common import manifest, model_artifact
from tlpipe.components.register import tflite
from tlpipe.serving import params

DEMO = Path(__file__).resolve().parents[2] / "examples" / "fish-egu2017-demo" / "images"


@pytest.fixture(scope="module")
def test_split(demo_model):
    """(s3 URI, label) of every image of the manifest's test split."""
    table, _, _ = manifest.read(str(demo_model[2]))
    rows = table[table["split"] == "test"]
    return list(zip(rows["uri"], rows["label"], strict=True))


def test_accuracy_on_the_test_split_equals_what_evaluate_reported(demo_model, test_split, tmp_path, capsys):
    reference, best, _ = demo_model
    out = tmp_path / "test.csv"
    assert main(["predict", "--model", reference, "--quiet", "-o", str(out), *[uri for uri, _ in test_split]]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["file"] for r in rows] == [uri for uri, _ in test_split]
    classes = model_artifact.read_classes(best)
    assert {r["label"] for r in rows} <= set(classes)
    correct = sum(r["label"] == label for r, (_, label) in zip(rows, test_split, strict=True))
    evaluation = model_artifact.read_evaluation(best)
    assert correct / len(rows) == pytest.approx(evaluation["metrics"]["accuracy"], abs=1e-9)
    ranked = json.loads(rows[0]["top_k"])
    assert len(ranked) == params.TOP_K and ranked[0]["label"] == rows[0]["label"]
    assert "version 1 @challenger @champion (keras)" in capsys.readouterr().err


def test_a_local_folder_with_tflite_agrees_with_keras(demo_model, tmp_path, capsys):
    reference, best, _ = demo_model
    photos = str(DEMO / "perch")
    assert main(["predict", "-m", reference, "-q", "--format", "json", "--batch-size", "8", photos]) == 0
    keras_doc = json.loads(capsys.readouterr().out)
    assert main(["predict", "-m", reference, "-q", "--format", "json", "--tflite", photos]) == 0
    lite_doc = json.loads(capsys.readouterr().out)
    assert keras_doc["model"]["form"] == "keras" and lite_doc["model"]["form"] == "tflite-float32"
    keras_rows, lite_rows = keras_doc["predictions"], lite_doc["predictions"]
    assert len(keras_rows) == len(list((DEMO / "perch").iterdir())) == len(lite_rows)
    assert [r["label"] for r in lite_rows] == [r["label"] for r in keras_rows]
    for k, t in zip(keras_rows, lite_rows, strict=True):
        assert t["probability"] == pytest.approx(k["probability"], abs=1e-4)


def test_table_output_and_the_model_folder(demo_model, capsys):
    _, best, _ = demo_model
    photo = sorted((DEMO / "bream").iterdir())[0]
    assert main(["predict", "-m", str(best), "-q", "--top-k", "2", str(photo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "label", "probability", "top-k"]
    cells = lines[2].split()
    assert cells[0] == str(photo) and cells[1] in model_artifact.read_classes(best)


@pytest.mark.parametrize("argv, message", [
    (["-m", "models:/no-such-model@champion"], "model 'models:/no-such-model@champion'"),
    (["-m", "models:/x"], "expected models:/<name>@<alias>"),
    (["-m", "/no/such/folder"], "'/no/such/folder': not a models:/ reference and no such folder"),
])
def test_a_wrong_model_reference_is_one_error_line(stack, tmp_path, capsys, argv, message):
    photo = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(photo)
    assert main(["predict", *argv, str(photo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlpipe: error: ") and message in err[0], err


def test_a_missing_file_and_a_non_image_are_named(demo_model, tmp_path, capsys):
    reference = demo_model[0]
    assert main(["predict", "-m", reference, str(tmp_path / "gone.jpg")]) == 2
    assert capsys.readouterr().err.strip() == f"tlpipe: error: {tmp_path / 'gone.jpg'}: no such file or folder"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert main(["predict", "-m", reference, "-q", str(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tlpipe: error: {text} is not a decodable image"), err


def test_the_tflite_variants_are_registers():
    assert params.TFLITE_VARIANTS == tflite.VARIANTS
