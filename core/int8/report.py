"""What int8 quantization did to every layer with weights, and its bytes: "why is int8 only this much smaller?"

Read from the files, not from the quantizer's memory, so it holds for the built-in quantizer and for ncnn2int8
alike: ncnn's own layers say what they load from the float source, the int8 result and the fp16 set
(core.int8.layers_loads, all in one child process: ncnn on a user's model never runs in the tool's own process), and
each weight blob's tag says what it became (ncnn's 0x000D4B38 int8, 0x01306B47 fp16; untagged or raw loads are fp32).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

INT8_TAG = 0x000D4B38
FP16_TAG = 0x01306B47
# int8 with a calibrated input scale (the scale table); other int8 types quantize their input at run time
WITH_TABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Convolution1D", "ConvolutionDepthWise1D",
              "Deconvolution", "DeconvolutionDepthWise")
PRECISIONS = ("int8", "int8-weight-only", "fp16", "fp32")
WHY_FLOAT = {
    "Convolution1D": "ncnn has no int8 Convolution1D",
    "ConvolutionDepthWise1D": "ncnn has no int8 ConvolutionDepthWise1D",
    "LayerNorm": "ncnn reads its gamma/beta as raw fp32",
    "BatchNorm": "ncnn reads its statistics as raw fp32",
    "MemoryData": "a constant, stored as ncnn wrote it",
    "Scale": "ncnn reads its scales as raw fp32",
    "PReLU": "ncnn reads its slopes as raw fp32",
}


class Int8ReportError(Exception):
    """The files cannot be compared (missing, or ncnn cannot read them); the message names the file."""


@dataclass
class NetFiles:
    net: str
    float_param: Path  # the float set quantization read (fp32, or fp16 when that is all there was)
    float_bin: Path
    int8_param: Path
    int8_bin: Path
    fp16_param: Path | None = None  # the shipped fp16 set, for the "vs fp16" column
    fp16_bin: Path | None = None


def _tag(data: bytes, start: int) -> int:
    return struct.unpack("<I", data[start:start + 4])[0] if start + 4 <= len(data) else -1


def _all_loads(pairs: list[tuple[Path, Path]]) -> list[dict[str, tuple[str, list, object]]]:
    """Each (param, bin)'s layers with loads: {name: (type, loads, the .bin mapped for its tags)}. ncnn's own layers
    say what they load, in one child process for all pairs and without copying the weights
    (core.int8.layers_loads); only the 4-byte tags are read here."""
    from core.int8.layers_loads import extents_in_child, open_bin
    from core.ncnn.bin_layout import LayoutError
    from core.ncnn.child import NcnnCrash
    for pair in pairs:
        for p in pair:
            if not Path(p).is_file():
                raise Int8ReportError(f"{p}: not found")
    try:
        found = extents_in_child([(Path(p), Path(b)) for p, b in pairs])
    except (LayoutError, NcnnCrash) as exc:
        raise Int8ReportError(str(exc)) from None
    out = []
    for (_, binary), (layers, _) in zip(pairs, found):
        data = open_bin(Path(binary))
        out.append({l.name: (l.type, l.loads, data) for l in layers if l.loads})
    return out


def precision_of(kind: str, loads: list, data: bytes) -> str:
    """int8 / int8-weight-only / fp16 / fp32 of one layer from its loaded blobs' tags."""
    tags = [_tag(data, ld.start) for ld in loads if ld.type == 0]
    if INT8_TAG in tags:
        return "int8" if kind in WITH_TABLE else "int8-weight-only"
    if FP16_TAG in tags:
        return "fp16"
    return "fp32"


def _nbytes(loads: list) -> int:
    return sum(ld.end - ld.start for ld in loads)


def net_layers(files: NetFiles, loads: tuple[dict, dict, dict] | None = None) -> list[dict]:
    """One row per int8-file layer with weights. ``loads``: this net's (float, int8, fp16) from :func:`_read_nets`
    when the caller read several nets at once."""
    before, after, fp16 = loads if loads is not None else _read_nets([files])[0]
    rows = []
    for name, (kind, layer_loads, data) in after.items():
        precision = precision_of(kind, layer_loads, data)
        row = {"net": files.net, "layer": name, "type": kind, "precision": precision,
               "bytes_before": _nbytes(before[name][1]) if name in before else None,
               "bytes_fp16": _nbytes(fp16[name][1]) if name in fp16 else None,
               "bytes_after": _nbytes(layer_loads)}
        if not precision.startswith("int8"):
            row["why"] = WHY_FLOAT.get(kind, "not quantized (no int8 kernel used for this type, or no scale)")
        rows.append(row)
    return rows


