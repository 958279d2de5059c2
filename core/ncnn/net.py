"""Loading a model into python ncnn: the SherpaMetaData pass-through layer, Mats that own their data, and
the keep-alive list python layers need."""
from __future__ import annotations

import numpy as np


class Keeper(list):
    """Python ncnn layers must outlive the Net: every instance and creator is kept here."""

    def keep(self, x):
        self.append(x)
        return x


def as_mat(arr):
    """A Mat that owns a copy of ``arr`` (float32; int32 stays int32 bits).

    ``ncnn.Mat(numpy_array)`` of python-ncnn 1.0.20261020 wraps a one-element array so that the forward
    crashes (SIGSEGV) when the graph passes it on: a one-layer Zipformer stack's cached_len state (1,) took
    calibration down. An ncnn-allocated Mat filled from the array never does.
    """
    import ncnn
    a = np.ascontiguousarray(arr)
    mat = ncnn.Mat(*a.shape[::-1]) if a.ndim else ncnn.Mat(1)
    view = np.asarray(mat)
    if a.dtype == np.int32:
        view.view(np.int32)[...] = a.reshape(view.shape)
    else:
        view[...] = a.astype(np.float32, copy=False).reshape(view.shape)
    return mat


def register_meta_layer(net, keeper: Keeper) -> None:
    import ncnn

    class SherpaMetaData(ncnn.Layer):
        def __init__(self):
            super().__init__()
            self.one_blob_only = False

        def load_param(self, pd):
            return 0

    creator = keeper.keep(lambda: keeper.keep(SherpaMetaData()))
    net.register_custom_layer("SherpaMetaData", creator, lambda layer: None)
