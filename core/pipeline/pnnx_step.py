"""The runner step of one checked pnnx conversion (core.pnnx.convert does the work in its own process)."""
from __future__ import annotations

from pathlib import Path

from core.pnnx.convert import pnnx_command


def pnnx_step(step_id: str, title: str, pnnx: Path, pt: Path, stem: Path, param: Path, binary: Path, fp16: bool):
    """The runner Step of one checked pnnx conversion (every pnnx step of a run is one of these)."""
    import shlex

    from core.pipeline.runner import Step
    argv, env = pnnx_command(pnnx, pt, stem, param, binary, fp16)
    return Step(step_id, title, argv=argv, env=env, inputs=[pt], outputs=[param, binary], parser="pnnx",
                script=[f"mkdir -p {shlex.quote(str(stem.parent))}",
                        f"PYTHONPATH={shlex.quote(env['PYTHONPATH'])} {shlex.join(argv)}"])
