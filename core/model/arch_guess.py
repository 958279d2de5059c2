"""The one guess of an encoder graph's architecture (doctor, the wizard's preselection, --from-ncnn's --arch check).

Layer types decide first (each architecture module names the types only it has: LSTM; the operators only a
Zipformer has), then the number of state inputs: ConvEmformer has 4 per layer, Zipformer 7 per stack.
"""
from __future__ import annotations

from core.model.architectures import ARCHITECTURES


def guess_arch(model) -> tuple[str | None, str]:
    """(architecture name or None, why) for a parsed encoder ParamFile."""
    types = set(model.layer_types())
    states = len(model.input_names) - 1
    for spec in ARCHITECTURES.values():
        found = sorted(types & spec.graph_layer_types)
        if found:
            return spec.name, f"it has {', '.join(found)} layers"
    fits = [spec for spec in ARCHITECTURES.values()
            if spec.states_per_unit and states > 0 and states % spec.states_per_unit == 0]
    if len(fits) == 1:
        spec = fits[0]
        return spec.name, f"{states} state inputs ({spec.states_per_unit} per {spec.unit_name})"
    return None, f"{states} state inputs fit more than one architecture" if states > 0 else "no state inputs"
