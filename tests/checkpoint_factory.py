"""State dicts with icefall's real key names and shapes, for checkpoint-detection tests and the benchmark.

Key names and shapes follow ../shared/reference/icefall-export.md §1.5 (training zipformer.py of
pruned_transducer_stateless7_streaming), §2.4 (conv_emformer_transducer_stateless2 with Scaled layers)
and §3.5 (lstm_transducer_stateless2 with ScaledLSTM). ``device="meta"`` gives shapes without memory.
"""
from __future__ import annotations


def _t(shape, device, fill=None):
    import torch
    if device == "meta":
        return torch.empty(shape, device="meta")
    if fill == "rand":
        return torch.randn(shape)
    return torch.zeros(shape)


def _common(sd, v, enc_out, decoder_dim, joiner_dim, context_size, device, conv_in_ch, fill=None, scaled=False):
    sd["decoder.embedding.weight"] = _t((v, decoder_dim), device, fill)
    if scaled:
        sd["decoder.embedding.scale"] = _t((), device)
    if context_size > 1:
        sd["decoder.conv.weight"] = _t((decoder_dim, conv_in_ch, context_size), device, fill)
    for name, shape in (("joiner.encoder_proj", (joiner_dim, enc_out)), ("joiner.decoder_proj", (joiner_dim, decoder_dim)),
                        ("joiner.output_linear", (v, joiner_dim)), ("simple_am_proj", (v, enc_out)),
                        ("simple_lm_proj", (v, decoder_dim))):
        sd[name + ".weight"] = _t(shape, device, fill)
        sd[name + ".bias"] = _t(shape[:1], device, fill)


