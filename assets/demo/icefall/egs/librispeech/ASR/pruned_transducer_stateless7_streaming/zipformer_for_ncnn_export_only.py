"""A miniature streaming Zipformer (v1) for the sherpa-ncnn-wizard demo.

It stands in for icefall's ``zipformer_for_ncnn_export_only.py``: same
constructor arguments, same module and parameter names (so checkpoint
inspection finds what it finds in a real checkpoint), and, above all, the same
streaming interface that icefall's export traces and sherpa-ncnn's
ZipformerModel drives:

* ``streaming_forward(x, states)`` with ``x`` of shape (1, decode_chunk_len + 7, 80)
  and ``7 * num_stacks`` states grouped by kind across stacks: cached_len
  (L, 1), cached_avg (L, 1, D), cached_key (L, C, 1, A), cached_val and
  cached_val2 (L, C, 1, A/2), cached_conv1 and cached_conv2 (L, 1, D, K-1),
  with C = (decode_chunk_len / 2 * num_left_chunks) / ds;
* it returns (1, decode_chunk_len / 4, D_last) and the new states, same shapes.

The layers are simplified (ReLU/DoubleSwish instead of the balancers, one
feed-forward module instead of three, LayerNorm instead of BasicNorm, no
relative positional encoding), and every op is one that the pnnx wheel lowers
to an ncnn layer sherpa-ncnn's runtime has. Every state is read and written,
so pnnx keeps every input and numbers the blobs in0..in{7N} / out0..out{7N}.

Inside, every tensor is batch-first, (1, T, D), where icefall is time-major
(see ``to_batch_first``), and reshape/slice sizes are static Python ints taken
from the configuration (like icefall's ``is_pnnx`` mode). The one count that
enters the arithmetic, the frames the pooling adds to cached_len, is read from
the input as icefall reads it (pnnx folds it to a constant), and no Python
number is shared by several layers (see ``ScaleBy``): both keep pnnx's shape
inference right for the list of states icefall's export traces.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def double_swish(x: Tensor) -> Tensor:
    """icefall's DoubleSwish, x * sigmoid(x - 1): Sigmoid + BinaryOp in ncnn (no Swish layer needed)."""
    return x * torch.sigmoid(x - 1.0)


def to_batch_first(state: Tensor, batch_axis: int) -> Tensor:
    """Move a state's batch axis (size 1) to the front: the layout every op inside uses.

    pnnx decides which axis is the batch (and drops it in ncnn) by propagating
    from ops it knows (convolutions, LSTM, ...), which all put the batch first.
    Keeping every intermediate batch-first leaves it one consistent answer, and
    the permutes at the boundary tell it where the batch sits in each state.
    """
    dims = [batch_axis] + [d for d in range(state.dim()) if d != batch_axis]
    return state.permute(*dims)


def from_batch_first(state: Tensor, batch_axis: int) -> Tensor:
    """Inverse of :func:`to_batch_first`."""
    rank = state.dim()
    others = list(range(1, rank))
    dims = others[:batch_axis] + [0] + others[batch_axis:]
    return state.permute(*dims)


def unbatched(x: Tensor, shape: Tuple[int, ...]) -> Tensor:
    """Reshape a batch-first state to ``shape`` so that pnnx keeps every axis of it in ncnn.

    sherpa-ncnn reshapes the new cached_len with ``Mat::reshape(h)`` and the new
    cached_avg with ``reshape(w, c)``, so those two outputs must keep their
    size-1 axis: (h=L, w=1) and (c=L, h=1, w=D). A reshape that moves the
    batch axis away from the front makes pnnx give up on a batch axis, and
    ncnn's Reshape then gets the full shape.
    """
    return x.reshape(shape)


class ScaleBy(nn.Module):
    """``x * factor`` as a module of its own (no parameters), so the traced constant is this module's alone.

    torch.jit.trace turns a Python number in tensor arithmetic into a tensor
    constant, and one constant serves every use of the same value within a
    traced method: the attention scale of every layer would be a single
    constant used by all of them. pnnx copies such a shared constant for each
    further use; in its shape inference it does that before it splits the
    list argument into separate inputs in one copy of the graph and after it in
    the other, so the copies' generated names differ, the two graphs' values no
    longer line up by name, and every shape pnnx infers after the first copy
    belongs to another value (wrong Reshape and Slice parameters in the ncnn
    file). Called through ``__call__``, each instance gets its own traced
    method and its own constant, used once.
    """

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor


