"""A miniature LSTM encoder for the sherpa-ncnn-wizard demo.

It stands in for icefall's ``lstm_transducer_stateless/lstm.py`` (the RNN that
``lstm_transducer_stateless2`` exports): same constructor arguments, icefall's
module and parameter names (``encoder.layers.{i}.lstm.weight_ih_l0`` ...), and
the interface that sherpa-ncnn's LstmModel drives:

* x (1, 9, 80) features and x_lens (1,) (a float, as sherpa-ncnn feeds 9.0);
* states h (num_layers, 1, d_model) and c (num_layers, 1, rnn_hidden_size);
* returns (1, 1, d_model), the output lengths ((x_lens - 3) // 2 - 1) // 2, and
  the new (h, c).

Each layer is an ``nn.LSTM`` with ``proj_size=d_model`` when the hidden size is
larger (ncnn's LSTM layer keeps the projection), followed by a feed-forward
module and LayerNorm. Every op lowers to an ncnn layer sherpa-ncnn's runtime has.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


class DoubleSwish(nn.Module):
    """x * sigmoid(x - 1): Sigmoid + BinaryOp in ncnn (pnnx would turn nn.SiLU into Swish, which sherpa-ncnn lacks)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x - 1.0)


class Conv2dSubsampling(nn.Module):
    """(1, T, 80) -> (1, ((T - 3) // 2 - 1) // 2, D): 9 frames -> 1, like icefall's LSTM front end."""

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 4,
                 layer2_channels: int = 8, layer3_channels: int = 8, is_pnnx: bool = False):
        super().__init__()
        self.is_pnnx = is_pnnx
        self.conv = nn.Sequential(  # indices 0, 3, 6 like icefall's (conv, balancer, activation)
            nn.Conv2d(1, layer1_channels, kernel_size=3), nn.Identity(), DoubleSwish(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2), nn.Identity(), DoubleSwish(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=2), nn.Identity(), DoubleSwish(),
        )
        self.freq = ((in_channels - 3) // 2 - 1) // 2
        self.channels = layer3_channels
        self.out = nn.Linear(layer3_channels * self.freq, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F)
        n, c, t, f = x.size()  # traced as size ops: the module runs on any chunk (pnnx bakes T' in a Reshape)
        if torch.jit.is_tracing() and self.is_pnnx:
            # icefall's export (is_pnnx): the batch of one is baked into the trace, so the traced encoder runs one
            # stream at a time (the wizard's batched torch decode must find that out and fall back, as on icefall's)
            return self.out(x.permute(0, 2, 1, 3).reshape(1, -1, c * f))
        return self.out(x.transpose(1, 2).reshape(n, t, c * f))


class RNNEncoderLayer(nn.Module):
    """LSTM (with projection when hidden > d_model) + feed-forward, each with a residual, then LayerNorm."""

    def __init__(self, d_model: int, rnn_hidden_size: int, dim_feedforward: int):
        super().__init__()
        assert rnn_hidden_size >= d_model, (rnn_hidden_size, d_model)
        proj_size = d_model if rnn_hidden_size > d_model else 0
        self.lstm = nn.LSTM(d_model, rnn_hidden_size, proj_size=proj_size, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.Identity(), DoubleSwish(),
                                          nn.Identity(), nn.Linear(dim_feedforward, d_model))
        self.norm_final = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x (1, T, D); h (1, 1, D); c (1, 1, H) -> (x, new h, new c)."""
        y, (h, c) = self.lstm(x, (h, c))
        x = x + y
        x = self.norm_final(x + self.feed_forward(x))
        return x, h, c


class RNNEncoder(nn.Module):
    def __init__(self, d_model: int, rnn_hidden_size: int, dim_feedforward: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([RNNEncoderLayer(d_model, rnn_hidden_size, dim_feedforward)
                                     for _ in range(num_layers)])

    def forward(self, x: Tensor, states: Tuple[Tensor, Tensor]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            x, h, c = layer(x, states[0][i:i + 1], states[1][i:i + 1])
            hs.append(h)
            cs.append(c)
        return x, (torch.cat(hs, dim=0), torch.cat(cs, dim=0))


class RNN(nn.Module):
    """The encoder: subsampling (9 frames -> 1) and the LSTM layers."""

    def __init__(self, num_features: int, subsampling_factor: int = 4, d_model: int = 512,
                 rnn_hidden_size: int = 1024, dim_feedforward: int = 2048, num_encoder_layers: int = 12,
                 aux_layer_period: int = 0, is_pnnx: bool = False):
        super().__init__()
        if subsampling_factor != 4:
            raise NotImplementedError("Support only 'subsampling_factor=4'.")
        self.num_features = num_features
        self.subsampling_factor = subsampling_factor
        self.d_model = d_model
        self.rnn_hidden_size = rnn_hidden_size
        self.num_encoder_layers = num_encoder_layers
        self.is_pnnx = is_pnnx
        self.encoder_embed = Conv2dSubsampling(num_features, d_model, is_pnnx=is_pnnx)
        self.encoder = RNNEncoder(d_model, rnn_hidden_size, dim_feedforward, num_encoder_layers)
        # aux_layer_period only matters for training (a random combiner); nothing to build here

    def forward(self, x: Tensor, x_lens: Tensor, states: Tuple[Tensor, Tensor]):
        """x (1, T, 80); x_lens (1,) int64; states (h, c) -> (out, lengths, (h, c))."""
        x = self.encoder_embed(x)
        # like icefall with is_pnnx: floor divisions in float, cast back to the lengths' dtype (a Tensor.to in
        # pnnx's graph, which the wizard rewrites for sherpa-ncnn)
        lengths = torch.floor((torch.floor((x_lens - 3) / 2) - 1) / 2).to(x_lens)
        x, new_states = self.encoder(x, states)
        return x, lengths, new_states

    def get_init_states(self, batch_size: int = 1, device: torch.device = torch.device("cpu")):
        """(h, c) zeros: (num_layers, N, d_model) and (num_layers, N, rnn_hidden_size)."""
        return (torch.zeros(self.num_encoder_layers, batch_size, self.d_model, device=device),
                torch.zeros(self.num_encoder_layers, batch_size, self.rnn_hidden_size, device=device))
