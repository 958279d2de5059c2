"""The ``rewrite`` step: pnnx's raw encoder -> an encoder sherpa-ncnn's runtime can load.

Reads ``OUT/work/pnnx/encoder_jit_trace-pnnx.ncnn.{param,bin}`` (and pnnx's own
``encoder.pnnx.param`` for operator attributes), writes
``OUT/work/rewrite/encoder_jit_trace-pnnx.ncnn.{param,bin}`` (a plain copy when
there is nothing to rewrite), and ``OUT/work/rewrite-plan.json`` with the plan's
summary, changes and diff. A pattern no rewrite recognises fails the step,
naming the layer and its type; the metadata step reads the rewritten files.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

from core.common.atomic import atomic_write_bytes
from core.pipeline.runner import Step, StepContext, StepError
from core.rewrite.driver import apply_rewrites, plan_file

PLAN_FILE = "rewrite-plan.json"


def rewrite_dir(layout) -> Path:
    return layout.work / "rewrite"


def rewritten(layout, ext: str) -> Path:
    return rewrite_dir(layout) / f"encoder_jit_trace-pnnx.ncnn.{ext}"


def _copy(src: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_rewrite(raw_param: Path, raw_bin: Path, pnnx_param: Path | None, out_param: Path, out_bin: Path,
                plan_json: Path, log=print, arch: str | None = None) -> dict:
    """Plan and write the rewrite of one encoder; raises StepError on a refusal. Returns the plan as a dict."""
    if pnnx_param is not None and pnnx_param.is_file():
        from core.pnnx.graph import CONVERT_HINT, describe, shape_mismatches
        bad = shape_mismatches(pnnx_param)
        if bad:
            raise StepError(describe(pnnx_param, bad) + "; no rewrite can restore what pnnx dropped",
                            hint=CONVERT_HINT)
    plan = plan_file(raw_param, pnnx_param=pnnx_param if pnnx_param and pnnx_param.is_file() else None, arch=arch)
    out_param.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(plan_json, json.dumps(plan.as_dict(), indent=2).encode())
    for note in plan.notes:
        log(f"note: {note}")
    if plan.action == "refused":
        raise StepError("; ".join(plan.errors),
                        hint="the pnnx wheel left an operator in this encoder that no rewrite handles; "
                             "nothing was changed (see work/rewrite-plan.json)")
    for c in plan.changes:
        log(f"[{c.rule}] line {c.line}: {c.layer} ({c.type}): {c.what}")
    if plan.action == "unchanged":
        _copy(raw_param, out_param)
    else:
        for line in plan.diff.splitlines():
            log(line)
        if out_param.exists():
            out_param.unlink()  # may be a hard link to pnnx's output from an earlier run
        apply_rewrites(plan, raw_param, raw_bin, out_param=out_param, out_bin=out_bin)
    if plan.new_bin is None:
        _copy(raw_bin, out_bin)
    log(plan.summary())
    return plan.as_dict()


def check_runnable(params: list[Path], log=print) -> None:
    """Every layer of each graph against what its ncnn implementation needs; StepError naming the layers."""
    from core.ncnn.param import load_param
    from core.ncnn.requirements import check_layers, describe
    for param in params:
        parsed = load_param(param)
        if parsed.model is None:
            raise StepError(parsed.describe())
        problems = check_layers(parsed.model)
        if problems:
            raise StepError(describe(problems, str(param)),
                            hint="ncnn would crash or compute nothing on these layers; nothing was shipped")
        log(f"{param.name}: every layer has what ncnn needs to run it ({len(parsed.model.layers)} layers)")


def make_rewrite(layout, arch: str | None = None) -> Step:
    raw_param, raw_bin = layout.raw("encoder", "param"), layout.raw("encoder", "bin")
    pnnx_param = layout.pnnx_dir / "encoder.pnnx.param"
    out_param, out_bin = rewritten(layout, "param"), rewritten(layout, "bin")
    plan_json = layout.work / PLAN_FILE
    side_nets = [layout.final(net, "param") for net in ("decoder", "joiner")]

    def run(ctx: StepContext) -> None:
        run_rewrite(raw_param, raw_bin, pnnx_param, out_param, out_bin, plan_json, log=ctx.log, arch=arch)
        check_runnable([out_param] + [p for p in side_nets if p.is_file()], log=ctx.log)

    script = [f"mkdir -p {shlex.quote(str(rewrite_dir(layout)))}",
              f"cp {shlex.quote(str(raw_param))} {shlex.quote(str(out_param))}",
              f"cp {shlex.quote(str(raw_bin))} {shlex.quote(str(out_bin))}",
              f"sherpa-ncnn-wizard rewrite {shlex.quote(str(out_param))}"
              + (f" --arch {arch}" if arch else "") + " --apply"]
    return Step("rewrite", "Rewrite layers sherpa-ncnn's runtime lacks", func=run, inputs=[raw_param, raw_bin],
                outputs=[out_param, out_bin, plan_json], script=script, fingerprint_extra=arch or "",
                describe=f"replace layers sherpa-ncnn cannot load in {raw_param.name} (nothing when there are none)")
