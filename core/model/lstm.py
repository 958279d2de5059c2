"""LSTM transducer (icefall's lstm_transducer_stateless2/3): everything the tool knows about it.

Flags, SherpaMetaData keys 0-3, the rules, the fixed I/O (x, x_lens, h, c), the 9-frame / 4-frame streaming that
sherpa-ncnn's lstm-model.h hard-codes, the states, and how weights, traced inputs and graphs reveal each
hyperparameter. Sources: ../shared/reference/icefall-export.md §3, sherpa-ncnn.md §1.5, §2.4.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from core.model.found import Found
from core.model.spec import (CONTEXT_SIZE, ArchSpec, HyperParam, IOContract, MetaEntry, Problem, Value, Values,
                             context_size_warning, positive_problems)
from core.model.state_dict import decoder_joiner_values, indices, shape

SEGMENT, OFFSET = 9, 4  # frames sherpa-ncnn feeds per chunk and advances by (fixed by its runtime)

PARAMS = (
    HyperParam("--num-encoder-layers", "int", "12", "Number of RNN encoder layers.", meta_key=1, in_weights=True),
    HyperParam("--encoder-dim", "int", "512", "Encoder output dimension.", meta_key=2, in_weights=True),
    HyperParam("--rnn-hidden-size", "int", "1024", "Hidden dim for LSTM layers.", meta_key=3, in_weights=True),
    HyperParam("--aux-layer-period", "int", "0", "Training only: combine every N-th "
               "layer's output at random (0 = off).", minimum=0,
               training_only=True),
    CONTEXT_SIZE,
)

_LAYER_KEY = re.compile(r"encoder\.encoder\.layers\.\d+\.lstm\.weight_ih_l0$")


class Lstm(ArchSpec):
    name = "lstm"
    title = "LSTM"
    model_type = 3
    recipe = "egs/librispeech/ASR/lstm_transducer_stateless2"
    summary = ("The LSTM transducer of icefall's lstm_transducer_stateless2 recipe (lstm_transducer_stateless3 "
               "links to the same export script): stacked LSTMs with projection, fed 9 frames and advanced by 4.")
    hyperparams = PARAMS
    aliases = ("lstm_transducer_stateless2", "lstm_transducer_stateless3")
    graph_layer_types = frozenset({"LSTM"})
    runtime_fixed_geometry = (SEGMENT, OFFSET)
    recipe_fixed_dims = ("decoder_dim", "joiner_dim", "dim_feedforward")

    # -- the export and the metadata -------------------------------------------------------------

    def metadata(self, v: Values) -> list[MetaEntry]:
        return [
            MetaEntry(0, 3, "model type 3 = LSTM (fixed)"),
            MetaEntry(1, v["num_encoder_layers"], "--num-encoder-layers"),
            MetaEntry(2, v["encoder_dim"], "--encoder-dim"),
            MetaEntry(3, v["rnn_hidden_size"], "--rnn-hidden-size"),
        ]

    def rules(self, v: Values) -> list[Problem]:
        problems = positive_problems(PARAMS, v)
        if any(p.severity == "error" for p in problems):
            return problems
        if v["rnn_hidden_size"] < v["encoder_dim"]:
            problems.append(Problem("error", ("--rnn-hidden-size", "--encoder-dim"),
                                    f"--rnn-hidden-size {v['rnn_hidden_size']} must be >= --encoder-dim "
                                    f"{v['encoder_dim']} (the LSTM projects its hidden state down to the encoder "
                                    "dim)"))
        return problems + context_size_warning(v)

    def io_contract(self, v: Values) -> IOContract:
        return IOContract(("in0", "in1", "in2", "in3"), ("out0", "out2", "out3"),
                          "in0 features, in1 length, in2 hx, in3 cx; out0 encoder_out, out2 hx, out3 cx")

    def segment_offset(self, v: Values) -> tuple[int, int]:
        return SEGMENT, OFFSET

    # -- how sherpa-ncnn runs it -------------------------------------------------------------------

    def runtime_geometry(self, meta: Mapping[int, Any]) -> tuple[int, int]:
        return SEGMENT, OFFSET

    def initial_states(self, meta: Mapping[int, Any]) -> list:
        import numpy as np
        layers, dim, hidden = meta[1], meta[2], meta[3]
        return [np.array([float(SEGMENT)], dtype=np.float32), np.zeros((layers, dim), np.float32),
                np.zeros((layers, hidden), np.float32)]

    def state_map(self, n_states: int) -> list[tuple[int, int]]:
        return [(2, 2), (3, 3)]  # in1 (the length) is not a state: sherpa-ncnn feeds it fresh every chunk

    def torch_input_shapes(self, meta: Mapping[int, Any], lengths_dtype: str) -> list[tuple[tuple[int, ...], str]]:
        layers, dim, hidden = int(meta[1]), int(meta[2]), int(meta[3])
        return [((1, SEGMENT, 80), "float32"), ((1,), lengths_dtype), ((layers, 1, dim), "float32"),
                ((layers, 1, hidden), "float32")]

    def check_metadata_keys(self, meta, error, warning) -> bool:
        for k, what in ((1, "--num-encoder-layers"), (2, "--encoder-dim"), (3, "--rnn-hidden-size")):
            if not (isinstance(meta.get(k), int) and meta[k] > 0):
                error(f"key {k} ({what}) is missing or 0; the LSTM states get the wrong shape")
        return True

    # -- what a checkpoint's weights reveal ----------------------------------------------------------

    def owns_weights(self, state: Mapping[str, Any]) -> bool:
        return any(_LAYER_KEY.match(k) for k in state)

    def values_from_weights(self, state: Mapping[str, Any]) -> dict[str, Value]:
        layers = indices(state, r"encoder\.encoder\.layers\.(\d+)\.lstm\.weight_ih_l0$")
        ih = shape(state, "encoder.encoder.layers.0.lstm.weight_ih_l0")
        return {"num_encoder_layers": len(layers), "encoder_dim": ih[1], "rnn_hidden_size": ih[0] // 4,
                "context_size": decoder_joiner_values(state)["context_size"]}

    def detection_notes(self, state, params, extras) -> list[str]:
        notes = []
        ff = shape(state, "encoder.encoder.layers.0.feed_forward.0.weight")
        extras["dim_feedforward"] = ff[0] if ff else None
        extras["proj_size"] = (shape(state, "encoder.encoder.layers.0.lstm.weight_hr_l0") or (0,))[0]
        extras["giga_heads"] = any(k.startswith("decoder_giga.") for k in state)
        if extras["giga_heads"]:
            notes.append("the checkpoint has lstm_transducer_stateless2's giga heads (decoder_giga.*): export with "
                         "--avg 1 --use-averaged-model 0 (the strict loads of the other paths fail on the extra keys)")
        return notes

    # -- what a graph reveals ------------------------------------------------------------------------------

    def values_from_input_shapes(self, shapes, label, found: Found) -> None:
        if len(shapes) != 4 or len(shapes[2]) != 3 or len(shapes[3]) != 3 or shapes[2][0] != shapes[3][0]:
            found.problems.append(f"{label}: inputs {shapes}; an LSTM encoder has x, x_lens, (L,1,D), (L,1,H)")
            return
        found.put("num_encoder_layers", shapes[2][0], f"{label}: hx rows")
        found.put("encoder_dim", shapes[2][-1], f"{label}: hx width")
        found.put("rnn_hidden_size", shapes[3][-1], f"{label}: cx width")

    def values_from_ncnn(self, model, label, found: Found) -> None:
        lstms = model.layers_of_type("LSTM")
        if not lstms:
            return
        d = {int(x.get(0, 0)) for x in lstms}
        h = {int(x.get(3, x.get(0, 0))) for x in lstms}
        found.put("num_encoder_layers", len(lstms), f"{label}: {len(lstms)} LSTM layers")
        if len(d) == 1:
            found.put("encoder_dim", d.pop(), f"{label}: LSTM num_output (0=)")
        if len(h) == 1:
            found.put("rnn_hidden_size", h.pop(), f"{label}: LSTM hidden size (3=)")


LSTM = Lstm()