def zipformer_state(layers=(2, 4, 3, 2, 4), ff=(1024, 1024, 2048, 2048, 1024), heads=(8, 8, 8, 8, 8),
                    dims=(384, 384, 384, 384, 384), att=(192, 192, 192, 192, 192), ds=(1, 2, 4, 8, 2),
                    kernels=(31, 31, 31, 31, 31), decoder_dim=512, joiner_dim=512, vocab=500, context_size=2,
                    device="meta", fill=None) -> dict:
    sd: dict = {}
    emb = "encoder.encoder_embed."
    for n, shape in (("conv.0", (8, 1, 3, 3)), ("conv.4", (32, 8, 3, 3)), ("conv.7", (128, 32, 3, 3))):
        sd[f"{emb}{n}.weight"] = _t(shape, device)
        sd[f"{emb}{n}.bias"] = _t(shape[:1], device)
    sd[emb + "out.weight"] = _t((dims[0], 128 * 19), device, fill)
    sd[emb + "out.bias"] = _t((dims[0],), device)
    sd[emb + "out_norm.eps"] = _t((), device)
    sd[emb + "conv.1.count"] = _t((), device)
    for i, n_layers in enumerate(layers):
        d, f, a, h, k = dims[i], ff[i], att[i], heads[i], kernels[i]
        stack = f"encoder.encoders.{i}."
        prefix = stack if ds[i] == 1 else stack + "encoder."
        if ds[i] != 1:
            sd[stack + "downsample.query"] = _t((dims[i - 1] if i else d,), device)
            sd[stack + "upsample.bias"] = _t((ds[i], d), device)
            sd[stack + "out_combiner.weight1"] = _t((), device)
        for j in range(n_layers):
            p = f"{prefix}layers.{j}."
            sd[p + "bypass_scale"] = _t((), device)
            for m in ("feed_forward1", "feed_forward2", "feed_forward3"):
                sd[f"{p}{m}.in_proj.weight"] = _t((f, d), device, fill)
                sd[f"{p}{m}.in_proj.bias"] = _t((f,), device)
                sd[f"{p}{m}.out_proj.weight"] = _t((d, f), device, fill)
                sd[f"{p}{m}.out_proj.bias"] = _t((d,), device)
                sd[f"{p}{m}.hidden_balancer.count"] = _t((), device)
            sd[p + "self_attn.in_proj.weight"] = _t((2 * a + a // 2 + 4 * h, d), device, fill)
            sd[p + "self_attn.in_proj.bias"] = _t((2 * a + a // 2 + 4 * h,), device)
            sd[p + "self_attn.in_proj2.weight"] = _t((a // 2, d), device, fill)
            sd[p + "self_attn.linear_pos.weight"] = _t((4 * h, d), device, fill)
            for m in ("out_proj", "out_proj2"):
                sd[f"{p}self_attn.{m}.weight"] = _t((d, a // 2), device, fill)
                sd[f"{p}self_attn.{m}.bias"] = _t((d,), device)
            sd[p + "pooling.proj.weight"] = _t((d, d), device, fill)
            for m in ("conv_module1", "conv_module2"):
                sd[f"{p}{m}.pointwise_conv1.weight"] = _t((2 * d, d, 1), device, fill)
                sd[f"{p}{m}.pointwise_conv1.bias"] = _t((2 * d,), device)
                sd[f"{p}{m}.depthwise_conv.weight"] = _t((d, 1, k), device, fill)
                sd[f"{p}{m}.depthwise_conv.bias"] = _t((d,), device)
                sd[f"{p}{m}.pointwise_conv2.weight"] = _t((d, d, 1), device, fill)
                sd[f"{p}{m}.pointwise_conv2.bias"] = _t((d,), device)
                sd[f"{p}{m}.deriv_balancer1.count"] = _t((), device)
            sd[p + "norm_final.eps"] = _t((), device)
        if i and ds[i] < ds[i - 1]:
            sd[f"encoder.skip_modules.{i}.weight1"] = _t((), device)
    sd["encoder.downsample_output.query"] = _t((dims[-1],), device)
    _common(sd, vocab, dims[-1], decoder_dim, joiner_dim, context_size, device, 4, fill)
    return sd


def conv_emformer_state(layers=12, dim=512, ff=2048, kernel=31, decoder_dim=512, joiner_dim=512, vocab=500,
                        context_size=2, device="meta") -> dict:
    sd: dict = {}
    emb = "encoder.encoder_embed."
    sd[emb + "out.weight"] = _t((dim, 128 * 19), device)
    sd[emb + "out.bias"] = _t((dim,), device)

    def lin(name, shape):
        sd[name + ".weight"] = _t(shape, device)
        sd[name + ".bias"] = _t(shape[:1], device)
        sd[name + ".weight_scale"] = _t((), device)
        sd[name + ".bias_scale"] = _t((), device)

    for i in range(layers):
        p = f"encoder.encoder.emformer_layers.{i}."
        lin(p + "attention.emb_to_query", (dim, dim))
        lin(p + "attention.emb_to_key_value", (2 * dim, dim))
        lin(p + "attention.out_proj", (dim, dim))
        for m in ("feed_forward", "feed_forward_macaron"):
            lin(f"{p}{m}.0", (ff, dim))
            lin(f"{p}{m}.4", (dim, ff))
        lin(p + "conv_module.pointwise_conv1", (2 * dim, dim, 1))
        lin(p + "conv_module.depthwise_conv", (dim, 1, kernel))
        lin(p + "conv_module.pointwise_conv2", (dim, dim, 1))
        sd[p + "norm_final.eps"] = _t((), device)
    _common(sd, vocab, dim, decoder_dim, joiner_dim, context_size, device, 1, scaled=True)
    return sd


def lstm_state(layers=12, dim=512, hidden=1024, ff=2048, decoder_dim=512, joiner_dim=512, vocab=500, context_size=2,
               giga=False, device="meta") -> dict:
    sd: dict = {}
    emb = "encoder.encoder_embed."
    sd[emb + "out.weight"] = _t((dim, 2304), device)
    sd[emb + "out.bias"] = _t((dim,), device)
    proj = dim if hidden > dim else 0
    for i in range(layers):
        p = f"encoder.encoder.layers.{i}."
        shapes = {"weight_ih_l0": (4 * hidden, dim), "weight_hh_l0": (4 * hidden, proj or hidden),
                  "bias_ih_l0": (4 * hidden,), "bias_hh_l0": (4 * hidden,)}
        if proj:
            shapes["weight_hr_l0"] = (proj, hidden)
        for n, shape in shapes.items():
            sd[f"{p}lstm.{n}"] = _t(shape, device)
            sd[f"{p}lstm.{n}_scale"] = _t((), device)
        sd[p + "feed_forward.0.weight"] = _t((ff, dim), device)
        sd[p + "feed_forward.4.weight"] = _t((dim, ff), device)
        sd[p + "norm_final.eps"] = _t((), device)
    _common(sd, vocab, dim, decoder_dim, joiner_dim, context_size, device, 1, scaled=True)
    if giga:
        sd["decoder_giga.embedding.weight"] = _t((vocab, decoder_dim), device)
        sd["joiner_giga.output_linear.weight"] = _t((vocab, joiner_dim), device)
    return sd


def zipformer2_state(device="meta") -> dict:
    """A few keys of the new Zipformer2 (egs/librispeech/ASR/zipformer/zipformer.py)."""
    return {
        "encoder.encoders.0.layers.0.self_attn_weights.in_proj.weight": _t((268, 192), device),
        "encoder.encoders.0.layers.0.nonlin_attention.in_proj.weight": _t((432, 192), device),
        "encoder.encoders.0.layers.0.feed_forward1.in_proj.weight": _t((512, 192), device),
        "decoder.embedding.weight": _t((500, 512), device),
    }


def materialize(sd: dict) -> dict:
    """Real (zero) tensors for a meta state dict, so it can be saved."""
    import torch
    return {k: torch.zeros(v.shape) for k, v in sd.items()}
