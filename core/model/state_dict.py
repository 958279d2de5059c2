"""Reading an icefall state dict's key names and shapes (no torch needed: anything with ``.shape``).

Shared by the architecture modules (what their weights reveal) and core.model.checkpoint (detection).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from core.model.spec import Value


class CheckpointError(Exception):
    """The checkpoint cannot be used; the message says why."""


def indices(state: Mapping[str, Any], pattern: str) -> list[int]:
    """The sorted distinct integers the first group of ``pattern`` matches in the keys (layer numbers)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state for m in [rx.match(k)] if m})


def shape(state: Mapping[str, Any], key: str) -> tuple[int, ...] | None:
    v = state.get(key)
    return tuple(int(x) for x in v.shape) if v is not None else None


def decoder_joiner_values(state: Mapping[str, Any]) -> dict[str, Value]:
    """Decoder and joiner sizes (the three recipes share them)."""
    out: dict[str, Value] = {}
    emb = shape(state, "decoder.embedding.weight")
    if emb:
        out["vocab_size"], out["decoder_dim"] = emb[0], emb[1]
    conv = shape(state, "decoder.conv.weight")
    out["context_size"] = conv[2] if conv and len(conv) == 3 else 1
    out_linear = shape(state, "joiner.output_linear.weight")
    if out_linear:
        out["joiner_out"] = out_linear[0]
    enc_proj = shape(state, "joiner.encoder_proj.weight")
    if enc_proj:
        out["joiner_dim"] = enc_proj[0]
        out["encoder_out_dim"] = enc_proj[1]
    return out


def fixed_dim_notes(recipe: str, extras: Mapping[str, Value]) -> list[str]:
    """For recipes whose export fixes decoder/joiner dims at 512 (get_params): the dims the weights have otherwise."""
    out = []
    for key, fixed in (("decoder_dim", 512), ("joiner_dim", 512)):
        if key in extras and extras[key] != fixed:
            out.append(f"{key} is {extras[key]}, but icefall's {recipe.rsplit('/', 1)[-1]} "
                       f"export fixes it at {fixed} (get_params); the export needs an edited recipe")
    return out
