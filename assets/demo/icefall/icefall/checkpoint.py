"""icefall.checkpoint, reduced to the loading and averaging ``export-for-ncnn.py`` does.

Same semantics as icefall: ``load_checkpoint`` loads ``["model"]`` with
strict=False (missing or unexpected keys are ignored, shape mismatches still
raise), the averaging helpers load strictly through the caller and need the
``model_avg``/``average_period``/``batch_idx_train`` entries that training
checkpoints carry and a lone ``pretrained.pt`` lacks.
"""
from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import Tensor, nn


def load_checkpoint(filename: Path, model: nn.Module, model_avg: nn.Module | None = None,
                    strict: bool = False) -> Dict[str, Any]:
    """Load ``filename["model"]`` into ``model`` (strict=False by default, as in icefall)."""
    logging.info(f"Loading checkpoint from {filename}")
    checkpoint = torch.load(filename, map_location="cpu", weights_only=False)

    if next(iter(checkpoint["model"])).startswith("module."):
        logging.info("Loading checkpoint saved by DDP")
        dst_state_dict = model.state_dict()
        src_state_dict = checkpoint["model"]
        for key in dst_state_dict.keys():
            src_key = "{}.{}".format("module", key)
            dst_state_dict[key] = src_state_dict.pop(src_key)
        assert len(src_state_dict) == 0
        model.load_state_dict(dst_state_dict, strict=strict)
    else:
        model.load_state_dict(checkpoint["model"], strict=strict)

    checkpoint.pop("model")
    if model_avg is not None and "model_avg" in checkpoint:
        logging.info("Loading averaged model")
        model_avg.load_state_dict(checkpoint["model_avg"], strict=strict)
        checkpoint.pop("model_avg")
    return checkpoint


def average_checkpoints(filenames: List[Path], device: torch.device = torch.device("cpu")) -> dict:
    """The plain mean of the ``["model"]`` state dicts of ``filenames``."""
    n = len(filenames)
    avg = torch.load(filenames[0], map_location=device, weights_only=False)["model"]
    uniqued: Dict[int, str] = {}
    for k, v in avg.items():
        if v.data_ptr() not in uniqued:
            uniqued[v.data_ptr()] = k
    names = list(uniqued.values())
    for i in range(1, n):
        state_dict = torch.load(filenames[i], map_location=device, weights_only=False)["model"]
        for k in names:
            avg[k] += state_dict[k]
    for k in names:
        if avg[k].is_floating_point():
            avg[k] /= n
        else:
            avg[k] //= n
    return avg


def find_checkpoints(out_dir: Path, iteration: int = 0) -> List[str]:
    """``checkpoint-N.pt`` files, newest first; iteration < 0 keeps N <= -iteration, > 0 keeps N >= it."""
    checkpoints = list(glob.glob(f"{out_dir}/checkpoint-[0-9]*.pt"))
    pattern = re.compile(r"checkpoint-([0-9]+).pt")
    iter_checkpoints = []
    for c in checkpoints:
        result = pattern.search(c)
        if not result:
            logging.warning(f"Invalid checkpoint filename {c}")
            continue
        iter_checkpoints.append((int(result.group(1)), c))
    iter_checkpoints = sorted(iter_checkpoints, reverse=True, key=lambda x: x[0])
    if iteration >= 0:
        return [ic[1] for ic in iter_checkpoints if ic[0] >= iteration]
    return [ic[1] for ic in iter_checkpoints if ic[0] <= -iteration]


def average_checkpoints_with_averaged_model(filename_start: str, filename_end: str,
                                            device: torch.device = torch.device("cpu")) -> Dict[str, Tensor]:
    """The running-average model between two training checkpoints (start excluded), as icefall computes it."""
    state_dict_start = torch.load(filename_start, map_location=device, weights_only=False)
    state_dict_end = torch.load(filename_end, map_location=device, weights_only=False)

    average_period = state_dict_start["average_period"]
    batch_idx_train_start = (state_dict_start["batch_idx_train"] // average_period) * average_period
    batch_idx_train_end = (state_dict_end["batch_idx_train"] // average_period) * average_period
    interval = batch_idx_train_end - batch_idx_train_start
    assert interval > 0, interval
    weight_end = batch_idx_train_end / interval
    weight_start = 1 - weight_end

    avg = state_dict_end["model_avg"]
    model_start = state_dict_start["model_avg"]
    average_state_dict(avg, model_start, weight_1=1.0, weight_2=weight_start / weight_end,
                       scaling_factor=weight_end)
    return avg


def average_state_dict(state_dict_1: Dict[str, Tensor], state_dict_2: Dict[str, Tensor], weight_1: float,
                       weight_2: float, scaling_factor: float = 1.0) -> None:
    """In place: state_dict_1 = (state_dict_1 * weight_1 + state_dict_2 * weight_2) * scaling_factor."""
    uniqued: Dict[int, str] = {}
    for k, v in state_dict_1.items():
        if v.data_ptr() not in uniqued:
            uniqued[v.data_ptr()] = k
    for k in uniqued.values():
        v = state_dict_1[k]
        if torch.is_floating_point(v):
            v *= weight_1
            v += state_dict_2[k].to(device=v.device) * weight_2
            v *= scaling_factor
