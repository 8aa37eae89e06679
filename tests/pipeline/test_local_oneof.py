"""kfp.local and dsl.OneOf over artifacts: the upstream gap is still there, and our shim closes it.

No `from __future__ import annotations` here: KFP reads the component annotations as types.
"""


import subprocess
import sys
import textwrap

from kfp import dsl, local
from kfp.dsl import Input, Model, Output

from tlpipe.cli.local import use_kfp_local_oneof_artifacts


def make_model(tag: str, model: Output[Model]):
    import os

    os.makedirs(model.path, exist_ok=True)
    open(os.path.join(model.path, "tag.txt"), "w").write(tag)


def read_model(model: Input[Model]) -> str:
    import os

    return open(os.path.join(model.path, "tag.txt")).read()


def build():
    make = dsl.component(make_model, install_kfp_package=False)
    read = dsl.component(read_model, install_kfp_package=False)

    @dsl.pipeline(name="oneof-artifacts")
    def oneof_artifacts(flag: bool = True) -> str:
        with dsl.If(flag == True):  # noqa: E712
            a = make(tag="if-branch")
        with dsl.Else():
            b = make(tag="else-branch")
        return read(model=dsl.OneOf(a.outputs["model"], b.outputs["model"])).output

    return oneof_artifacts


def test_kfp_local_still_lacks_oneof_over_artifacts(tmp_path):
    """If this fails, kfp.local resolves OneOf artifacts itself: delete use_kfp_local_oneof_artifacts."""
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        from kfp import local
        from {__name__.rsplit('.', 1)[-1]} import build
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root={str(tmp_path / 'root')!r})
        build()(flag=True)
    """)
    (tmp_path / f"{__name__.rsplit('.', 1)[-1]}.py").write_text(open(__file__).read())
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Expected 1 artifact in ArtifactSelectorSpec" in result.stderr, result.stderr[-2000:]


def test_shim_takes_the_branch_that_ran(kfp_local):
    use_kfp_local_oneof_artifacts()
    pipeline = build()
    assert pipeline(flag=True).output == "if-branch"
    assert pipeline(flag=False).output == "else-branch"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_local))
