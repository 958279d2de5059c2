"""A miniature ConvEmformer for the sherpa-ncnn-wizard demo.

It stands in for icefall's ``conv_emformer_transducer_stateless2/emformer2.py``:
same constructor arguments, icefall's module and parameter names, and the
streaming interface that icefall's export traces and sherpa-ncnn's
ConvEmformerModel drives:

* input (1, chunk_length + right_context_length + 11, 80);
* per layer i, four states (interleaved): memory (memory_size, 1, D), left key
  cache (left_context_length / 4, 1, D), left value cache (same), and the
  convolution cache (1, D, cnn_module_kernel - 1);
* output (1, chunk_length / 4, D) and the new states, same shapes and order.

The layers are simplified (DoubleSwish as Sigmoid+Mul, LayerNorm, no masks):
a macaron feed-forward, multi-head attention over [memory; left context;
chunk; right context], a causal depthwise convolution, a feed-forward. The
memory bank gets one new entry per chunk (the chunk's mean attention output).
Every op lowers to an ncnn layer sherpa-ncnn's runtime has, and every state
is read and written, so pnnx keeps the blob numbering in0..in{4L} / out0..out{4L}.
Inside, every tensor is batch-first (see ``to_batch_first``), and no Python
number is shared by several layers (see ``ScaleBy``), which keeps pnnx's shape
inference right for the list of states icefall's export traces.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DoubleSwish(nn.Module):
    """x * sigmoid(x - 1): Sigmoid + BinaryOp in ncnn (pnnx would turn nn.SiLU into Swish, which sherpa-ncnn lacks)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x - 1.0)


class ScaleBy(nn.Module):
    """``x * factor`` as a module of its own (no parameters), so the traced constant is this instance's alone.

    torch.jit.trace makes a Python number in tensor arithmetic a tensor
    constant, shared by every use of that value within one traced method (the
    attention scale of all layers, the four 0.5 feed-forward weights). pnnx
    copies a shared constant once per further use, and in its shape inference
    it does so before splitting the ``states`` list into inputs in one copy of
    the graph and after it in the other: the copies get different generated
    names, the two graphs' values stop lining up by name, and every shape
    inferred after the first copy is another value's (wrong Slice and Reshape
    parameters in the ncnn file). Each instance is traced as its own method, so
    its constant is used once.
    """

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


def to_batch_first(state: Tensor) -> Tensor:
    """(N, 1, D) -> (1, N, D).

    pnnx decides which axis is the batch (and drops it in ncnn) by propagating
    from ops it knows (convolutions, linear layers on batch-first input, ...).
    Keeping every intermediate batch-first gives it one consistent answer; the
    permute at the boundary tells it that these states carry the batch on axis 1.
    """
    return state.permute(1, 0, 2)


def from_batch_first(state: Tensor) -> Tensor:
    """(1, N, D) -> (N, 1, D): the layout icefall and sherpa-ncnn use for the states."""
    return state.permute(1, 0, 2)