def _read_nets(nets: list[NetFiles]) -> list[tuple[dict, dict, dict]]:
    """(float, int8, fp16) loads of every net, all read in one child process."""
    pairs: list[tuple[Path, Path]] = []
    for n in nets:
        pairs += [(n.float_param, n.float_bin), (n.int8_param, n.int8_bin)]
        if n.fp16_param and n.fp16_bin:
            pairs.append((n.fp16_param, n.fp16_bin))
    found = iter(_all_loads(pairs))
    return [(next(found), next(found), next(found) if n.fp16_param and n.fp16_bin else {}) for n in nets]


def by_type(rows: list[dict]) -> dict[str, dict]:
    """Per layer type: how many layers became what, and the bytes before (float source), fp16 and after."""
    out: dict[str, dict] = {}
    for r in rows:
        t = out.setdefault(r["type"], {"layers": 0, **{p: 0 for p in PRECISIONS}, "bytes_before": 0,
                                       "bytes_fp16": 0, "bytes_after": 0})
        t["layers"] += 1
        t[r["precision"]] += 1
        for k in ("bytes_before", "bytes_fp16", "bytes_after"):
            t[k] += r.get(k) or 0
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes_after"]))


def build_report(nets: list[NetFiles]) -> dict:
    rows = [r for n, loads in zip(nets, _read_nets(nets)) for r in net_layers(n, loads)]
    totals = {k: sum(r.get(k) or 0 for r in rows) for k in ("bytes_before", "bytes_fp16", "bytes_after")}
    report = {"layers": rows, "by_type": by_type(rows), "totals": totals,
              "bytes": "bytes_before: the float weights quantization read; bytes_fp16: the shipped fp16 model; "
                       "bytes_after: the int8 model (weights, biases and scales of that layer)"}
    merge_sensitivity(report, nets)
    return report


def read_sidecar(nets: list[NetFiles], measured_only: bool = False) -> dict | None:
    """The built-in quantizer's sensitivity file beside the int8 files, when it describes exactly these int8 files
    (each net's int8 .bin hash matches): an old one beside files another tool wrote is ignored. ``measured_only``:
    None, without hashing the .bins (tens of MB at published sizes), when it says nothing was measured."""
    import hashlib
    import json

    from core.int8.sensitivity import SIDECAR
    if not nets:
        return None
    path = Path(nets[0].int8_param).parent / SIDECAR
    try:
        data = json.loads(path.read_text())
        if measured_only and not data.get("measured", True):
            return None
        for n in nets:
            with open(n.int8_bin, "rb") as fh:  # streamed: a published-size int8 .bin is tens of MB
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
            if data["nets"][n.net]["int8_sha256"] != digest:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return data


def merge_sensitivity(report: dict, nets: list[NetFiles]) -> None:
    """Per layer ``sensitivity`` (output cosine with only that layer int8) and ``kept_float``; per net the search."""
    data = read_sidecar(nets, measured_only=True)
    if data is None or not data.get("measured", True):
        return
    for row in report["layers"]:
        net = data["nets"].get(row["net"], {})
        if row["layer"] in net.get("sensitivity", {}):
            row["sensitivity"] = net["sensitivity"][row["layer"]]
        if row["layer"] in net.get("kept_float", []):
            row["kept_float"] = True
            row["why"] = f"kept float: among the most int8-sensitive layers (min_cosine {data.get('min_cosine')})"
    report["sensitivity"] = (
        "sensitivity: the mean output cosine of the layer's net (int8 vs fp32, on the calibration audio) when only "
        "that layer is int8 (lower: more sensitive)")
    report["mixed_precision"] = {"min_cosine": data.get("min_cosine"), "nets": {
        name: {k: net.get(k) for k in ("cosine_int8", "cosine", "kept_float", "bytes_int8", "bytes", "reached",
                                       "forwards", "forwards_per_layer", "seconds")}
        | {"bytes_cost": (net.get("bytes") or 0) - (net.get("bytes_int8") or 0)}
        for name, net in data["nets"].items()}}


def sensitivity_bars(sensitivity: dict[str, float], top: int = 6, width: int = 24) -> list[str]:
    """The most sensitive layers, most sensitive first, as text bars of 1 - cosine (longest: the worst layer)."""
    worst = sorted(sensitivity.items(), key=lambda kv: (kv[1], kv[0]))[:top]
    scale = max((1.0 - c for _, c in worst), default=0.0)
    name_width = max((len(n) for n, _ in worst), default=0)
    lines = []
    for name, cos in worst:
        loss = max(0.0, 1.0 - cos)
        n = round(width * loss / scale) if scale > 0 else 0
        bar = "█" * max(n, 1 if loss > 0 else 0)
        lines.append(f"  {name:<{name_width}} {bar:<{width}} {cos:.5f}  (1 - cos {loss:.1e})")
    return lines


