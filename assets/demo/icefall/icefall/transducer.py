"""Decoder, joiner and the transducer wrapper shared by the three demo recipes.

icefall keeps these as ``decoder.py``/``joiner.py``/``model.py`` in each recipe
(mostly symlinks); the demo keeps one copy here. Parameter names and shapes
follow icefall's, so checkpoint inspection sees what it would see in a real
checkpoint: ``decoder.embedding.weight (V, Ddec)``, ``decoder.conv.weight
(Ddec, Ddec/groups, context)``, ``joiner.{encoder,decoder}_proj`` and
``joiner.output_linear``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Decoder(nn.Module):
    """Stateless decoder: embedding of the last ``context_size`` tokens + a grouped 1-D conv + ReLU.

    ``conv_groups`` is ``decoder_dim`` in the stateless2 recipes (depthwise) and
    ``decoder_dim // 4`` in pruned_transducer_stateless7; icefall has no conv
    when ``context_size == 1``.
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int, context_size: int, conv_groups: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.blank_id = blank_id
        self.vocab_size = vocab_size
        self.context_size = context_size
        assert context_size >= 1, context_size
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size, padding=0,
                                  groups=conv_groups, bias=False)

    def forward(self, y: torch.Tensor, need_pad=True) -> torch.Tensor:
        """y: (N, context_size) int64 token ids -> (N, 1, decoder_dim) (with need_pad False, as exported)."""
        need_pad = bool(need_pad)
        embedding_out = self.embedding(y)
        if self.context_size > 1:
            embedding_out = embedding_out.permute(0, 2, 1)
            if need_pad:
                embedding_out = F.pad(embedding_out, pad=(self.context_size - 1, 0))
            else:
                assert embedding_out.size(-1) == self.context_size
            embedding_out = self.conv(embedding_out)
            embedding_out = embedding_out.permute(0, 2, 1)
        return F.relu(embedding_out)


class Joiner(nn.Module):
    """logits = output_linear(tanh(encoder_proj(enc) + decoder_proj(dec))); the export fixes project_input."""

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        """encoder_out (N, encoder_dim), decoder_out (N, decoder_dim) -> logits (N, vocab_size)."""
        logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(logit))


class Transducer(nn.Module):
    """Holds the three parts under icefall's attribute names (``encoder``, ``decoder``, ``joiner``)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, joiner: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.joiner = joiner
