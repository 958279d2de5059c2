"""The encoder's initial states per architecture, in sherpa-ncnn's blob layout, from the metadata."""
from __future__ import annotations

import numpy as np

from core.model.architectures import ArchSpec


def _initial_states(arch: ArchSpec, meta: dict) -> list[np.ndarray]:
    if arch.name == "lstm":
        layers, dim, hidden = meta[1], meta[2], meta[3]
        return [np.array([9.0], dtype=np.float32), np.zeros((layers, dim), np.float32),
                np.zeros((layers, hidden), np.float32)]
    if arch.name == "conv-emformer":
        layers, memory, kernel, left, dim = meta[1], meta[2], meta[3], meta[4], meta[7]
        states = []
        for _ in range(layers):
            states += [np.zeros((memory, dim), np.float32), np.zeros((left, dim), np.float32),
                       np.zeros((left, dim), np.float32), np.zeros((dim, kernel - 1), np.float32)]
        return states
    layers, dims, att, ds, kernels = (list(meta[k]) for k in (16, 17, 18, 19, 20))
    left = meta[1] // 2 * meta[2]
    n = len(layers)
    kinds = [
        [np.zeros((layers[i],), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i]), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i]), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i] // 2), np.float32) for i in range(n)],
        [np.zeros((layers[i], left // ds[i], att[i] // 2), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i], kernels[i] - 1), np.float32) for i in range(n)],
        [np.zeros((layers[i], dims[i], kernels[i] - 1), np.float32) for i in range(n)],
    ]
    return [s for kind in kinds for s in kind]
