"""Streaming Zipformer v1 (icefall's pruned_transducer_stateless7_streaming): everything the tool knows about it.

Flags, SherpaMetaData keys 0-3 and 15-20, the rules icefall's export and sherpa-ncnn impose, the 1 + 7 x stacks
encoder I/O, the states sherpa-ncnn starts from, and how weights, traced inputs, pnnx's graph and the ncnn graph
reveal each hyperparameter. Sources: ../shared/reference/icefall-export.md §1, sherpa-ncnn.md §1.3, §2.2.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

from core.model.found import Found
from core.model.spec import (CONTEXT_SIZE, ArchSpec, HyperParam, IOContract, MetaEntry, Problem, Value, Values,
                             blob_names, context_size_warning, positive_problems)
from core.model.state_dict import CheckpointError, decoder_joiner_values, indices, shape

PAD_LENGTH = 7  # icefall's export traces T = decode_chunk_len + 7
MODEL_VERSION = 1  # sherpa-ncnn >= 2.0 exits when key 15 < 1

_STACK_FLAGS = (
    "num_encoder_layers", "feedforward_dims", "nhead", "encoder_dims", "attention_dims",
    "encoder_unmasked_dims", "zipformer_downsampling_factors", "cnn_module_kernels",
)

PARAMS = (
    HyperParam("--num-encoder-layers", "int_list", "2,4,3,2,4", "Layers per encoder stack, comma separated.",
               meta_key=16, in_weights=True),
    HyperParam("--feedforward-dims", "int_list", "1024,1024,2048,2048,1024", "Feed-forward width of each stack's "
               "layers, comma separated.", in_weights=True),
    HyperParam("--nhead", "int_list", "8,8,8,8,8", "Attention heads per stack, comma separated.", in_weights=True),
    HyperParam("--encoder-dims", "int_list", "384,384,384,384,384", "Model (embedding) width of each stack, "
               "comma separated.", meta_key=17, in_weights=True),
    HyperParam("--attention-dims", "int_list", "192,192,192,192,192", "Width of each stack's attention "
               "projections (separate from the model width), comma separated.", meta_key=18,
               in_weights=True),
    HyperParam("--encoder-unmasked-dims", "int_list", "256,256,256,256,256", "Dims kept by training-time "
               "feature masking; at most each stack's width. Not used by the exported graph.",
               training_only=True),
    HyperParam("--zipformer-downsampling-factors", "int_list", "1,2,4,8,2", "Frame-rate reduction of each stack, "
               "comma separated.", meta_key=19, in_weights=True),
    HyperParam("--cnn-module-kernels", "int_list", "31,31,31,31,31", "Kernel of each stack's convolution module.",
               meta_key=20, in_weights=True),
    HyperParam("--decoder-dim", "int", "512", "Width of the decoder's embedding.", in_weights=True),
    HyperParam("--joiner-dim", "int", "512", "Encoder and decoder outputs are "
               "projected to this width and added in the joiner.", in_weights=True),
    HyperParam("--short-chunk-size", "int", "50", "Upper bound of the random chunk "
               "size in dynamic-chunk training. Not used by the exported graph.",
               training_only=True),
    HyperParam("--num-left-chunks", "int", "4", "How many earlier chunks the attention "
               "may look at when streaming.", meta_key=2),
    HyperParam("--decode-chunk-len", "int", "32", "Frames (before subsampling) decoded per "
               "streaming chunk.",
               meta_key=1),
    CONTEXT_SIZE,
)

_LAYER_OP = re.compile(r"(?:^|\.)encoders\.(\d+)\.(?:encoder\.)?layers\.\d+\.feed_forward1\.in_proj$")


class Zipformer(ArchSpec):
    name = "zipformer"
    title = "Streaming Zipformer (v1)"
    model_type = 2
    recipe = "egs/librispeech/ASR/pruned_transducer_stateless7_streaming"
    summary = ("The streaming Zipformer of icefall's pruned_transducer_stateless7_streaming recipe (and its "
               "aishell, commonvoice and csj copies): stacks of zipformer layers at different frame rates, decoded "
               "in chunks of --decode-chunk-len frames with --num-left-chunks of left context. The newer Zipformer2 "
               "(egs/*/ASR/zipformer) has no ncnn path in sherpa-ncnn; use sherpa-onnx for it.")
    hyperparams = PARAMS
    aliases = ("zipformer-v1", "pruned_transducer_stateless7_streaming")
    graph_layer_types = frozenset({"CumulativeSum", "torch.as_strided", "PoolingModuleNoProj", "TensorAsStrided",
                                   "SimpleUpsample", "torch.cumsum", "Stack"})
    states_per_unit, unit_name = 7, "Zipformer stack"

    # -- the export and the metadata -------------------------------------------------------------

    def metadata(self, v: Values) -> list[MetaEntry]:
        return [
            MetaEntry(0, 2, "model type 2 = Zipformer (fixed)"),
            MetaEntry(1, v["decode_chunk_len"], "--decode-chunk-len"),
            MetaEntry(2, v["num_left_chunks"], "--num-left-chunks"),
            MetaEntry(3, PAD_LENGTH, "pad length (fixed: the export traces T = decode-chunk-len + 7)"),
            MetaEntry(15, MODEL_VERSION, "model version (fixed: sherpa-ncnn >= 2.0 exits without 15=1)"),
            MetaEntry(16, v["num_encoder_layers"], "--num-encoder-layers"),
            MetaEntry(17, v["encoder_dims"], "--encoder-dims"),
            MetaEntry(18, v["attention_dims"], "--attention-dims"),
            MetaEntry(19, v["zipformer_downsampling_factors"], "--zipformer-downsampling-factors"),
            MetaEntry(20, v["cnn_module_kernels"], "--cnn-module-kernels"),
        ]

    def rules(self, v: Values) -> list[Problem]:
        problems = positive_problems(PARAMS, v)
        lengths = {name: len(v[name]) for name in _STACK_FLAGS if name in v}
        n = len(v.get("num_encoder_layers", ()))
        differing = [name for name, ln in lengths.items() if ln != n]
        if differing:
            flags = tuple("--" + name.replace("_", "-") for name in differing)
            detail = ", ".join(f"{f} has {lengths[name]}" for f, name in zip(flags, differing))
            problems.append(Problem("error", ("--num-encoder-layers",) + flags,
                                    f"every per-stack flag needs one value per stack: --num-encoder-layers has {n} "
                                    f"stacks but {detail}"))
            return problems  # the per-stack rules below would index out of range
        if any(p.severity == "error" for p in problems):
            return problems
        dcl = v["decode_chunk_len"]
        ds = v["zipformer_downsampling_factors"]
        if dcl % 2:
            problems.append(Problem("error", ("--decode-chunk-len",), f"--decode-chunk-len must be even; got {dcl}"))
        elif (dcl // 2) % max(ds):
            problems.append(Problem("error", ("--decode-chunk-len", "--zipformer-downsampling-factors"),
                                    f"--decode-chunk-len / 2 = {dcl // 2} must be divisible by the largest "
                                    f"--zipformer-downsampling-factors value {max(ds)} (sherpa-ncnn divides the "
                                    "left context by each factor)"))
        enc, unmasked, att, heads, kernels = (v["encoder_dims"], v["encoder_unmasked_dims"], v["attention_dims"],
                                              v["nhead"], v["cnn_module_kernels"])
        for i in range(n):
            s = f"stack {i}"
            if unmasked[i] > enc[i]:
                problems.append(Problem("error", ("--encoder-unmasked-dims", "--encoder-dims"),
                                        f"--encoder-unmasked-dims {unmasked[i]} is larger than --encoder-dims "
                                        f"{enc[i]} for {s}; it must be <= the encoder dim"))
            if att[i] % heads[i] or (att[i] // heads[i]) % 2:
                problems.append(Problem("error", ("--attention-dims", "--nhead"),
                                        f"--attention-dims {att[i]} must be divisible by --nhead {heads[i]} into an "
                                        f"even head dim for {s}"))
            if kernels[i] % 2 == 0:
                problems.append(Problem("error", ("--cnn-module-kernels",),
                                        f"--cnn-module-kernels must be odd; got {kernels[i]} for {s}"))
            if i > 0 and ds[i] != 1 and enc[i] != enc[i - 1]:
                problems.append(Problem("error", ("--encoder-dims",),
                                        f"--encoder-dims {enc[i]} for {s} differs from {enc[i - 1]} for stack "
                                        f"{i - 1}; icefall's ncnn export supports only equal dims across "
                                        "downsampled stacks (AttentionDownsample asserts extra_proj is None)"))
        return problems + context_size_warning(v)

    def io_contract(self, v: Values) -> IOContract:
        n = 1 + 7 * len(v["num_encoder_layers"])
        return IOContract(blob_names("in", n), blob_names("out", n),
                          f"1 + 7 x {len(v['num_encoder_layers'])} stacks = {n} inputs and outputs, grouped by "
                          "state kind")

    def segment_offset(self, v: Values) -> tuple[int, int]:
        return v["decode_chunk_len"] + PAD_LENGTH, v["decode_chunk_len"]

    # -- how sherpa-ncnn runs it -------------------------------------------------------------------

    def runtime_geometry(self, meta: Mapping[int, Any]) -> tuple[int, int]:
        chunk, pad = _int(meta, 1), _int(meta, 3)
        return chunk + pad, chunk

    def initial_states(self, meta: Mapping[int, Any]) -> list:
        import numpy as np
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

    def torch_input_shapes(self, meta: Mapping[int, Any], lengths_dtype: str) -> list[tuple[tuple[int, ...], str]]:
        layers, dims, att, ds, kernels = (_array(meta, k) for k in (16, 17, 18, 19, 20))
        chunk, left_chunks, pad = int(meta[1]), int(meta[2]), int(meta[3])
        left = chunk // 2 * left_chunks
        f32 = "float32"
        n = range(len(layers))
        shapes = [((1, chunk + pad, 80), f32)]
        shapes += [((layers[i], 1), f32) for i in n]
        shapes += [((layers[i], 1, dims[i]), f32) for i in n]
        shapes += [((layers[i], left // ds[i], 1, att[i]), f32) for i in n]
        shapes += [((layers[i], left // ds[i], 1, att[i] // 2), f32) for i in n] * 2
        shapes += [((layers[i], 1, dims[i], kernels[i] - 1), f32) for i in n] * 2
        return shapes

    def check_metadata_keys(self, meta, error, warning) -> bool:
        def has_int(k):
            return isinstance(meta.get(k), int) and meta[k] > 0
        version = meta.get(15)
        if not isinstance(version, int) or version < 1:
            error("key 15 (model version) is missing or < 1: sherpa-ncnn >= 2.0 prints 'You are using a too old "
                  "version of Zipformer' and calls exit(-1). Add 15=1")
        if not has_int(1):
            error("key 1 (--decode-chunk-len) is missing or 0: the decode loop never advances (endless loop)")
        elif meta[1] % 2:
            error(f"key 1 (--decode-chunk-len) = {meta[1]} must be even")
        if not has_int(2):
            error("key 2 (--num-left-chunks) is missing or 0")
        if meta.get(3) != PAD_LENGTH:
            warning(f"key 3 (pad length) is {meta.get(3, 'missing')}, icefall's export traces with 7; the chunk "
                    "sherpa-ncnn feeds will not match the traced length")
        arrays = {k: meta.get(k) for k in range(16, 21)}
        missing = [k for k, v in arrays.items() if not isinstance(v, tuple)]
        if missing:
            error(f"array keys {', '.join(str(-23300 - k) for k in missing)} are missing; sherpa-ncnn needs all "
                  "five per-stack arrays (-23316..-23320)")
            return False
        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1:
            error("the per-stack arrays -23316..-23320 have different lengths "
                  f"({', '.join(f'{-23300 - k}: {len(v)}' for k, v in arrays.items())}); sherpa-ncnn reads out of "
                  "bounds")
            return False
        return True

    # -- what a checkpoint's weights reveal ----------------------------------------------------------

    def owns_weights(self, state: Mapping[str, Any]) -> bool:
        return any(k.startswith("encoder.encoders.") and ".self_attn.in_proj2." in k for k in state) \
            or "encoder.downsample_output.query" in state

    def values_from_weights(self, state: Mapping[str, Any]) -> dict[str, Value]:
        stacks = indices(state, r"encoder\.encoders\.(\d+)\.")
        if not stacks or stacks != list(range(len(stacks))):
            raise CheckpointError(f"Zipformer stacks are not numbered 0..N-1 (found {stacks})")
        layers, ff, dims, att, heads, kernels, ds = [], [], [], [], [], [], []
        for i in stacks:
            up = shape(state, f"encoder.encoders.{i}.upsample.bias")
            ds.append(up[0] if up else 1)
            prefix = f"encoder.encoders.{i}." if not up else f"encoder.encoders.{i}.encoder."
            js = indices(state, re.escape(prefix) + r"layers\.(\d+)\.")
            if not js:
                raise CheckpointError(f"Zipformer stack {i} has no layers under {prefix}layers.*")
            layers.append(len(js))
            p = prefix + "layers.0."
            ffw = shape(state, p + "feed_forward1.in_proj.weight")
            in2 = shape(state, p + "self_attn.in_proj2.weight")
            pos = shape(state, p + "self_attn.linear_pos.weight")
            dw = shape(state, p + "conv_module1.depthwise_conv.weight")
            if not (ffw and in2 and pos and dw):
                raise CheckpointError(f"Zipformer stack {i}: expected {p}feed_forward1.in_proj.weight, "
                                      "self_attn.in_proj2.weight, self_attn.linear_pos.weight and "
                                      "conv_module1.depthwise_conv.weight")
            ff.append(ffw[0])
            dims.append(ffw[1])
            att.append(2 * in2[0])
            heads.append(pos[0] // 4)  # pos_dim is fixed at 4
            kernels.append(dw[2])
        out: dict[str, Value] = {
            "num_encoder_layers": tuple(layers), "feedforward_dims": tuple(ff), "nhead": tuple(heads),
            "encoder_dims": tuple(dims), "attention_dims": tuple(att), "zipformer_downsampling_factors": tuple(ds),
            "cnn_module_kernels": tuple(kernels),
        }
        common = decoder_joiner_values(state)
        out.update({k: common[k] for k in ("decoder_dim", "joiner_dim", "context_size") if k in common})
        return out

    def detection_notes(self, state, params, extras) -> list[str]:
        if params and not {"decode_chunk_len", "short_chunk_size", "num_left_chunks"} & set(params):
            # the streaming and non-streaming Zipformer v1 have the same weight names: only the training params tell
            return ["the training params have no decode_chunk_len / short_chunk_size / num_left_chunks: it was "
                    "trained by a non-streaming recipe (pruned_transducer_stateless7?) and never saw chunked "
                    "attention; exported as streaming it will recognise poorly. Use a "
                    "pruned_transducer_stateless7_streaming model"]
        return []

    # -- what a graph reveals ------------------------------------------------------------------------------

    def values_from_input_shapes(self, shapes, label, found: Found) -> None:
        states = shapes[1:]
        if not shapes or len(states) % 7 or not states:
            found.problems.append(f"{label}: {len(shapes)} inputs; a Zipformer encoder has 1 + 7 x stacks")
            return
        n = len(states) // 7
        groups = [states[k * n:(k + 1) * n] for k in range(7)]
        lens, avg, key, val, val2, conv1, conv2 = groups
        try:
            layers = tuple(s[0] for s in lens)
            dims = tuple(s[-1] for s in avg)
            att = tuple(s[-1] for s in key)
            left = tuple(s[1] for s in key)
            kernels = tuple(s[-1] + 1 for s in conv1)
            bad = [i for i in range(n) if len(key[i]) != 4 or len(conv1[i]) != 4 or val[i][-1] * 2 != att[i]
                   or val2[i] != val[i] or conv2[i] != conv1[i] or avg[i][0] != layers[i] or key[i][0] != layers[i]]
        except IndexError:
            bad = [0]
        if bad:
            found.problems.append(f"{label}: the state inputs do not have icefall's Zipformer shapes "
                                  f"(cached_len, cached_avg, cached_key, cached_val, cached_val2, cached_conv1/2 per "
                                  f"stack); stack {bad[0]}: {[g[bad[0]] for g in groups]}")
            return
        t = shapes[0][1] if len(shapes[0]) == 3 else shapes[0][0]
        found.put("num_encoder_layers", layers, f"{label}: cached_len rows (in1..in{n})")
        found.put("encoder_dims", dims, f"{label}: cached_avg width")
        found.put("attention_dims", att, f"{label}: cached_key width")
        found.put("cnn_module_kernels", kernels, f"{label}: cached_conv width + 1")
        found.put("decode_chunk_len", t - PAD_LENGTH, f"{label}: in0 has {t} frames = decode-chunk-len + {PAD_LENGTH}")
        found.notes["left_context"] = left

    def refine_from_pnnx(self, ops, label, found: Found) -> None:
        if "decode_chunk_len" not in found.values:
            return
        seq = _seq_by_stack(ops)
        n = len(found.values["num_encoder_layers"])
        half = found.values["decode_chunk_len"] // 2
        if sorted(seq) == list(range(n)) and all(s > 0 and half % s == 0 for s in seq.values()):
            split_left_context(found, tuple(half // seq[i] for i in range(n)),
                               f"{label}: stack layers run at {tuple(seq[i] for i in range(n))} frames of "
                               f"{half} (decode-chunk-len / 2)")

    def refine_from_traced(self, attributes, label, found: Found) -> None:
        ds = attributes.get("zipformer_downsampling_factors")
        if isinstance(ds, (tuple, list)) and all(isinstance(x, int) for x in ds):
            split_left_context(found, tuple(ds), f"{label}: the traced module's zipformer_downsampling_factors")
            nlc = attributes.get("num_left_chunks")
            if isinstance(nlc, int) and found.values.get("num_left_chunks") not in (None, nlc):
                found.problems.append(f"{label}: the traced module's num_left_chunks {nlc} does not fit its "
                                      f"states ({found.values['num_left_chunks']})")

    def values_from_ncnn(self, model, label, found: Found) -> None:
        inputs = model.input_names
        states = len(inputs) - 1
        if states <= 0 or states % 7:
            found.problems.append(f"{label}: {len(inputs)} inputs; a Zipformer encoder has 1 + 7 x stacks")
            return
        n = states // 7
        consumers: dict[str, list] = {}
        for layer in model.layers:
            for b in layer.bottoms:
                consumers.setdefault(b, []).append(layer)
        layers = []
        for name in inputs[1:1 + n]:  # cached_len of each stack, unbound per layer
            users = consumers.get(name, [])
            layers.append(len(users[0].tops) if len(users) == 1 and users[0].type == "Slice" else None)
        if None in layers:
            return
        found.put("num_encoder_layers", tuple(layers), f"{label}: each stack's cached_len is unbound into its layers")
        _ncnn_attention(model, tuple(layers), label, found)
        dw = model.layers_of_type("ConvolutionDepthWise1D")
        if len(dw) == 2 * sum(layers):  # conv_module1 and conv_module2 per layer, in stack order
            dims, kernels, start = [], [], 0
            for count in layers:
                mine = dw[start:start + 2 * count]
                start += 2 * count
                dims.append({int(x.get(0)) for x in mine})
                kernels.append({int(x.get(1)) for x in mine})
            if all(len(s) == 1 for s in dims + kernels):
                found.put("encoder_dims", tuple(s.pop() for s in dims), f"{label}: depthwise convolution channels")
                found.put("cnn_module_kernels", tuple(s.pop() for s in kernels),
                          f"{label}: depthwise convolution kernels")

    def derive_from_graph(self, values, sources, reading, graph) -> list[str]:
        left = reading.notes.get("left_context")
        dcl = values.get("decode_chunk_len") if sources.get("decode_chunk_len") == graph else None
        ds = values.get("zipformer_downsampling_factors")
        if not (left and dcl and ds and sources.get("zipformer_downsampling_factors") == "given"
                and "num_left_chunks" not in reading.values and len(ds) == len(left)):
            return []
        products = {c * d for c, d in zip(left, ds)}
        if len(products) == 1 and next(iter(products)) % (dcl // 2) == 0:
            values["num_left_chunks"] = next(iter(products)) // (dcl // 2)
            sources["num_left_chunks"] = graph
            reading.where["num_left_chunks"] = (f"left context of each stack {left} with the given "
                                                f"--zipformer-downsampling-factors")
            return []
        return [f"--zipformer-downsampling-factors {self.param('zipformer_downsampling_factors').format(ds)} does "
                f"not fit the graph's left context per stack {left} (left context x factor must be the same for "
                "every stack)"]

    def size_defaults(self, values, sources) -> None:
        if not isinstance(values.get("num_encoder_layers"), tuple):
            return
        n = len(values["num_encoder_layers"])
        for hp in self.hyperparams:
            if sources.get(hp.name) == "default" and hp.kind == "int_list" and len(values[hp.name]) != n:
                values[hp.name] = tuple([values[hp.name][0]] * n)
        if sources.get("encoder_unmasked_dims") == "default" and isinstance(values.get("encoder_dims"), tuple):
            values["encoder_unmasked_dims"] = tuple(min(u, d) for u, d in zip(values["encoder_unmasked_dims"],
                                                                              values["encoder_dims"]))

    def graph_contradictions(self, values, reading) -> list[str]:
        left, dcl = reading.notes.get("left_context"), values.get("decode_chunk_len")
        ds, nlc = values.get("zipformer_downsampling_factors"), values.get("num_left_chunks")
        if left and isinstance(dcl, int) and isinstance(ds, tuple) and isinstance(nlc, int) \
                and "num_left_chunks" not in reading.values and len(ds) == len(left):
            want = tuple(dcl // 2 * nlc // d for d in ds)
            if want != tuple(left):
                return [f"--decode-chunk-len {dcl} / 2 x --num-left-chunks {nlc} / --zipformer-downsampling-factors "
                        f"gives left contexts {want}, but the encoder's graph has {tuple(left)} (cached_key rows)"]
        return []


def split_left_context(found: Found, ds: tuple[int, ...] | None, where: str) -> None:
    """Downsampling factors and num-left-chunks from the per-stack left context C_i = dcl/2 * nlc / ds_i."""
    left = found.notes.get("left_context")
    dcl = found.values.get("decode_chunk_len")
    if ds is None or left is None or dcl is None:
        return
    if len(ds) != len(left):
        found.problems.append(f"{where}: {len(ds)} downsampling factors for {len(left)} stacks")
        return
    half = dcl // 2
    products = {c * d for c, d in zip(left, ds)}
    if len(products) != 1 or next(iter(products)) % half:
        found.problems.append(f"{where}: downsampling factors {ds} do not fit the left context of each stack "
                              f"{left} (icefall: left context = decode-chunk-len/2 x num-left-chunks / factor)")
        return
    found.put("zipformer_downsampling_factors", tuple(ds), where)
    found.put("num_left_chunks", next(iter(products)) // half, f"{where}, with the left context of each stack {left}")


def _ncnn_attention(model, layers: tuple[int, ...], label: str, found: Found) -> None:
    """Attention dims, chunk, frame rates and left context from the ncnn graph's Reshape constants.

    Each Zipformer layer's attention projects with one InnerProduct (2A + A/2 + 4H outputs: query, key,
    value, 4-dim positions per head) and reshapes query (A/H, H, seq), positions (4, H, seq), key
    (A/H, H, left+seq) and value (A/2H, H, left+seq); the embedding's Reshape (C*F, dcl/2) comes first.
    Every relation is checked; anything else leaves the values unknown."""
    items = model.layers
    per_layer = []
    for idx, layer in enumerate(items):
        if layer.type != "InnerProduct":
            continue
        shapes = []
        for nxt in items[idx + 1:]:
            if nxt.type == "InnerProduct" or len(shapes) == 4:
                break
            if nxt.type == "Reshape" and all(isinstance(nxt.get(k), int) for k in (0, 1, 2)):
                shapes.append((nxt.get(0), nxt.get(1), nxt.get(2)))
        if len(shapes) < 4:
            continue
        q, pos, k, v = shapes
        heads, seq, span = q[1], q[2], k[2]
        att = q[0] * heads
        if pos[0] == 4 and pos[1] == k[1] == v[1] == heads and pos[2] == seq and v[2] == span \
                and k[0] == q[0] and v[0] * 2 == q[0] and layer.get(0) == 2 * att + att // 2 + 4 * heads:
            per_layer.append((att, heads, seq, span - seq))
    if len(per_layer) != sum(layers):
        return
    stacks, start = [], 0
    for count in layers:
        mine = set(per_layer[start:start + count])
        start += count
        if len(mine) != 1:
            return
        stacks.append(mine.pop())
    found.put("attention_dims", tuple(s[0] for s in stacks), f"{label}: attention Reshape constants (A/H x H)")
    found.put("nhead", tuple(s[1] for s in stacks), f"{label}: attention Reshape constants (heads)")
    embed = next((x for x in items if x.type == "Reshape" and isinstance(x.get(1), int) and x.get(2) is None
                  and any(c.type == "Convolution" and c.index < x.index for c in items[:x.index])), None)
    if embed is None:
        return
    half = embed.get(1)
    if any(half % s[2] for s in stacks):
        return
    found.put("decode_chunk_len", 2 * half, f"{label}: the embedding's Reshape has {half} frames = decode-chunk-len / 2")
    found.notes["left_context"] = tuple(s[3] for s in stacks)
    split_left_context(found, tuple(half // s[2] for s in stacks),
                     f"{label}: attention Reshape constants (each stack's frames of {half})")


def _seq_by_stack(ops) -> dict[int, int]:
    """Each stack's sequence length (frames it runs at): its layers' first Linear input (seq,1,D)/(1,seq,D)."""
    seq: dict[int, int] = {}
    for op in ops:
        m = _LAYER_OP.search(op.name) if op.type == "nn.Linear" else None
        if m and op.inputs and op.inputs[0] in op.shapes:
            dims = op.shapes[op.inputs[0]]
            if len(dims) >= 2 and all(d > 0 for d in dims):
                seq.setdefault(int(m.group(1)), math.prod(dims[:-1]))
    return seq


def _int(meta: Mapping[int, Any], k: int) -> int:
    v = meta.get(k, 0)
    return int(v) if not isinstance(v, tuple) else 0


def _array(meta: Mapping[int, Any], key: int) -> list[int]:
    raw = meta[key] if key in meta else meta[-23300 - key]  # either key form of SherpaMetaData
    return [int(x) for x in raw] if isinstance(raw, (tuple, list)) else [int(raw)]


ZIPFORMER = Zipformer()
