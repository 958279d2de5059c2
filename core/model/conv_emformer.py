"""ConvEmformer (icefall's conv_emformer_transducer_stateless2): everything the tool knows about it.

Flags, SherpaMetaData keys 0-7, the rules icefall's emformer2.py and sherpa-ncnn impose, the 1 + 4 x layers
encoder I/O, the states sherpa-ncnn starts from, and how weights, traced inputs, pnnx's graph and the ncnn graph
reveal each hyperparameter. Sources: ../shared/reference/icefall-export.md §2, sherpa-ncnn.md §1.4, §2.3.
"""
from __future__ import annotations

from typing import Any, Mapping

from core.model.found import Found
from core.model.spec import (CONTEXT_SIZE, SUBSAMPLING, ArchSpec, HyperParam, IOContract, MetaEntry, Problem, Value,
                             Values, blob_names, context_size_warning, is_power_of_two, positive_problems)
from core.model.state_dict import CheckpointError, decoder_joiner_values, indices, shape

PAD = 11  # icefall's ConvEmformer export traces T = chunk + right context + 11 (2 x 4 + 3)

PARAMS = (
    HyperParam("--num-encoder-layers", "int", "12", "Number of conv-emformer encoder layers.", meta_key=1,
               in_weights=True),
    HyperParam("--encoder-dim", "int", "512", "Attention dim for the Emformer.", meta_key=7, in_weights=True),
    HyperParam("--nhead", "int", "8", "Number of attention heads for the Emformer."),
    HyperParam("--dim-feedforward", "int", "2048", "Feed-forward dimension for the Emformer.", in_weights=True),
    HyperParam("--cnn-module-kernel", "int", "31", "Kernel size for the convolution module.", meta_key=3,
               in_weights=True),
    HyperParam("--left-context-length", "int", "32", "Number of frames before subsampling for left context in "
               "the Emformer.", meta_key=4, meta_scale=SUBSAMPLING,
               minimum=0),
    HyperParam("--chunk-length", "int", "32", "Number of frames before subsampling for each chunk in the "
               "Emformer.", meta_key=5),
    HyperParam("--right-context-length", "int", "8", "Number of frames before subsampling for right context in "
               "the Emformer.", meta_key=6, minimum=0),
    HyperParam("--memory-size", "int", "0", "Number of entries in the memory for the Emformer.", meta_key=2,
               minimum=0),
    CONTEXT_SIZE,
)