class Conv2dSubsampling(nn.Module):
    """(1, T, 80) -> (1, (T - 7) // 2, D): icefall's frame arithmetic with three 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 4,
                 layer2_channels: int = 8, layer3_channels: int = 8):
        super().__init__()
        # indices 0, 3, 6 like icefall's Sequential (conv, balancer, activation)
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)), nn.Identity(), nn.ReLU(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2), nn.Identity(), nn.ReLU(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)), nn.Identity(), nn.ReLU(),
        )
        self.freq = ((in_channels - 1) // 2 - 1) // 2
        self.channels = layer3_channels
        self.out = nn.Linear(layer3_channels * self.freq, out_channels)

    def forward(self, x: Tensor, t_out: int) -> Tensor:
        x = self.conv(x.unsqueeze(1))  # (1, C, t_out, F)
        x = x.transpose(1, 2).reshape(1, t_out, self.channels * self.freq)
        return self.out(x)


class FeedforwardModule(nn.Module):
    def __init__(self, d_model: int, feedforward_dim: int):
        super().__init__()
        self.in_proj = nn.Linear(d_model, feedforward_dim)
        self.out_proj = nn.Linear(feedforward_dim, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_proj(double_swish(self.in_proj(x)))


class PoolingModule(nn.Module):
    """Running average of all frames seen so far (cached_len frames averaged in cached_avg)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def streaming_forward(self, x: Tensor, cached_len: Tensor, cached_avg: Tensor):
        """x (1, T, D); cached_len (1, 1); cached_avg (1, 1, D) -> (pooled (1, 1, D), new len, new avg).

        The frame count is read from ``x`` (as icefall does), not passed in as a
        number: see :class:`ScaleBy` for why a number repeated in every layer
        breaks pnnx when the states come as a list.
        """
        frames = x.size(1)
        n = cached_len.unsqueeze(-1)  # (1, 1, 1)
        avg = (cached_avg * n + x.sum(dim=1, keepdim=True)) / (n + frames)
        return self.proj(avg), cached_len + frames, avg


