"""One default per parameter: the pipeline, its validation schema, the KFP adapters, the CLIs and each step's
params.py agree.

Each step's `params.py` owns its defaults. The pipeline and the CLIs read them from there; the adapters must
repeat them as literals (KFP embeds an adapter's source), so this test is what keeps them equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from collections import defaultdict

from tlpipe.cli.main import build_parser
from tlpipe.components.common.mlflow_utils import DEFAULT_EXPERIMENT
from tlpipe.pipelines.pipeline import pipeline_parameters
from tlpipe.pipelines.validation import defaults as validation_defaults

STEPS = ("ingest", "preprocess", "train", "evaluate", "register", "deploy")
# Pipeline parameters named otherwise than the step field they set (the pipeline and validation layers).
PIPELINE_FIELDS = {"num_classes": "expected_num_classes", "deploy_namespace": "namespace"}
# Options that share a step field's name but are another setting: the KFP client's user namespace.
NOT_THE_FIELD = {("tlpipe run", "namespace"), ("tlpipe upload", "namespace")}


def _normal(value):
    """Compare lists and tuples alike (a KFP list default vs a dataclass tuple)."""
    return list(value) if isinstance(value, tuple | list) else value


def params_defaults() -> dict[str, dict[str, object]]:
    """{step: {field: default}} from every step's params.py dataclasses."""
    found = {}
    for step in STEPS:
        module = importlib.import_module(f"tlpipe.components.{step}.params")
        fields = {}
        for cls in vars(module).values():
            if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__:
                for f in dataclasses.fields(cls):
                    if f.default is not dataclasses.MISSING:
                        fields[f.name] = f.default
                    elif f.default_factory is not dataclasses.MISSING:
                        fields[f.name] = f.default_factory()
        assert fields, f"tlpipe.components.{step}.params defines no parameter dataclass"
        found[step] = fields
    return found


def adapter_defaults() -> dict[str, dict[str, object]]:
    """{step.adapter: {parameter: default}} of every KFP adapter function."""
    found = {}
    for step in STEPS:
        module = importlib.import_module(f"tlpipe.components.{step}.component")
        for name, fn in vars(module).items():
            if inspect.isfunction(fn) and name.endswith("_op") and fn.__module__ == module.__name__:
                found[f"{step}.{name}"] = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                                           if p.default is not inspect.Parameter.empty}
    return found


def cli_defaults() -> dict[str, dict[str, object]]:
    """{'tlpipe train frozen': {dest: default}} of every leaf command of the CLI."""
    found = {}

    def walk(parser: argparse.ArgumentParser, path: str):
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers:
            found[path] = {a.dest: a.default for a in parser._actions
                           if a.dest not in ("help", "func") and a.default is not argparse.SUPPRESS}
        for action in subparsers:
            for name, sub in action.choices.items():
                walk(sub, f"{path} {name}")

    walk(build_parser(), "tlpipe")
    return found


def test_every_layer_agrees_with_the_owner():
    owners = params_defaults()
    layers = {"pipeline": pipeline_parameters(), "validation": validation_defaults(), **adapter_defaults(),
              **cli_defaults()}
    owner_of = defaultdict(dict)  # name -> {step: default}
    for step, fields in owners.items():
        for name, default in fields.items():
            owner_of[name][step] = _normal(default)
    disagreements, checked = [], 0
    for layer, defaults in layers.items():
        for name, default in defaults.items():
            field = PIPELINE_FIELDS.get(name, name) if layer in ("pipeline", "validation") else name
            if (layer, name) in NOT_THE_FIELD:
                continue
            if field == "experiment":
                expected = {DEFAULT_EXPERIMENT}
            elif field in owner_of:
                expected = {repr(v) for v in owner_of[field].values()}
                default = repr(_normal(default))
            else:
                continue
            checked += 1
            if default not in expected:
                disagreements.append(f"{layer}: {name}={default} but the owner of {field} says {sorted(expected)}")
    assert not disagreements, "\n".join(disagreements)
    assert set(PIPELINE_FIELDS) <= set(layers["pipeline"]) and set(PIPELINE_FIELDS.values()) <= set(owner_of)
    assert all(name in layers[layer] for layer, name in NOT_THE_FIELD)  # neither list names what is gone
    assert checked > 60  # the comparison really ran over the shared parameters


def test_a_parameter_has_one_default_across_the_steps_that_own_it():
    """Two steps owning a parameter of the same name give it the same default."""
    by_name = defaultdict(dict)
    for step, fields in params_defaults().items():
        for name, default in fields.items():
            by_name[name][step] = repr(_normal(default))
    assert {n: s for n, s in by_name.items() if len(set(s.values())) > 1} == {}