class ConvEmformer(ArchSpec):
    name = "conv-emformer"
    title = "ConvEmformer"
    model_type = 1
    recipe = "egs/librispeech/ASR/conv_emformer_transducer_stateless2"
    summary = ("The ConvEmformer of icefall's conv_emformer_transducer_stateless2 recipe: an Emformer with a "
               "convolution module and a memory bank, decoded in chunks of --chunk-length frames plus "
               "--right-context-length look-ahead, with --left-context-length frames of cached keys and values.")
    hyperparams = PARAMS
    aliases = ("emformer", "conv_emformer", "conv_emformer_transducer_stateless2")
    states_per_unit, unit_name = 4, "ConvEmformer layer"
    recipe_fixed_dims = ("decoder_dim", "joiner_dim")

    # -- the export and the metadata -------------------------------------------------------------

    def metadata(self, v: Values) -> list[MetaEntry]:
        return [
            MetaEntry(0, 1, "model type 1 = ConvEmformer (fixed)"),
            MetaEntry(1, v["num_encoder_layers"], "--num-encoder-layers"),
            MetaEntry(2, v["memory_size"], "--memory-size"),
            MetaEntry(3, v["cnn_module_kernel"], "--cnn-module-kernel"),
            MetaEntry(4, v["left_context_length"] // SUBSAMPLING,  # not the flag itself: see reference §1.4.1
                      "--left-context-length / 4 (the cache length after subsampling)"),
            MetaEntry(5, v["chunk_length"], "--chunk-length"),
            MetaEntry(6, v["right_context_length"], "--right-context-length"),
            MetaEntry(7, v["encoder_dim"], "--encoder-dim"),
        ]

    def rules(self, v: Values) -> list[Problem]:
        problems = positive_problems(PARAMS, v)
        if any(p.severity == "error" for p in problems):
            return problems
        for name, flag in (("left_context_length", "--left-context-length"),
                           ("right_context_length", "--right-context-length")):
            if v[name] % SUBSAMPLING:
                problems.append(Problem("error", (flag,), f"{flag} must be a multiple of 4; got {v[name]}"))
        chunk = v["chunk_length"]
        if chunk % SUBSAMPLING or not is_power_of_two(chunk // SUBSAMPLING):
            problems.append(Problem("error", ("--chunk-length",),
                                    f"--chunk-length / 4 must be a power of two (icefall's emformer2.py asserts "
                                    f"it); got {chunk}"))
        if v["encoder_dim"] % v["nhead"]:
            problems.append(Problem("error", ("--encoder-dim", "--nhead"),
                                    f"--encoder-dim {v['encoder_dim']} must be divisible by --nhead {v['nhead']}"))
        if v["cnn_module_kernel"] % 2 == 0:
            problems.append(Problem("error", ("--cnn-module-kernel",),
                                    f"--cnn-module-kernel must be odd; got {v['cnn_module_kernel']}"))
        if v["memory_size"] == 0:  # seen with icefall's real code: emformer2.py's memory-less path
            problems.append(Problem("error", ("--memory-size",),
                                    "--memory-size is 0 (icefall's training default): without a memory bank "
                                    "icefall's Emformer builds torch.empty(0), which pnnx cannot convert and "
                                    "sherpa-ncnn cannot feed (a memory state of 0 rows). Give the value the model "
                                    "was trained with (the published ConvEmformer models use 32); a model trained "
                                    "with 0 cannot run in sherpa-ncnn"))
        return problems + context_size_warning(v)

    def io_contract(self, v: Values) -> IOContract:
        n = 1 + 4 * v["num_encoder_layers"]
        return IOContract(blob_names("in", n), blob_names("out", n),
                          f"1 + 4 x {v['num_encoder_layers']} layers = {n} inputs and outputs, interleaved per layer")

    def segment_offset(self, v: Values) -> tuple[int, int]:
        return v["chunk_length"] + v["right_context_length"] + PAD, v["chunk_length"]

    # -- how sherpa-ncnn runs it -------------------------------------------------------------------

    def runtime_geometry(self, meta: Mapping[int, Any]) -> tuple[int, int]:
        chunk, right = _int(meta, 5), _int(meta, 6)
        return chunk + right + 2 * 4 + 3, chunk

    def initial_states(self, meta: Mapping[int, Any]) -> list:
        import numpy as np
        layers, memory, kernel, left, dim = meta[1], meta[2], meta[3], meta[4], meta[7]
        states = []
        for _ in range(layers):
            states += [np.zeros((memory, dim), np.float32), np.zeros((left, dim), np.float32),
                       np.zeros((left, dim), np.float32), np.zeros((dim, kernel - 1), np.float32)]
        return states

    def torch_input_shapes(self, meta: Mapping[int, Any], lengths_dtype: str) -> list[tuple[tuple[int, ...], str]]:
        layers, memory, kernel, left, chunk, right, dim = (int(meta[k]) for k in range(1, 8))
        f32 = "float32"
        shapes = [((1, chunk + right + PAD, 80), f32)]
        for _ in range(layers):
            shapes += [((memory, 1, dim), f32), ((left, 1, dim), f32), ((left, 1, dim), f32),
                       ((1, dim, kernel - 1), f32)]
        return shapes

    def check_metadata_keys(self, meta, error, warning) -> bool:
        def has_int(k):
            return isinstance(meta.get(k), int) and meta[k] > 0
        for k, what in ((1, "--num-encoder-layers"), (5, "--chunk-length"), (7, "--encoder-dim"),
                        (3, "--cnn-module-kernel"), (4, "--left-context-length / 4")):
            if not has_int(k):
                extra = ": the decode loop never advances (endless loop)" if k == 5 else ""
                error(f"key {k} ({what}) is missing or 0{extra}")
        return has_int(1)

    # -- what a checkpoint's weights reveal ----------------------------------------------------------

    def owns_weights(self, state: Mapping[str, Any]) -> bool:
        return any(k.startswith("encoder.encoder.emformer_layers.") for k in state)

    def values_from_weights(self, state: Mapping[str, Any]) -> dict[str, Value]:
        layers = indices(state, r"encoder\.encoder\.emformer_layers\.(\d+)\.")
        p = "encoder.encoder.emformer_layers.0."
        q = shape(state, p + "attention.emb_to_query.weight")
        ffw = shape(state, p + "feed_forward.0.weight")
        dw = shape(state, p + "conv_module.depthwise_conv.weight")
        if not (q and ffw and dw):
            raise CheckpointError(f"ConvEmformer: expected {p}attention.emb_to_query.weight, feed_forward.0.weight "
                                  "and conv_module.depthwise_conv.weight")
        return {"num_encoder_layers": len(layers), "encoder_dim": q[1], "dim_feedforward": ffw[0],
                "cnn_module_kernel": dw[2], "context_size": decoder_joiner_values(state)["context_size"]}

    # -- what a graph reveals ------------------------------------------------------------------------------

    def values_from_input_shapes(self, shapes, label, found: Found) -> None:
        states = shapes[1:]
        if not shapes or not states or len(states) % 4:
            found.problems.append(f"{label}: {len(shapes)} inputs; a ConvEmformer encoder has 1 + 4 x layers")
            return
        n = len(states) // 4
        mem, key, val, conv = states[0], states[1], states[2], states[3]
        if len(mem) != 3 or len(key) != 3 or len(conv) != 3 or val != key or \
                any(states[4 * i:4 * i + 4] != states[0:4] for i in range(n)):
            found.problems.append(f"{label}: the state inputs do not have icefall's ConvEmformer shapes "
                                  f"((memory,1,D), (left,1,D) x2, (1,D,kernel-1) per layer): {states[:4]}")
            return
        t = shapes[0][1] if len(shapes[0]) == 3 else shapes[0][0]
        found.put("num_encoder_layers", n, f"{label}: {len(states)} state inputs = 4 x layers")
        found.put("memory_size", mem[0], f"{label}: memory state rows")
        found.put("encoder_dim", mem[-1], f"{label}: state width")
        found.put("left_context_length", key[0] * SUBSAMPLING, f"{label}: key cache rows x {SUBSAMPLING}")
        found.put("cnn_module_kernel", conv[-1] + 1, f"{label}: conv cache width + 1")
        found.notes["chunk_plus_right"] = t - PAD
        found.notes["chunk_where"] = f"{label}: in0 has {t} frames = chunk + right context + {PAD}"

    def refine_from_pnnx(self, ops, label, found: Found) -> None:
        total = found.notes.get("chunk_plus_right")
        if total is None or total % SUBSAMPLING:
            return
        split = _pnnx_chunk_split(ops, total // SUBSAMPLING)
        if split:
            split_chunk(found, split[0] * SUBSAMPLING, split[1] * SUBSAMPLING,
                        f"{label}: the subsampled chunk is split {split[0]} + {split[1]} frames (x4)")

    def refine_from_traced(self, attributes, label, found: Found) -> None:
        chunk, right = attributes.get("chunk_length"), attributes.get("right_context_length")
        if isinstance(chunk, int) and isinstance(right, int):
            split_chunk(found, chunk, right, f"{label}: the traced module's chunk_length / right_context_length")

    def values_from_ncnn(self, model, label, found: Found) -> None:
        inputs = model.input_names
        states = len(inputs) - 1
        if states > 0 and states % 4 == 0:
            found.put("num_encoder_layers", states // 4, f"{label}: {len(inputs)} inputs = 1 + 4 x layers")
        dw = model.layers_of_type("ConvolutionDepthWise1D")
        if dw and len({(x.get(0), x.get(1)) for x in dw}) == 1:
            found.put("encoder_dim", int(dw[0].get(0)), f"{label}: depthwise convolution channels")
            found.put("cnn_module_kernel", int(dw[0].get(1)), f"{label}: depthwise convolution kernel")
            _ncnn_context(model, int(dw[0].get(0)), label, found)

    def derive_from_graph(self, values, sources, reading, graph) -> list[str]:
        total = reading.notes.get("chunk_plus_right")
        if total is None or "chunk_length" in reading.values:
            return []
        chunk, right = values.get("chunk_length"), values.get("right_context_length")
        cs, rs = sources.get("chunk_length"), sources.get("right_context_length")
        if cs == "given" and rs != "given":
            values["right_context_length"], sources["right_context_length"] = total - chunk, graph
            reading.where["right_context_length"] = f"{reading.notes['chunk_where']}, with the given --chunk-length"
        elif rs == "given" and cs != "given":
            values["chunk_length"], sources["chunk_length"] = total - right, graph
            reading.where["chunk_length"] = f"{reading.notes['chunk_where']}, with the given --right-context-length"
        elif cs == "given" and rs == "given" and chunk + right != total:
            return [f"--chunk-length {chunk} + --right-context-length {right} = {chunk + right}, but "
                    f"{reading.notes['chunk_where']}"]
        return []

    def graph_contradictions(self, values, reading) -> list[str]:
        total = reading.notes.get("chunk_plus_right")
        chunk, right = values.get("chunk_length"), values.get("right_context_length")
        if total is not None and "chunk_length" not in reading.values and isinstance(chunk, int) \
                and isinstance(right, int) and chunk + right != total:
            return [f"--chunk-length {chunk} + --right-context-length {right} = {chunk + right}, but "
                    f"{reading.notes['chunk_where']}"]
        return []


def split_chunk(found: Found, chunk: int | None, right: int | None, where: str) -> None:
    """Chunk and right context, once something splits the traced chunk + right context."""
    total = found.notes.get("chunk_plus_right")
    if total is None or chunk is None or right is None:
        return
    if chunk + right != total:
        found.problems.append(f"{where}: chunk {chunk} + right context {right} != {total} "
                              f"({found.notes['chunk_where']})")
        return
    found.put("chunk_length", chunk, where)
    found.put("right_context_length", right, where)


def _pnnx_chunk_split(ops, frames: int) -> tuple[int, int] | None:
    """(chunk, right context) after subsampling: pnnx's first split of the (frames,1,D) utterance."""
    for op in ops:
        if op.type not in ("torch.tensor_split", "Tensor.slice", "torch.split") or not op.inputs:
            continue
        src = op.shapes.get(op.inputs[0])
        if not src or len(src) != 3 or src[0] != frames or src[1] != 1 or op.attrs.get("dim") != "0":
            continue
        outs = [op.shapes.get(o) for o in op.outputs]
        if len(outs) == 2 and all(outs) and outs[0][0] + outs[1][0] == frames:
            return outs[0][0], outs[1][0]
    return None


def _ncnn_context(model, dim: int, label: str, found: Found) -> None:
    """Chunk, right context, left context and memory from the ncnn graph's constants.

    The first layer's key cache output (out2) keeps the last L rows (a Crop starting at -L); its
    attention reshapes query (D/H, H, U) and key/value (D/H, H, memory + L + U) with U = chunk/4 +
    right/4 subsampled frames; the input is split at chunk/4 first (a Slice on axis 0). Every relation
    is checked; anything else leaves the values unknown."""
    items = model.layers
    crop = next((x for x in items if x.type == "Crop" and x.tops == ("out2",)), None)
    starts, axes = (crop.get(9), crop.get(11)) if crop is not None else (None, None)
    if not (isinstance(starts, tuple) and len(starts) == 1 and starts[0] < 0 and axes == (0,)):
        return
    left = -starts[0]
    reshapes = [x for x in items if x.type == "Reshape" and all(isinstance(x.get(k), int) for k in (0, 1, 2))]
    attn = next(((q, k, v) for q, k, v in zip(reshapes, reshapes[1:], reshapes[2:])
                 if q.get(0) * q.get(1) == dim and (q.get(0), q.get(1)) == (k.get(0), k.get(1)) == (v.get(0), v.get(1))
                 and k.get(2) == v.get(2) > q.get(2) > 0), None)
    if attn is None:
        return
    frames, span = attn[0].get(2), attn[1].get(2)
    split = next((x for x in items if x.type == "Slice" and x.get(1, 0) == 0 and len(x.tops) == 2
                  and isinstance(x.get(0), tuple) and len(x.get(0)) == 2 and x.index < attn[0].index), None)
    if split is None or not 0 < split.get(0)[0] <= frames or span - left - frames < 0:
        return
    chunk = split.get(0)[0]
    where = f"{label}: Crop of out2, attention Reshape and chunk Slice constants"
    found.put("left_context_length", left * SUBSAMPLING, f"{label}: the key cache output keeps {left} rows (x4)")
    found.put("memory_size", span - left - frames, f"{where} (key span {span} = memory + {left} + {frames})")
    found.put("chunk_length", chunk * SUBSAMPLING, f"{where} (subsampled chunk {chunk} of {frames}, x4)")
    found.put("right_context_length", (frames - chunk) * SUBSAMPLING, f"{where} ({frames - chunk} frames, x4)")


def _int(meta: Mapping[int, Any], k: int) -> int:
    v = meta.get(k, 0)
    return int(v) if not isinstance(v, tuple) else 0


CONV_EMFORMER = ConvEmformer()
