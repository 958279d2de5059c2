"""The quantization screen's int8 extras: the int8 size predicted before anything runs, and the min_cosine field.

The prediction reads float files that already exist (the --from-ncnn directory, or the fp16 model an earlier run
wrote to the output directory) through core.int8.report (ncnn in a child process, the quantizer's own per-type
rules); before any float model exists there is nothing to read, and the screen says so.
"""
from __future__ import annotations

from pathlib import Path

NETS = ("encoder", "joiner")


def prediction_sources(config) -> tuple[list[tuple[Path, Path]], str]:
    """((param, bin) of encoder and joiner, where they are from), or ([], why there are none yet)."""
    if config.files.from_ncnn:
        from core.pipeline.from_ncnn import locate_source
        files = locate_source(Path(config.files.from_ncnn).expanduser().resolve())
        pairs = [(files.ncnn.get((n, "param")), files.ncnn.get((n, "bin"))) for n in NETS]
        if all(p and b for p, b in pairs):
            return pairs, f"the float files in {config.files.from_ncnn}"
        return [], f"{config.files.from_ncnn} has no encoder and joiner .param/.bin to read"
    out = Path(config.output.dir).expanduser()
    pairs = [(out / f"{n}_jit_trace-pnnx.ncnn.param", out / f"{n}_jit_trace-pnnx.ncnn.bin") for n in NETS]
    if all(p.is_file() and b.is_file() for p, b in pairs):
        return pairs, f"the fp16 model already in {out}"
    return [], "predicted once a float model exists (after pnnx; or start from existing ncnn files)"


def predict_text(config) -> str:
    """One or two lines for the screen; never raises (a problem is the text)."""
    from core.common.formatting import human
    from core.int8.report import Int8ReportError, predict_int8_bytes
    pairs, where = prediction_sources(config)
    if not pairs:
        return f"int8 size: {where}"
    try:
        predicted = predict_int8_bytes(pairs)
    except Int8ReportError as exc:
        return f"int8 size: cannot be predicted from {where}: {exc}"
    before, after = predicted["bytes_before"], predicted["bytes_after"]
    weight_only = sum(len(n["weight_only"]) for n in predicted["nets"])
    int8 = sum(len(n["int8"]) for n in predicted["nets"])
    width = 30
    bars = [f"  {'float':<6}{'█' * width} {human(before)}",
            f"  {'int8':<6}{'█' * max(1, round(width * after / before)):<{width}} {human(after)}"]
    return "\n".join([f"int8 size (encoder + joiner), predicted from {where}: {human(after)} "
                       f"({after / before:.0%} of their {human(before)}); {int8} layer(s) int8 with a scale table "
                       f"(Convolution, InnerProduct), {weight_only} weight-only (Gemm, LSTM), the rest fp16 or fp32 "
                       "(e.g. Convolution1D: ncnn has no int8 for it)", *bars] + last_run_sensitivity(config))


def last_run_sensitivity(config) -> list[str]:
    """The sorted sensitivity bars of the int8 run already in the output directory (what min_cosine would keep
    float first), or nothing."""
    import json

    from core.int8.report import report_sensitivity_lines
    path = Path(config.output.dir).expanduser() / "int8-layers.json"
    try:
        lines = report_sensitivity_lines(json.loads(path.read_text()), top=4)
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    return [f"the last int8 run in {path.parent}:", *lines] if lines else []


def parse_min_cosine(text: str) -> tuple[float | None, str | None]:
    """The field's value (None when empty) or a sentence naming the field."""
    from core.pipeline.config import min_cosine_problem
    text = text.strip()
    if not text:
        return None, None
    try:
        value = float(text)
    except ValueError:
        return None, f"min_cosine: {text!r} is not a number (e.g. 0.99), or leave it empty"
    problem = min_cosine_problem(value, "min_cosine")
    return (None, problem) if problem else (value, None)
