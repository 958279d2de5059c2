"""What an encoder's ncnn files alone show about its icefall hyperparameters.

No shapes here: the Input count (stacks / layers), the LSTM layers' sizes, the depthwise convolutions
(dims, kernels), each Zipformer stack's states unbound into its layers (Slice outputs), and constants
pnnx wrote into Reshape, Crop and Slice layers (attention head sizes, sequence lengths, cache rows).
Every value is taken only when the relations icefall's code implies all hold; anything else stays unknown,
and the plan asks for it.
"""
from __future__ import annotations

from pathlib import Path

from core.model.found import Found
from core.model.spec import ArchSpec


def read_ncnn_graph(spec: ArchSpec, path: Path) -> Found:
    from core.ncnn.param import load_param
    found = Found()
    label = path.name
    parsed = load_param(path)
    model = parsed.model
    if model is None:
        found.problems.append(parsed.describe())
        return found
    spec.values_from_ncnn(model, label, found)
    return found
