"""Text charts for the summaries (CLI and wizard alike): sizes as bars, int8 kinds per layer type as stacked bars,
activation histograms with their int8 threshold.

Plain strings of block characters, no plotting stack: the CLI path stays light and ``--json`` keeps the numbers
for anyone who wants to plot elsewhere. Widths are in terminal cells, sized to fit 80 columns.
"""
from __future__ import annotations

import math

from core.common.formatting import human

_EIGHTHS = " ▏▎▍▌▋▊▉"
# int8 kinds, in stacked order, with the block each one is drawn with
KINDS = (("int8", "█", "int8 (scale table)"), ("int8-weight-only", "▓", "int8 weights only"),
         ("fp16", "▒", "fp16"), ("fp32", "░", "fp32"))


def bar(value: float, scale: float, width: int) -> str:
    """``value`` of ``scale`` as a bar of ``width`` cells at most, in eighths of a cell."""
    if scale <= 0 or value <= 0:
        return ""
    eighths = max(1, round(8 * width * min(value, scale) / scale))
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def size_chart(sizes: list[dict], width: int = 36) -> list[str]:
    """Each model's pt / fp16 / fp32 / int8 file sizes as bars on one scale (the largest file is full width)."""
    rows = [(r["model"], kind, r.get(kind)) for r in sizes for kind in ("pt", "fp16", "fp32", "int8")
            if r.get(kind)]
    if not rows:
        return []
    scale = max(v for _, _, v in rows)
    lines, last = [], None
    for model, kind, value in rows:
        name = model if model != last else ""
        last = model
        lines.append(f"  {name:<11}{kind:<5} {bar(value, scale, width):<{width}} {human(value)}")
    return lines


def kind_chart(by_type: dict[str, dict], width: int = 20) -> list[str]:
    """What int8 did per layer type, as one stacked bar per type (cells in proportion to its fp16 bytes'
    share of the largest type), with a legend: why the int8 model is only this much smaller."""
    if not by_type:
        return []
    scale = max((t.get("bytes_fp16") or 0) for t in by_type.values()) or 1
    name_width = max(len(k) for k in by_type)
    lines = []
    for kind, t in sorted(by_type.items(), key=lambda kv: -(kv[1].get("bytes_fp16") or 0)):
        n = t.get("layers") or 0
        cells = max(1, round(width * (t.get("bytes_fp16") or 0) / scale)) if n else 0
        parts, used = [], 0
        for i, (key, block, _) in enumerate(KINDS):
            share = (t.get(key) or 0) / n if n else 0
            c = round(cells * share) if i < len(KINDS) - 1 else cells - used
            c = max(0, min(c, cells - used))
            parts.append(block * c)
            used += c
        lines.append(f"  {kind:<{name_width}} {''.join(parts):<{width}} {n:>3} layers, "
                     f"{human(t.get('bytes_fp16'))} -> {human(t.get('bytes_after'))}")
    lines.append("  " + "  ".join(f"{block} {label}" for _, block, label in KINDS))
    return lines


_SPARKS = "▁▂▃▄▅▆▇█"


def _num(x: float) -> str:
    return f"{x:.2f}" if 1 <= abs(x) < 1000 else f"{x:.3g}"


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%" if share >= 0.0005 or share == 0 else "<0.1%"


def histogram_chart(layer: dict, width: int = 76) -> list[str]:
    """One layer's activation histogram (``counts``: equal buckets over [0, absmax], drawn log-scaled, an empty
    bucket blank) as a sparkline, a ▲ under the bucket the int8 threshold falls in, and a line saying what it
    clips. ``layer``: a core.int8.histograms entry. More buckets than ``width`` cells are summed in groups."""
    counts = [max(0.0, float(c)) for c in layer["counts"]]
    group = -(-len(counts) // max(1, width))
    cells = [sum(counts[i:i + group]) for i in range(0, len(counts), group)]
    top = math.log1p(max(cells)) if cells and max(cells) > 0 else 1.0
    spark = "".join(" " if c <= 0 else _SPARKS[min(7, int(8 * math.log1p(c) / top - 1e-9))] for c in cells)
    absmax, threshold = float(layer["absmax"]), float(layer["threshold"])
    at = min(len(cells) - 1, int(threshold / absmax * len(cells))) if absmax > 0 else len(cells) - 1
    if layer.get("clipped_by_kl"):
        said = (f"threshold {_num(threshold)} = absmax: KL's would clip {_percent(layer['clipped_by_kl'])}, "
                "so the range is kept")
    else:
        said = f"threshold {_num(threshold)} of absmax {_num(absmax)} (clips {_percent(layer.get('clipped', 0))})"
    return [f"  {layer.get('net', '')} {layer.get('layer', '')}".rstrip(), f"  {spark}",
            "  " + " " * at + "▲", f"  {said}"[:80]]
