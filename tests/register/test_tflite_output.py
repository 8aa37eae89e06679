"""The TFLite conversion and TensorFlow stay quiet by default, but a failure still shows what the converter said."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tlpipe.components.register import tflite


def _tiny_model(det: bool = False):
    import keras
    import tensorflow as tf

    if det:  # MatrixDeterminant is no TFLite builtin op: the conversion fails
        inputs = keras.Input((3, 3))
        return keras.Model(inputs, keras.layers.Lambda(lambda x: tf.reshape(tf.linalg.det(x), (-1, 1)))(inputs))
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_conversion_prints_only_the_project_lines(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("TLPIPE_DEBUG", raising=False)
    paths = tflite.export(_tiny_model(), tmp_path)
    out, err = capfd.readouterr()
    assert all(path.stat().st_size > 0 for path in paths.values())
    assert "TensorSpec" not in out + err and "Saved artifact" not in out + err
    assert all("[tlpipe." in line for line in (out + err).splitlines() if line.strip()), out + err


def test_conversion_failure_shows_the_converter_output(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("TLPIPE_DEBUG", raising=False)
    with pytest.raises(Exception, match="MatrixDeterminant"):
        tflite.export(_tiny_model(det=True), tmp_path)
    err = capfd.readouterr().err
    assert "--- output of the TFLite float32 conversion ---" in err
    assert "TF Select ops: MatrixDeterminant" in err


def test_debug_keeps_the_converter_output(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("TLPIPE_DEBUG", "1")
    tflite.export(_tiny_model(), tmp_path)
    assert "TensorSpec" in capfd.readouterr().out


@pytest.mark.parametrize("debug", [False, True])
def test_a_step_process_prints_only_its_own_lines_unless_debugging(debug, tmp_path):
    """As in a pipeline step: a fresh process imports the step, TensorFlow, and converts a model."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TLPIPE_DEBUG")}
    if debug:
        env["TLPIPE_DEBUG"] = "1"
    code = ("import sys; from tlpipe.components.register import core, tflite; import keras; "
            "inputs = keras.Input((8, 8, 3)); x = keras.layers.GlobalAveragePooling2D()(inputs); "
            "tflite.export(keras.Model(inputs, keras.layers.Dense(2)(x)), sys.argv[1])")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          check=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if debug:
        assert any(re.match(r"[IW]\d{4} ", line) for line in lines)  # TensorFlow's C++ log lines
        assert any("TensorSpec" in line for line in lines)
    else:
        assert len(lines) == 2 and all("[tlpipe.register] TFLite " in line for line in lines), lines


def test_importing_tensorflow_prints_nothing_unless_debugging(tmp_path):
    """TensorFlow's C++ library writes a banner while it loads (on CPUs where oneDNN is on) that no log level
    hides; a step's process shows it only with TLPIPE_DEBUG=1 or when the import fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TLPIPE_DEBUG")}
    code = "import tlpipe.components.common.log; import tensorflow as tf; print(tf.constant(2).numpy() * 21)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert (done.stdout, done.stderr) == ("42\n", "")
