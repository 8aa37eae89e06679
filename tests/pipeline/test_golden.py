"""A fresh compile equals the golden pipeline of each compile target (`make golden` regenerates them after an
intended change)."""

from __future__ import annotations

import difflib

import pytest

from tests.pipeline.golden import GOLDEN, compile_normalised


@pytest.mark.parametrize("target", list(GOLDEN))
def test_compiled_pipeline_matches_the_golden_file(tmp_path, target):
    fresh = compile_normalised(tmp_path, target)
    golden = GOLDEN[target].read_text()
    diff = "".join(difflib.unified_diff(golden.splitlines(True), fresh.splitlines(True), "golden", "fresh", n=2))
    assert not diff, f"the compiled pipeline differs from {GOLDEN[target]} (run `make golden` if intended):\n{diff}"


@pytest.mark.parametrize("target", list(GOLDEN))
def test_golden_names_the_function_of_every_executor(target):
    """Each lightweight executor keeps its structure; its embedded source is replaced by a function that exists."""
    import importlib

    import yaml

    doc = next(yaml.safe_load_all(GOLDEN[target].read_text()))
    assert "sdkVersion" not in doc
    executors = doc["deploymentSpec"]["executors"]
    assert len(executors) >= 9, sorted(executors)
    for name, executor in executors.items():
        (source,) = [part for part in executor["container"]["command"] if part.startswith("<source of ")]
        module, _, function = source.removeprefix("<source of ").removesuffix(">").rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert not any("def " in part for part in executor["container"]["command"]), name
