"""Where everything of a run lives: the output directory layout (fp16, fp32 and int8 files, work/, logs/) and
the checks an output directory must pass."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from core.int8.calibration import ModelFiles

NETS = ("encoder", "decoder", "joiner")


def pt_name(net: str) -> str:
    return f"{net}_jit_trace-pnnx.pt"


def ncnn_name(net: str, ext: str) -> str:
    return f"{net}_jit_trace-pnnx.ncnn.{ext}"


class PlanError(Exception):
    """The config cannot be turned into a plan; ``problems`` name the fields."""

    def __init__(self, problems: list[str], untrusted: list[tuple[str, list[str]]] | None = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        # checkpoints the safe loader refused, with the globals each needs (the wizard's trust tick names them)
        self.untrusted = untrusted or []


@dataclass
class Layout:
    """Where every file of a run lives (OUT as in DESIGN.md, work files under OUT/work)."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out / "work"

    @property
    def exp(self) -> Path:
        return self.work / "exp"

    @property
    def pnnx_dir(self) -> Path:
        return self.work / "pnnx"

    @property
    def tokens(self) -> Path:
        return self.out / "tokens.txt"

    def pt(self, net: str) -> Path:
        return self.exp / pt_name(net)

    def raw(self, net: str, ext: str) -> Path:
        return self.pnnx_dir / ncnn_name(net, ext)

    def final(self, net: str, ext: str) -> Path:
        return self.out / ncnn_name(net, ext)


def _check_out_dir(out: Path) -> list[str]:
    if out.exists():
        if not out.is_dir():
            return [f"output.dir: {out} exists and is not a directory"]
        entries = [p.name for p in out.iterdir()]
        ours = {"run-state.json", "manifest.json", "wizard.toml", ".sherpa-ncnn-wizard.lock"}
        if entries and not ours & set(entries):
            return [f"output.dir: {out} is not empty and was not made by the wizard; choose a new directory"]
        if not os.access(out, os.W_OK):
            return [f"output.dir: {out} is not writable"]
        return []
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        return [f"output.dir: cannot create {out}: {parent} is not writable"]
    return []


def _versions() -> dict[str, str | None]:
    from importlib import metadata
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("torch", "pnnx", "ncnn", "sherpa-ncnn", "kaldi-native-fbank", "sentencepiece"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


INT8_NETS = ("encoder", "joiner")


def fp32_dir(layout) -> Path:
    return layout.work / "fp32"


def fp32_raw(layout, net: str, ext: str) -> Path:
    return fp32_dir(layout) / f"{net}_jit_trace-pnnx.ncnn.{ext}"


def int8_file(layout, net: str, ext: str) -> Path:
    return layout.out / f"{net}_jit_trace-pnnx.ncnn.int8.{ext}"


def table_file(layout, net: str) -> Path:
    return layout.out / f"{net}-scale-table.txt"


def fp32_set_dir(layout) -> Path:
    """The fp32 weights calibration reads: pnnx's, with the same .bin rewrites as the fp16 encoder."""
    return fp32_dir(layout) / "set"


def fp32_bin(layout, net: str) -> Path:
    return fp32_set_dir(layout) / f"{net}_jit_trace-pnnx.ncnn.bin"


def fp32_model_files(layout) -> ModelFiles:
    return ModelFiles(layout.final("encoder", "param"), fp32_bin(layout, "encoder"),
                      layout.final("decoder", "param"), layout.final("decoder", "bin"),
                      layout.final("joiner", "param"), fp32_bin(layout, "joiner"))
