"""The one guess of an encoder graph's architecture (doctor, the wizard's preselection, --from-ncnn's --arch check).

Layer types decide first (an LSTM layer; the operators only a Zipformer has), then the number of state inputs:
ConvEmformer has 4 per layer, Zipformer 7 per stack, LSTM exactly 3 (lengths, h, c).
"""
from __future__ import annotations

ZIPFORMER_TYPES = {"CumulativeSum", "torch.as_strided", "PoolingModuleNoProj", "TensorAsStrided", "SimpleUpsample",
                   "torch.cumsum", "Stack"}


def guess_arch(model) -> tuple[str | None, str]:
    """(architecture name or None, why) for a parsed encoder ParamFile."""
    types = set(model.layer_types())
    states = len(model.input_names) - 1
    if "LSTM" in types:
        return "lstm", "it has LSTM layers"
    found = sorted(types & ZIPFORMER_TYPES)
    if found:
        return "zipformer", f"it has {', '.join(found)} layers"
    by4, by7 = states > 0 and states % 4 == 0, states > 0 and states % 7 == 0
    if by4 and not by7:
        return "conv-emformer", f"{states} state inputs (4 per ConvEmformer layer)"
    if by7 and not by4:
        return "zipformer", f"{states} state inputs (7 per Zipformer stack)"
    return None, f"{states} state inputs fit more than one architecture" if states > 0 else "no state inputs"