def sensitivity_lines(data: dict, top: int = 6) -> list[str]:
    """The most sensitive layers of each net as a sorted bar chart, and what min_cosine kept float (from the
    sidecar, or the ``mixed_precision`` + ``layers`` of int8-layers.json)."""
    nets = data.get("nets") or {}
    lines = []
    for name, net in nets.items():
        sens = net.get("sensitivity") or {}
        if not sens:
            continue
        lines.append(f"int8 sensitivity, {name}: output cosine with only that layer int8, most sensitive first "
                     f"(every layer int8: {net.get('cosine_int8', 0):.5f})")
        lines += sensitivity_bars(sens, top)
        if (net.get("forwards_per_layer") or 0) < (net.get("forwards") or 0):
            lines.append(f"  ({name}: to stay within the time budget, some layers were measured on "
                         f"{net['forwards_per_layer']} of the {net['forwards']} recorded forwards)")
        kept = net.get("kept_float") or []
        if kept:
            cost = (net.get("bytes") or 0) - (net.get("bytes_int8") or 0)
            lines.append(f"min_cosine {data.get('min_cosine')}: {name} kept {len(kept)} layer(s) float "
                         f"({', '.join(kept)}): cosine {net.get('cosine_int8', 0):.5f} -> {net.get('cosine', 0):.5f}, "
                         f"+{cost} bytes")
            if not net.get("reached", True):
                lines.append(f"min_cosine {data.get('min_cosine')}: {name} does not reach it even with every layer "
                             "float; its int8 layers are all float now")
        elif data.get("min_cosine") is not None:
            lines.append(f"min_cosine {data.get('min_cosine')}: {name} reaches it with every layer int8 "
                         f"({net.get('cosine', 0):.5f})")
    return lines


def report_sensitivity_lines(report: dict, top: int = 6) -> list[str]:
    """:func:`sensitivity_lines` of an int8-layers.json (nothing when it has no sensitivity)."""
    mixed = report.get("mixed_precision") or {}
    nets: dict[str, dict] = {}
    for row in report.get("layers", []):
        if "sensitivity" in row:
            nets.setdefault(row["net"], {"sensitivity": {}})["sensitivity"][row["layer"]] = row["sensitivity"]
    for name, net in nets.items():
        net.update((mixed.get("nets") or {}).get(name) or {})
    return sensitivity_lines({"min_cosine": mixed.get("min_cosine"), "nets": nets}, top)


def predict_int8_bytes(nets: list[tuple[Path, Path]]) -> dict:
    """Before anything runs: the int8 .bin size of each (param, bin) (fp32 or fp16) the built-in quantizer would
    write, from its own per-type rules (ncnn reads the weights in a child process). Raises Int8ReportError."""
    from core.int8.calibrate import CalibrationError
    from core.int8.sensitivity import predict_in_child
    for pair in nets:
        for p in pair:
            if not Path(p).is_file():
                raise Int8ReportError(f"{p}: not found")
    try:
        rows = predict_in_child(nets)
    except CalibrationError as exc:
        raise Int8ReportError(str(exc)) from None
    return {"nets": rows, "bytes_before": sum(r["bytes_before"] for r in rows),
            "bytes_after": sum(r["bytes_after"] for r in rows)}


def format_by_type(report: dict) -> list[str]:
    """The by-type table as text lines (CLI log, model card)."""
    lines = [f"{'type':<24}{'layers':>7}{'int8':>6}{'w-only':>8}{'fp16':>6}{'fp32':>6}{'fp16 bytes':>12}"
             f"{'int8 bytes':>12}{'ratio':>7}"]
    for kind, t in report["by_type"].items():
        ratio = f"{t['bytes_after'] / t['bytes_fp16']:.0%}" if t["bytes_fp16"] else "-"
        lines.append(f"{kind:<24}{t['layers']:>7}{t['int8']:>6}{t['int8-weight-only']:>8}{t['fp16']:>6}"
                     f"{t['fp32']:>6}{t['bytes_fp16']:>12}{t['bytes_after']:>12}{ratio:>7}")
    tot = report["totals"]
    if tot["bytes_fp16"]:
        lines.append(f"{'all':<24}{len(report['layers']):>7}{'':>32}{tot['bytes_fp16']:>12}{tot['bytes_after']:>12}"
                     f"{tot['bytes_after'] / tot['bytes_fp16']:>7.0%}")
    return lines
