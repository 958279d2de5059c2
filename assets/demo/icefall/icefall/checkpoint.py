"""Checkpoint loading and averaging for the demo export scripts.

Semantics follow icefall's export path (so the wizard meets the same
behaviour): a single ``epoch-N.pt`` is loaded with strict=False (missing and
unexpected keys are ignored, shape mismatches still raise); averages of
several checkpoints are loaded strictly by the caller; the "averaged model"
mode needs the ``model_avg``, ``average_period`` and ``batch_idx_train``
entries that training checkpoints have and a lone pretrained.pt lacks.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)\.pt$")


def _read(path) -> dict:
    # These are the user's own training files; icefall reads them the same way.
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap(state: dict) -> dict:
    if any(k.startswith("module.") for k in state):
        logging.info("Loading checkpoint saved by DDP")
        return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return state


def load_checkpoint(filename, model: nn.Module, strict: bool = False) -> dict:
    """Load ``filename["model"]`` into ``model``; returns the rest of the checkpoint."""
    logging.info(f"Loading checkpoint from {filename}")
    checkpoint = _read(filename)
    model.load_state_dict(_unwrap(checkpoint.pop("model")), strict=strict)
    return checkpoint


def average_checkpoints(filenames) -> dict:
    """Element-wise mean of the ``model`` state dicts (integer buffers use floor division)."""
    total = None
    for name in filenames:
        state = _unwrap(_read(name)["model"])
        if total is None:
            total = {k: v.clone() for k, v in state.items()}
        else:
            for k in total:
                total[k] += state[k]
    n = len(filenames)
    return {k: v / n if v.is_floating_point() else v // n for k, v in total.items()}


def find_checkpoints(exp_dir, up_to_iteration: int) -> list[str]:
    """``checkpoint-K.pt`` files in ``exp_dir`` with K <= up_to_iteration, newest first."""
    found = []
    for path in Path(exp_dir).glob("checkpoint-*.pt"):
        m = _CHECKPOINT_NAME.search(path.name)
        if m and int(m.group(1)) <= up_to_iteration:
            found.append((int(m.group(1)), str(path)))
    return [p for _, p in sorted(found, reverse=True)]


def average_between(start_file, end_file) -> dict:
    """The running-average model accumulated between two training checkpoints (start excluded).

    Training keeps ``model_avg`` as an average over all batches so far; the
    average over (start, end] is therefore (e * avg_end - s * avg_start) / (e - s),
    with s and e the batch counts rounded down to the averaging period.
    """
    start, end = _read(start_file), _read(end_file)
    period = start["average_period"]
    s = start["batch_idx_train"] // period * period
    e = end["batch_idx_train"] // period * period
    if e <= s:
        raise ValueError(f"{end_file} is not later than {start_file}")
    avg_start, avg_end = start["model_avg"], end["model_avg"]
    return {k: (v * e - avg_start[k] * s) / (e - s) if v.is_floating_point() else v for k, v in avg_end.items()}
