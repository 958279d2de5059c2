"""The activation histograms of the layers where int8 clips most, kept so the summary can draw them.

A scale table says only "threshold 3.2"; whether that cuts off a tail of rare outliers or a real second mode is
visible in the histogram. Calibration keeps, for the few layers with the largest share of values above their
threshold (encoder and joiner together; a layer whose KL threshold the guard overrode counts with the share KL
would have clipped), a compact histogram (BUCKETS sums of the 2048 bins over [0, absmax]), its absmax and the
chosen threshold, written as JSON beside the scale tables (HISTOGRAMS).
"""
from __future__ import annotations

import math

import numpy as np

from core.int8.calibrate import NUM_BINS

HISTOGRAMS = "calibration-histograms.json"  # beside the scale tables (core.pipeline.layout.table_file)
BUCKETS = 64  # 2048 / 64 = 32 bins each, exactly; 64 cells plus an indent fit 80 columns
KEEP = 4  # layers kept


def clipped_share(hist: np.ndarray, absmax: float, threshold: float) -> float:
    """The share of the counts in bins wholly above ``threshold`` (bins are equal over [0, absmax])."""
    total = float(hist.sum())
    if total <= 0 or absmax <= 0 or threshold >= absmax:
        return 0.0
    first = min(len(hist), math.ceil(threshold / absmax * len(hist)))
    return float(hist[first:].sum()) / total


def compact(hist: np.ndarray, buckets: int = BUCKETS) -> list[float]:
    """The histogram summed into ``buckets`` equal buckets (``len(hist)`` must be a multiple of it)."""
    if len(hist) % buckets:
        raise ValueError(f"{len(hist)} bins do not split into {buckets} equal buckets")
    return [round(float(c), 3) for c in np.asarray(hist, dtype=np.float64).reshape(buckets, -1).sum(axis=1)]


def worst_layers(nets: dict[str, tuple], keep: int = KEEP, buckets: int = BUCKETS) -> list[dict]:
    """``nets``: net name -> (ScaleTable, {layer: input blob}, {blob: BlobStats | ExactStats}). The ``keep``
    layers that clip the largest share of their input (0 < share), most clipped first, each as
    {net, layer, absmax, threshold, clipped, clipped_by_kl, counts}."""
    rows = []
    for net, (table, bottoms, stats) in nets.items():
        hists: dict[str, np.ndarray] = {}
        for name, a in table.activations.items():
            blob = bottoms.get(name)
            if blob not in stats:
                continue
            if blob not in hists:
                hists[blob] = stats[blob].histogram(NUM_BINS)
            share = clipped_share(hists[blob], a.absmax, a.threshold)
            score = max(share, a.clipped_by_kl)
            if score > 0:
                rows.append((score, net, name, a, share, hists[blob]))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    return [{"net": net, "layer": name, "absmax": a.absmax, "threshold": a.threshold, "clipped": share,
             "clipped_by_kl": a.clipped_by_kl, "counts": compact(hist, buckets)}
            for _, net, name, a, share, hist in rows[:keep]]


def document(layers: list[dict], buckets: int = BUCKETS) -> dict:
    """The JSON written beside the scale tables."""
    return {"buckets": buckets, "bins": NUM_BINS, "layers": layers}


def read_layers(data: dict) -> list[dict]:
    """The layers of a HISTOGRAMS document that have what a chart needs (others are left out, not fatal)."""
    layers = []
    for layer in (data or {}).get("layers") or []:
        try:
            counts = [float(c) for c in layer["counts"]]
            absmax, threshold = float(layer["absmax"]), float(layer["threshold"])
        except (KeyError, TypeError, ValueError):
            continue
        if counts and absmax > 0 and 0 < threshold <= absmax * (1 + 1e-9):
            layers.append(dict(layer, counts=counts, absmax=absmax, threshold=threshold))
    return layers
