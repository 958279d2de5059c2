"""What an encoder's ncnn files alone show about its icefall hyperparameters.

No shapes here: the Input count (stacks / layers), the LSTM layers' sizes, the depthwise convolutions
(dims, kernels), each Zipformer stack's states unbound into its layers (Slice outputs), and constants
pnnx wrote into Reshape, Crop and Slice layers (attention head sizes, sequence lengths, cache rows).
Every value is taken only when the relations icefall's code implies all hold; anything else stays unknown,
and the plan asks for it.
"""
from __future__ import annotations

from pathlib import Path

from core.model.architectures import SUBSAMPLING, ArchSpec
from core.model.graph_readers import Found, zipformer_split


def read_ncnn_graph(spec: ArchSpec, path: Path) -> Found:
    from core.ncnn.param import load_param
    found = Found()
    label = path.name
    parsed = load_param(path)
    model = parsed.model
    if model is None:
        found.problems.append(parsed.describe())
        return found
    inputs = model.input_names
    if spec.name == "lstm":
        lstms = model.layers_of_type("LSTM")
        if lstms:
            d = {int(x.get(0, 0)) for x in lstms}
            h = {int(x.get(3, x.get(0, 0))) for x in lstms}
            found.put("num_encoder_layers", len(lstms), f"{label}: {len(lstms)} LSTM layers")
            if len(d) == 1:
                found.put("encoder_dim", d.pop(), f"{label}: LSTM num_output (0=)")
            if len(h) == 1:
                found.put("rnn_hidden_size", h.pop(), f"{label}: LSTM hidden size (3=)")
        return found
    dw = model.layers_of_type("ConvolutionDepthWise1D")
    if spec.name == "conv-emformer":
        states = len(inputs) - 1
        if states > 0 and states % 4 == 0:
            found.put("num_encoder_layers", states // 4, f"{label}: {len(inputs)} inputs = 1 + 4 x layers")
        if dw and len({(x.get(0), x.get(1)) for x in dw}) == 1:
            found.put("encoder_dim", int(dw[0].get(0)), f"{label}: depthwise convolution channels")
            found.put("cnn_module_kernel", int(dw[0].get(1)), f"{label}: depthwise convolution kernel")
            _conv_emformer_ncnn_context(model, int(dw[0].get(0)), label, found)
        return found
    states = len(inputs) - 1
    if states <= 0 or states % 7:
        found.problems.append(f"{label}: {len(inputs)} inputs; a Zipformer encoder has 1 + 7 x stacks")
        return found
    n = states // 7
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for b in layer.bottoms:
            consumers.setdefault(b, []).append(layer)
    layers = []
    for name in inputs[1:1 + n]:  # cached_len of each stack, unbound per layer
        users = consumers.get(name, [])
        layers.append(len(users[0].tops) if len(users) == 1 and users[0].type == "Slice" else None)
    if None not in layers:
        found.put("num_encoder_layers", tuple(layers), f"{label}: each stack's cached_len is unbound into its layers")
        _zipformer_ncnn_attention(model, tuple(layers), label, found)
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
    return found


def _conv_emformer_ncnn_context(model, dim: int, label: str, found: Found) -> None:
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


def _zipformer_ncnn_attention(model, layers: tuple[int, ...], label: str, found: Found) -> None:
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
    zipformer_split(found, tuple(half // s[2] for s in stacks),
                     f"{label}: attention Reshape constants (each stack's frames of {half})")
