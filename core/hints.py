"""Known failure strings in tool output, and what to tell the user about each."""
from __future__ import annotations

import re

HINTS: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), h) for p, h in (
    (r"No module named 'k2'|No module named 'lhotse'|No module named 'icefall'",
     "the export needs icefall's Python environment: set python = \"/path/to/icefall-venv/bin/python\" "
     "in [files] of wizard.toml (or --python), and icefall_root to your icefall checkout"),
    (r"No module named '(\w+)'",
     "the export's Python lacks a module; run the export with the interpreter of your icefall environment"),
    (r"size mismatch for|Missing key\(s\) in state_dict|Unexpected key\(s\) in state_dict",
     "the hyperparameters don't match the checkpoint: compare your flags with the ones the model was trained "
     "with (sherpa-ncnn-wizard detect CHECKPOINT reads them from the weights)"),
    (r"layer (\S+) not exists or registered",
     "a layer type this ncnn build does not have: the pnnx output holds an operator sherpa-ncnn's runtime lacks "
     "(run sherpa-ncnn-wizard doctor on the model directory)"),
    (r"read_proto_from_binary failed|open failed",
     "pnnx could not read the TorchScript file: it is missing, truncated or not a torch.jit trace"),
    (r"unrecognized arguments:",
     "the export script does not know one of the flags: your icefall checkout may be older or newer than "
     "expected (e.g. --bpe-model instead of --tokens)"),
    (r"No checkpoints found|Not enough checkpoints|epoch-\d+\.pt.*(No such file|not found)",
     "the checkpoint files the export looks for are not there: check epoch/iter/avg and the exp dir"),
    (r"Unable to create a model from specified model files",
     "sherpa-ncnn found no usable SherpaMetaData in the encoder param"),
    (r"too old version of Zipformer",
     "the Zipformer metadata lacks 15=1 (model version); add it"),
))


def hint_for(lines: list[str]) -> str | None:
    """The hint of the first known failure string found, scanning from the end."""
    for line in reversed(lines):
        for pattern, hint in HINTS:
            if pattern.search(line):
                return hint
    return None
