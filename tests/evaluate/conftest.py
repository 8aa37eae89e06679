"""Fixtures of the evaluate tests: one small trained model and its derived (worse) variants."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_model_factory():
    """tests/evaluate/model_factory.py as a module (the tests run with --import-mode=importlib)."""
    path = Path(__file__).with_name("model_factory.py")
    spec = importlib.util.spec_from_file_location("tlpipe_test_model_factory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def model_factory():
    return load_model_factory()


@pytest.fixture(scope="session")
def session_examples(tmp_path_factory) -> Path:
    """The synthetic examples artifact (same content as `synthetic_examples`), shared by the session."""
    from components.common.synthetic import write_examples

    return write_examples(tmp_path_factory.mktemp("examples") / "examples")


@pytest.fixture(scope="session")
def trained(model_factory, session_examples):
    """(model, history) of a tiny CNN trained on the synthetic train split."""
    return model_factory.train_model(session_examples)