class RelPositionMultiheadAttention(nn.Module):
    """Chunk attention over cached keys/values; the weights are reused for a second value stream (val2).

    ``in_proj`` has icefall's output size 2A + A/2 + 4H (query, key, value,
    positional query); ``in_proj2`` gives the second value stream. Heads are
    taken by slicing the feature axis.
    """

    def __init__(self, embed_dim: int, attention_dim: int, num_heads: int, pos_dim: int = 4):
        super().__init__()
        assert attention_dim % (2 * num_heads) == 0, (attention_dim, num_heads)
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.in_proj = nn.Linear(embed_dim, 2 * attention_dim + attention_dim // 2 + pos_dim * num_heads)
        self.in_proj2 = nn.Linear(embed_dim, attention_dim // 2, bias=False)
        self.linear_pos = nn.Linear(embed_dim, num_heads * pos_dim, bias=False)  # kept for icefall's key shapes
        self.out_proj = nn.Linear(attention_dim // 2, embed_dim)
        self.out_proj2 = nn.Linear(attention_dim // 2, embed_dim)
        self.query_scale = ScaleBy((attention_dim // num_heads) ** -0.5)

    def streaming_forward(self, x: Tensor, x_size: int, cached_key: Tensor, cached_val: Tensor):
        """x (1, T, D); cached_key (1, C, A); cached_val (1, C, A/2) -> out, weights, new key, new val."""
        a, h = self.attention_dim, self.num_heads
        dk, dv = a // h, a // (2 * h)
        proj = self.in_proj(x)
        q = self.query_scale(proj[:, :, :a])
        keys = torch.cat([cached_key, proj[:, :, a:2 * a]], dim=1)  # (1, C + T, A)
        vals = torch.cat([cached_val, proj[:, :, 2 * a:2 * a + a // 2]], dim=1)  # (1, C + T, A/2)
        weights, outs = [], []
        for i in range(h):
            kh = keys[:, :, i * dk:(i + 1) * dk].transpose(1, 2)  # (1, dk, C + T)
            w = torch.matmul(q[:, :, i * dk:(i + 1) * dk], kh).softmax(dim=-1)  # (1, T, C + T)
            weights.append(w)
            outs.append(torch.matmul(w, vals[:, :, i * dv:(i + 1) * dv]))  # (1, T, dv)
        out = self.out_proj(torch.cat(outs, dim=-1))
        return out, weights, keys[:, x_size:], vals[:, x_size:]

    def streaming_forward2(self, x: Tensor, x_size: int, weights: List[Tensor], cached_val2: Tensor):
        """The second attention: same weights, values from ``in_proj2(x)`` and cached_val2."""
        dv = self.attention_dim // (2 * self.num_heads)
        vals = torch.cat([cached_val2, self.in_proj2(x)], dim=1)  # (1, C + T, A/2)
        outs = [torch.matmul(w, vals[:, :, i * dv:(i + 1) * dv]) for i, w in enumerate(weights)]
        return self.out_proj2(torch.cat(outs, dim=-1)), vals[:, x_size:]


class ConvolutionModule(nn.Module):
    """Causal depthwise convolution whose left context (K - 1 frames) is carried in the cache."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        assert kernel_size >= 3 and kernel_size % 2 == 1, kernel_size
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, kernel_size=1)
        self.depthwise_conv = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def streaming_forward(self, x: Tensor, x_size: int, cache: Tensor):
        """x (1, T, D); cache (1, D, K - 1) -> ((1, T, D), new cache)."""
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # (1, D, T)
        x = torch.cat([cache, x], dim=2)  # (1, D, K - 1 + T)
        new_cache = x[:, :, x_size:]
        x = self.pointwise_conv2(torch.relu(self.depthwise_conv(x)))
        return x.transpose(1, 2), new_cache


class ZipformerEncoderLayer(nn.Module):
    def __init__(self, d_model: int, attention_dim: int, nhead: int, feedforward_dim: int,
                 cnn_module_kernel: int):
        super().__init__()
        self.feed_forward1 = FeedforwardModule(d_model, feedforward_dim)
        self.pooling = PoolingModule(d_model)
        self.self_attn = RelPositionMultiheadAttention(d_model, attention_dim, nhead)
        self.conv_module1 = ConvolutionModule(d_model, cnn_module_kernel)
        self.conv_module2 = ConvolutionModule(d_model, cnn_module_kernel)
        self.norm_final = nn.LayerNorm(d_model)

    def streaming_forward(self, src: Tensor, x_size: int, cached_len: Tensor, cached_avg: Tensor,
                          cached_key: Tensor, cached_val: Tensor, cached_val2: Tensor, cached_conv1: Tensor,
                          cached_conv2: Tensor):
        """One layer on (1, T, D); the cached_* are this layer's states, batch-first."""
        src = src + self.feed_forward1(src)
        pooled, new_len, new_avg = self.pooling.streaming_forward(src, cached_len, cached_avg)
        src = src + pooled
        attn, weights, new_key, new_val = self.self_attn.streaming_forward(src, x_size, cached_key, cached_val)
        src = src + attn
        conv, new_conv1 = self.conv_module1.streaming_forward(src, x_size, cached_conv1)
        src = src + conv
        attn2, new_val2 = self.self_attn.streaming_forward2(src, x_size, weights, cached_val2)
        src = src + attn2
        conv, new_conv2 = self.conv_module2.streaming_forward(src, x_size, cached_conv2)
        src = self.norm_final(src + conv)
        return src, new_len, new_avg, new_key, new_val, new_val2, new_conv1, new_conv2


# For each state kind: where icefall keeps the batch axis, and how a layer's slice is taken from the
# batch-first stack (len and avg keep the layer axis of size 1; the others drop it).
_BATCH_AXES = (1, 1, 2, 2, 2, 1, 1)


class ZipformerEncoder(nn.Module):
    """One stack of ``num_layers`` layers at one frame rate (x_size frames per chunk)."""

    def __init__(self, d_model: int, attention_dim: int, nhead: int, feedforward_dim: int,
                 cnn_module_kernel: int, num_layers: int, x_size: int, left_context_len: int):
        super().__init__()
        self.layers = nn.ModuleList([
            ZipformerEncoderLayer(d_model, attention_dim, nhead, feedforward_dim, cnn_module_kernel)
            for _ in range(num_layers)])
        self.num_layers = num_layers
        self.d_model = d_model
        self.attention_dim = attention_dim
        self.cnn_module_kernel = cnn_module_kernel
        self.x_size = x_size
        self.left_context_len = left_context_len

    def streaming_forward(self, src: Tensor, *states: Tensor):
        """src (1, T, D) and this stack's 7 states in icefall's layout -> (src, 7 new states, same layout)."""
        bf = [to_batch_first(s, axis) for s, axis in zip(states, _BATCH_AXES)]
        new: List[List[Tensor]] = [[] for _ in range(7)]
        for j, layer in enumerate(self.layers):
            mine = [bf[0][:, j:j + 1], bf[1][:, j:j + 1]] + [s[:, j] for s in bf[2:]]
            src, *out = layer.streaming_forward(src, self.x_size, *mine)
            for kind, state in zip(new, out):
                kind.append(state)
        n, d = self.num_layers, self.d_model
        # new cached_len/cached_avg: full shapes for sherpa-ncnn's reshapes (see unbatched)
        new_len = unbatched(torch.cat(new[0], dim=1), (n, 1))
        new_avg = unbatched(torch.cat(new[1], dim=1), (n, 1, d))
        rest = [from_batch_first(torch.stack(kind, dim=1), axis) for kind, axis in zip(new[2:], _BATCH_AXES[2:])]
        return (src, new_len, new_avg, *rest)


class AttentionDownsample(nn.Module):
    """Frame-rate reduction by ``downsample``: a learned query scores each group of frames."""

    def __init__(self, in_channels: int, out_channels: int, downsample: int):
        super().__init__()
        # icefall's ncnn export asserts extra_proj is None, i.e. out_channels == in_channels
        assert out_channels == in_channels, (
            "The code for it being not None is not tested: the ncnn export needs equal --encoder-dims "
            f"across downsampled stacks (got {in_channels} -> {out_channels})")
        self.query = nn.Parameter(torch.randn(in_channels) * (in_channels ** -0.5))
        self.downsample = downsample
        self.channels = in_channels

    def forward(self, src: Tensor, seq_len: int) -> Tensor:
        """(1, seq_len, C) -> (1, seq_len // ds, C)."""
        ds, c = self.downsample, self.channels
        src = src.reshape(1, seq_len // ds, ds, c)
        weights = (src * self.query.reshape(1, 1, 1, c)).sum(dim=-1, keepdim=True).softmax(dim=2)  # (1, T', ds, 1)
        return (src * weights).sum(dim=2)


class SimpleUpsample(nn.Module):
    """Frame-rate increase by repetition plus a learned per-phase bias (icefall's SimpleUpsample)."""

    def __init__(self, num_channels: int, upsample: int):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(upsample, num_channels) * 0.01)

    def forward(self, src: Tensor, seq_len: int) -> Tensor:
        """(1, seq_len, C) -> (1, seq_len * upsample, C)."""
        upsample, c = self.bias.shape
        src = src.unsqueeze(2) + self.bias.reshape(1, 1, upsample, c)  # (1, T, ds, C)
        return src.reshape(1, seq_len * upsample, c)


class SimpleCombiner(nn.Module):
    """Weighted mix of the stack's input and output."""

    def __init__(self, dim1: int, dim2: int):
        super().__init__()
        assert dim2 >= dim1, (dim2, dim1)
        self.weight1 = nn.Parameter(torch.zeros(()))

    def forward(self, src1: Tensor, src2: Tensor) -> Tensor:
        return src1 * self.weight1 + src2 * (1.0 - self.weight1)


class DownsampledZipformerEncoder(nn.Module):
    """A stack run at 1/ds of the frame rate, upsampled again and combined with its input."""

    def __init__(self, encoder: ZipformerEncoder, input_dim: int, output_dim: int, downsample: int):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = AttentionDownsample(input_dim, output_dim, downsample)
        self.encoder = encoder
        self.upsample = SimpleUpsample(output_dim, downsample)
        self.out_combiner = SimpleCombiner(input_dim, output_dim)

    def streaming_forward(self, src: Tensor, *states: Tensor):
        src_orig = src
        x_size = self.encoder.x_size
        src = self.downsample(src, x_size * self.downsample_factor)
        src, *new_states = self.encoder.streaming_forward(src, *states)
        src = self.upsample(src, x_size)
        return (self.out_combiner(src_orig, src), *new_states)


class Zipformer(nn.Module):
    """The encoder: subsampling, the stacks at their frame rates, and the final 2x downsampling."""

    def __init__(self, num_features: int, output_downsampling_factor: int = 2,
                 encoder_dims: Tuple[int, ...] = (384, 384), attention_dims: Tuple[int, ...] = (256, 256),
                 encoder_unmasked_dims: Tuple[int, ...] = (256, 256), nhead: Tuple[int, ...] = (8, 8),
                 feedforward_dim: Tuple[int, ...] = (1536, 2048), num_encoder_layers: Tuple[int, ...] = (12, 12),
                 cnn_module_kernels: Tuple[int, ...] = (31, 31),
                 zipformer_downsampling_factors: Tuple[int, ...] = (2, 4), decode_chunk_size: int = 16,
                 num_left_chunks: int = 4, is_pnnx: bool = True):
        super().__init__()
        n = len(encoder_dims)
        for name, v in (("attention_dims", attention_dims), ("encoder_unmasked_dims", encoder_unmasked_dims),
                        ("nhead", nhead), ("feedforward_dim", feedforward_dim),
                        ("num_encoder_layers", num_encoder_layers), ("cnn_module_kernels", cnn_module_kernels),
                        ("zipformer_downsampling_factors", zipformer_downsampling_factors)):
            assert len(v) == n, f"{name} has {len(v)} entries but encoder_dims has {n}"
        for i in range(n):
            assert encoder_unmasked_dims[i] <= encoder_dims[i], (encoder_unmasked_dims[i], encoder_dims[i])
        assert output_downsampling_factor == 2, output_downsampling_factor
        assert decode_chunk_size % output_downsampling_factor == 0, decode_chunk_size

        self.num_features = num_features
        self.encoder_dims = tuple(encoder_dims)
        self.zipformer_downsampling_factors = tuple(zipformer_downsampling_factors)
        self.output_downsampling_factor = output_downsampling_factor
        self.decode_chunk_size = decode_chunk_size  # frames after the 2x subsampling
        self.num_left_chunks = num_left_chunks
        self.left_context_len = decode_chunk_size * num_left_chunks
        self.is_pnnx = is_pnnx
        self.num_encoders = n

        self.encoder_embed = Conv2dSubsampling(num_features, encoder_dims[0])
        encoders = []
        for i, ds in enumerate(zipformer_downsampling_factors):
            assert decode_chunk_size % ds == 0, (
                f"decode_chunk_size {decode_chunk_size} is not divisible by downsampling factor {ds}")
            encoder = ZipformerEncoder(encoder_dims[i], attention_dims[i], nhead[i], feedforward_dim[i],
                                       cnn_module_kernels[i], num_encoder_layers[i],
                                       x_size=decode_chunk_size // ds, left_context_len=self.left_context_len // ds)
            in_dim = encoder_dims[i - 1] if i > 0 else encoder_dims[0]
            if ds != 1:
                encoder = DownsampledZipformerEncoder(encoder, in_dim, encoder_dims[i], ds)
            elif in_dim != encoder_dims[i]:
                raise ValueError(f"stack {i}: --encoder-dims changes from {in_dim} to {encoder_dims[i]} at "
                                 "downsampling factor 1; the demo model cannot do that")
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)
        self.downsample_output = AttentionDownsample(encoder_dims[-1], encoder_dims[-1],
                                                     downsample=output_downsampling_factor)

    def _stack(self, i: int) -> ZipformerEncoder:
        e = self.encoders[i]
        return e.encoder if isinstance(e, DownsampledZipformerEncoder) else e

    def forward(self, x: Tensor, x_lens: Tensor):
        raise NotImplementedError("the demo Zipformer only has streaming_forward (what the ncnn export traces)")

    def streaming_forward(self, x: Tensor, states: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """x (1, decode_chunk_len + 7, 80) and 7N states -> ((1, decode_chunk_len / 4, D_last), 7N states)."""
        n = self.num_encoders
        assert len(states) == 7 * n, (len(states), n)
        x = self.encoder_embed(x, self.decode_chunk_size)  # (1, T, C); icefall goes time-major here
        new_states: List[List[Tensor]] = [[] for _ in range(7)]
        for i, module in enumerate(self.encoders):
            x, *stack_states = module.streaming_forward(x, *(states[k * n + i] for k in range(7)))
            for kind, state in zip(new_states, stack_states):
                kind.append(state)
        x = self.downsample_output(x, self.decode_chunk_size)
        return x, [s for kind in new_states for s in kind]

    def get_init_state(self, device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Zero states in icefall's order: all cached_len, then all cached_avg, ..., then all cached_conv2."""
        kinds: List[List[Tensor]] = [[] for _ in range(7)]
        for i in range(self.num_encoders):
            e = self._stack(i)
            L, D, A, C, K = e.num_layers, e.d_model, e.attention_dim, e.left_context_len, e.cnn_module_kernel
            shapes = [(L, 1), (L, 1, D), (L, C, 1, A), (L, C, 1, A // 2), (L, C, 1, A // 2),
                      (L, 1, D, K - 1), (L, 1, D, K - 1)]
            for kind, shape in zip(kinds, shapes):
                kind.append(torch.zeros(*shape, device=device))
        return [s for kind in kinds for s in kind]
