"""A fresh compile equals the golden pipeline (`make golden` regenerates it after an intended change)."""

from __future__ import annotations

import difflib

from tests.pipeline.golden import GOLDEN, compile_normalised


def test_compiled_pipeline_matches_the_golden_file(tmp_path):
    fresh = compile_normalised(tmp_path)
    golden = GOLDEN.read_text()
    diff = "".join(difflib.unified_diff(golden.splitlines(True), fresh.splitlines(True), "golden", "fresh", n=2))
    assert not diff, f"the compiled pipeline differs from {GOLDEN} (run `make golden` if intended):\n{diff}"


def test_golden_names_the_function_of_every_executor():
    """Each lightweight executor keeps its structure; its embedded source is replaced by a function that exists."""
    import importlib

    import yaml

    doc = next(yaml.safe_load_all(GOLDEN.read_text()))
    assert "sdkVersion" not in doc
    executors = doc["deploymentSpec"]["executors"]
    assert len(executors) >= 9, sorted(executors)
    for name, executor in executors.items():
        (source,) = [part for part in executor["container"]["command"] if part.startswith("<source of ")]
        module, _, function = source.removeprefix("<source of ").removesuffix(">").rpartition(".")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert not any("def " in part for part in executor["container"]["command"]), name
