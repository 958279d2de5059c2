"""Which ncnn layer types sherpa-ncnn's runtime can load.

sherpa-ncnn builds its own libncnn with a long list of layers compiled out,
so a graph that plain ncnn runs can still fail in sherpa-ncnn with
``layer X not exists or registered`` followed by a segfault. These sets were
measured on the sherpa-ncnn 2.1.15 wheel by appending one layer of each type
to a model and loading it in a child process (see test_runtime_layer_table_matches_wheel in tests/core/pnnx/test_pnnx_real.py,
which re-checks a sample against the installed wheel).
"""
from __future__ import annotations

SHERPA_NCNN_VERSION_PROBED = "2.1.15"

# ncnn built-ins present in sherpa-ncnn's libncnn.
RUNTIME_BUILTIN = frozenset("""
Input BinaryOp Cast Concat Convolution Convolution1D ConvolutionDepthWise1D Crop
Deconvolution1D DeconvolutionDepthWise1D Dequantize Dropout Eltwise Embed ExpandDims
Flatten Flip GELU GLU Gemm InnerProduct LayerNorm LSTM MatMul MemoryData Packing
Padding Permute Quantize Reduction ReLU Requantize Reshape RNN Sigmoid Slice Softmax
Split Squeeze TanH UnaryOp
""".split())

# sherpa-ncnn's own layers; registered on the encoder net only.
SHERPA_CUSTOM = frozenset({"SherpaMetaData", "PoolingModuleNoProj", "TensorAsStrided", "SimpleUpsample", "Stack"})

# ncnn built-ins that sherpa-ncnn compiles out (measured, not exhaustive of ncnn).
RUNTIME_MISSING = frozenset("""
AbsVal ArgMax BatchNorm Bias BNLL Deconvolution ELU Exp Log LRN MVN Pooling Power PReLU
Proposal ROIPooling Scale SPP Threshold Tile ConvolutionDepthWise Normalize PriorBox
DetectionOutput Interp DeconvolutionDepthWise ShuffleChannel InstanceNorm Clip Reorg
YoloDetectionOutput Yolov3DetectionOutput PSROIPooling ROIAlign HardSigmoid SELU
HardSwish Noop PixelShuffle DeepCopy Mish StatisticsPooling Swish GroupNorm Softplus GRU
MultiHeadAttention Pooling1D Convolution3D ConvolutionDepthWise3D Pooling3D
Deconvolution3D DeconvolutionDepthWise3D Einsum DeformableConv2D Fold Unfold GridSample
CumulativeSum CopyTo Erf Diag CELU Shrink RMSNorm Spectrogram InverseSpectrogram SDPA
RotaryEmbed
""".split())

_HINTS = {
    "Swish": "pnnx turns nn.SiLU into Swish; write x * torch.sigmoid(x) instead",
    "Clip": "pnnx turns torch.clamp into Clip; avoid clamp in the traced graph",
    "ConvolutionDepthWise": "2-D depthwise convolutions are compiled out; use 1-D depthwise convolutions",
    "Tile": "the icefall pnnx fork emits sherpa-ncnn's own layers instead",
    "CumulativeSum": "the Zipformer pooling needs sherpa-ncnn's PoolingModuleNoProj (icefall pnnx fork)",
}


def runtime_problem(layer_type: str, *, encoder: bool = True) -> str | None:
    """Why sherpa-ncnn cannot load ``layer_type``, or None when it can."""
    if layer_type in RUNTIME_BUILTIN:
        return None
    if layer_type in SHERPA_CUSTOM:
        return None if encoder else f"{layer_type} is registered only for the encoder in sherpa-ncnn"
    if layer_type in RUNTIME_MISSING:
        hint = _HINTS.get(layer_type)
        base = f"{layer_type} is compiled out of sherpa-ncnn {SHERPA_NCNN_VERSION_PROBED}'s ncnn"
        return f"{base}; {hint}" if hint else base
    if layer_type.startswith(("pnnx.", "torch.", "Tensor.", "F.", "nn.", "aten::", "prim::")):
        return f"{layer_type} is an operator pnnx could not lower to an ncnn layer"
    return f"{layer_type} is not a layer sherpa-ncnn {SHERPA_NCNN_VERSION_PROBED} is known to have"