class Conv2dSubsampling(nn.Module):
    """(1, T, 80) -> (1, ((T - 1) // 2 - 1) // 2, D) with two stride-2 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 4, layer2_channels: int = 8):
        super().__init__()
        self.conv = nn.Sequential(  # indices 0, 3 like icefall's (conv, balancer, activation)
            nn.Conv2d(1, layer1_channels, kernel_size=3, stride=2), nn.Identity(), DoubleSwish(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2), nn.Identity(), DoubleSwish(),
        )
        self.freq = ((in_channels - 1) // 2 - 1) // 2
        self.channels = layer2_channels
        self.out = nn.Linear(layer2_channels * self.freq, out_channels)

    def forward(self, x: Tensor, t_out: int) -> Tensor:
        x = self.conv(x.unsqueeze(1))  # (1, C, t_out, F)
        x = x.transpose(1, 2).reshape(1, t_out, self.channels * self.freq)
        return self.out(x)


def _feed_forward(d_model: int, dim_feedforward: int) -> nn.Sequential:
    # indices 0 and 4 are the linear layers, as in icefall (0 linear, 1 balancer, 2 act, 3 dropout, 4 linear)
    return nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.Identity(), DoubleSwish(), nn.Identity(),
                         nn.Linear(dim_feedforward, d_model))


class EmformerAttention(nn.Module):
    """Multi-head attention of the chunk (+ right context) over memory, cached left context and itself."""

    def __init__(self, embed_dim: int, nhead: int):
        super().__init__()
        assert embed_dim % nhead == 0, (embed_dim, nhead)
        self.embed_dim = embed_dim
        self.nhead = nhead
        self.emb_to_query = nn.Linear(embed_dim, embed_dim)
        self.emb_to_key_value = nn.Linear(embed_dim, 2 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.query_scale = ScaleBy((embed_dim // nhead) ** -0.5)

    def infer(self, x: Tensor, memory: Tensor, left_key: Tensor, left_val: Tensor, chunk: int, lc: int):
        """x (1, U, D); memory (1, M, D); left_key/left_val (1, lc, D) -> (out, new left key, new left val)."""
        d, h = self.embed_dim, self.nhead
        dh = d // h
        q = self.query_scale(self.emb_to_query(x))
        kv = self.emb_to_key_value(x)
        kv_mem = self.emb_to_key_value(memory)
        k_x, v_x = kv[:, :, :d], kv[:, :, d:]
        keys = torch.cat([kv_mem[:, :, :d], left_key, k_x], dim=1)  # (1, M + Lc + U, D)
        vals = torch.cat([kv_mem[:, :, d:], left_val, v_x], dim=1)
        outs = []
        for i in range(h):
            s = slice(i * dh, (i + 1) * dh)
            w = torch.matmul(q[:, :, s], keys[:, :, s].transpose(1, 2)).softmax(dim=-1)
            outs.append(torch.matmul(w, vals[:, :, s]))
        out = self.out_proj(torch.cat(outs, dim=-1))
        # the left-context caches keep the last Lc keys/values of the chunk (not the right context)
        new_key = torch.cat([left_key, k_x[:, :chunk]], dim=1)[:, chunk:chunk + lc]
        new_val = torch.cat([left_val, v_x[:, :chunk]], dim=1)[:, chunk:chunk + lc]
        return out, new_key, new_val


class ConvolutionModule(nn.Module):
    """Causal depthwise convolution; the cache holds the last K - 1 frames of the previous chunks."""

    def __init__(self, chunk_length: int, right_context_length: int, channels: int, kernel_size: int):
        super().__init__()
        assert kernel_size >= 3 and kernel_size % 2 == 1, kernel_size
        self.chunk_length = chunk_length
        self.right_context_length = right_context_length
        self.cache_size = kernel_size - 1
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def infer(self, x: Tensor, cache: Tensor) -> Tuple[Tensor, Tensor]:
        """x (1, U, D); cache (1, D, K - 1) -> ((1, U, D), new cache)."""
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # (1, D, U)
        x = torch.cat([cache, x], dim=2)  # (1, D, K - 1 + U)
        new_cache = x[:, :, self.chunk_length:self.chunk_length + self.cache_size]
        x = self.pointwise_conv2(torch.relu(self.depthwise_conv(x)))
        return x.transpose(1, 2), new_cache


class EmformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, chunk_length: int,
                 cnn_module_kernel: int, left_context_length: int, right_context_length: int, memory_size: int):
        super().__init__()
        self.chunk_length = chunk_length
        self.left_context_length = left_context_length
        self.attention = EmformerAttention(d_model, nhead)
        self.feed_forward_macaron = _feed_forward(d_model, dim_feedforward)
        self.feed_forward = _feed_forward(d_model, dim_feedforward)
        self.conv_module = ConvolutionModule(chunk_length, right_context_length, d_model, cnn_module_kernel)
        self.norm_final = nn.LayerNorm(d_model)
        self.half_macaron = ScaleBy(0.5)  # the two feed-forward modules count half each
        self.half_feed_forward = ScaleBy(0.5)

    def infer(self, x: Tensor, memory: Tensor, left_key: Tensor, left_val: Tensor, conv_cache: Tensor):
        """One layer on (1, U, D) with its four states (batch-first); returns x and the new states."""
        x = x + self.half_macaron(self.feed_forward_macaron(x))
        attn, new_key, new_val = self.attention.infer(x, memory, left_key, left_val, self.chunk_length,
                                                            self.left_context_length)
        x = x + attn
        summary = attn[:, :self.chunk_length].mean(dim=1, keepdim=True)  # (1, 1, D)
        new_memory = torch.cat([memory, summary], dim=1)[:, 1:]
        conv, new_conv_cache = self.conv_module.infer(x, conv_cache)
        x = x + conv
        x = self.norm_final(x + self.half_feed_forward(self.feed_forward(x)))
        return x, new_memory, new_key, new_val, new_conv_cache


class EmformerEncoder(nn.Module):
    def __init__(self, chunk_length: int, d_model: int, nhead: int, dim_feedforward: int,
                 num_encoder_layers: int, cnn_module_kernel: int, left_context_length: int,
                 right_context_length: int, memory_size: int):
        super().__init__()
        self.emformer_layers = nn.ModuleList([
            EmformerEncoderLayer(d_model, nhead, dim_feedforward, chunk_length, cnn_module_kernel,
                                 left_context_length, right_context_length, memory_size)
            for _ in range(num_encoder_layers)])
        self.chunk_length = chunk_length
        self.d_model = d_model
        self.cnn_module_kernel = cnn_module_kernel
        self.left_context_length = left_context_length
        self.memory_size = memory_size

    def infer(self, x: Tensor, states: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """x (1, U, D) and 4 states per layer -> ((1, chunk, D), new states)."""
        assert len(states) == 4 * len(self.emformer_layers), (len(states), len(self.emformer_layers))
        new_states: List[Tensor] = []
        for i, layer in enumerate(self.emformer_layers):
            memory, left_key, left_val, conv_cache = states[4 * i:4 * i + 4]
            x, memory, left_key, left_val, conv_cache = layer.infer(
                x, to_batch_first(memory), to_batch_first(left_key), to_batch_first(left_val), conv_cache)
            new_states += [from_batch_first(memory), from_batch_first(left_key), from_batch_first(left_val),
                           conv_cache]
        return x[:, :self.chunk_length], new_states

    def init_states(self, device: torch.device = torch.device("cpu")) -> List[Tensor]:
        states: List[Tensor] = []
        for _ in self.emformer_layers:
            states += [torch.zeros(self.memory_size, 1, self.d_model, device=device),
                       torch.zeros(self.left_context_length, 1, self.d_model, device=device),
                       torch.zeros(self.left_context_length, 1, self.d_model, device=device),
                       torch.zeros(1, self.d_model, self.cnn_module_kernel - 1, device=device)]
        return states


class Emformer(nn.Module):
    """The encoder: subsampling by 4, drop the first and last frame, then the Emformer layers."""

    def __init__(self, num_features: int, chunk_length: int, subsampling_factor: int = 4, d_model: int = 256,
                 nhead: int = 4, dim_feedforward: int = 2048, num_encoder_layers: int = 12,
                 cnn_module_kernel: int = 3, left_context_length: int = 0, right_context_length: int = 0,
                 memory_size: int = 0, is_pnnx: bool = True):
        super().__init__()
        if subsampling_factor != 4:
            raise NotImplementedError("Support only 'subsampling_factor=4'.")
        if chunk_length % subsampling_factor != 0:
            raise NotImplementedError("chunk_length must be a mutiple of subsampling_factor.")
        if left_context_length != 0 and left_context_length % subsampling_factor != 0:
            raise NotImplementedError("left_context_length must be 0 or a mutiple of subsampling_factor.")
        if right_context_length != 0 and right_context_length % subsampling_factor != 0:
            raise NotImplementedError("right_context_length must be 0 or a mutiple of subsampling_factor.")
        # a (0, 1, D) state cannot become an ncnn Input; icefall traces it, the demo refuses it plainly
        if memory_size < 1:
            raise NotImplementedError("the demo ConvEmformer needs --memory-size >= 1 (a memory of 0 entries "
                                      "would be a (0, 1, D) state)")
        if left_context_length < subsampling_factor:
            raise NotImplementedError("the demo ConvEmformer needs --left-context-length >= 4 (a left context "
                                      "of 0 frames would be a (0, 1, D) state)")

        self.subsampling_factor = subsampling_factor
        self.chunk_length = chunk_length  # before subsampling
        self.right_context_length = right_context_length  # before subsampling
        self.left_context_length = left_context_length // subsampling_factor
        self.memory_size = memory_size
        self.d_model = d_model
        self.cnn_module_kernel = cnn_module_kernel
        self.num_encoder_layers = num_encoder_layers
        self.is_pnnx = is_pnnx
        pad_length = right_context_length + 2 * 4 + 3
        self.T = chunk_length + pad_length  # frames fed per chunk, before subsampling

        self.encoder_embed = Conv2dSubsampling(num_features, d_model)
        self.encoder = EmformerEncoder(
            chunk_length=chunk_length // subsampling_factor, d_model=d_model, nhead=nhead,
            dim_feedforward=dim_feedforward, num_encoder_layers=num_encoder_layers,
            cnn_module_kernel=cnn_module_kernel, left_context_length=left_context_length // subsampling_factor,
            right_context_length=right_context_length // subsampling_factor, memory_size=memory_size)

    def forward(self, x: Tensor, states: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Streaming: x (1, T, 80) and 4L states -> ((1, chunk_length / 4, D), 4L new states)."""
        u = (self.chunk_length + self.right_context_length) // self.subsampling_factor
        x = self.encoder_embed(x, u + 2)
        x = x[:, 1:-1, :]  # drop the first and last frames, as icefall does
        return self.encoder.infer(x, states)

    def init_states(self, device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Zero states, per layer: memory, left key, left value, conv cache."""
        return self.encoder.init_states(device)
