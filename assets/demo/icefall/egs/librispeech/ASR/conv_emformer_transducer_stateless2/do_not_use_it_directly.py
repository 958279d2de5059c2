"""Model flags and model construction for the demo ConvEmformer (conv_emformer_transducer_stateless2).

Like icefall's file of the same name, this is what ``export-for-ncnn.py``
imports: ``add_model_arguments`` (icefall's flag names, defaults and help),
``get_params`` and ``get_transducer_model``. As in icefall, the decoder and
joiner dims are fixed in ``get_params`` (icefall: 512/512; the demo: 32/32).
"""
from __future__ import annotations

import argparse

from emformer2 import Emformer
from icefall.transducer import Decoder, Joiner, Transducer
from icefall.utils import AttributeDict, get_env_info, training_bookkeeping


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's model flags for this recipe: names, types and defaults (help texts are the demo's own)."""
    parser.add_argument("--encoder-dim", type=int, default=512, help="Model width (d_model) of the Emformer.")
    parser.add_argument("--nhead", type=int, default=8, help="Attention heads of the Emformer layers.")
    parser.add_argument("--dim-feedforward", type=int, default=2048, help="Feed-forward width of the Emformer layers.")
    parser.add_argument("--num-encoder-layers", type=int, default=12, help="How many Emformer layers.")
    parser.add_argument("--cnn-module-kernel", type=int, default=31, help="Kernel of the convolution modules.")
    parser.add_argument("--left-context-length", type=int, default=32,
                        help="Left context in frames before subsampling (cached keys and values).")
    parser.add_argument("--chunk-length", type=int, default=32, help="Chunk length in frames before subsampling.")
    parser.add_argument("--right-context-length", type=int, default=8,
                        help="Look-ahead in frames before subsampling.")
    parser.add_argument("--memory-size", type=int, default=0, help="Entries in the Emformer's memory bank.")


def get_params() -> AttributeDict:
    """Fixed settings, as in icefall's get_params (no flags for these)."""
    return AttributeDict({
        **training_bookkeeping(),
        # parameters for conformer
        "feature_dim": 80,
        "subsampling_factor": 4,
        # parameters for decoder and joiner (icefall: 512 and 512)
        "decoder_dim": 32,
        "joiner_dim": 32,
        # parameters for Noam
        "model_warm_step": 3000,
        "env_info": get_env_info(),
        # parameters for ncnn
        "is_pnnx": True,
    })


def get_encoder_model(params: AttributeDict) -> Emformer:
    return Emformer(
        num_features=params.feature_dim,
        chunk_length=params.chunk_length,
        subsampling_factor=params.subsampling_factor,
        d_model=params.encoder_dim,
        nhead=params.nhead,
        dim_feedforward=params.dim_feedforward,
        num_encoder_layers=params.num_encoder_layers,
        cnn_module_kernel=params.cnn_module_kernel,
        left_context_length=params.left_context_length,
        right_context_length=params.right_context_length,
        memory_size=params.memory_size,
        is_pnnx=params.is_pnnx,
    )


def get_decoder_model(params: AttributeDict) -> Decoder:
    # pruned_transducer_stateless2's decoder: depthwise conv (groups = decoder_dim)
    return Decoder(vocab_size=params.vocab_size, decoder_dim=params.decoder_dim, blank_id=params.blank_id,
                   context_size=params.context_size, conv_groups=params.decoder_dim)


def get_joiner_model(params: AttributeDict) -> Joiner:
    return Joiner(encoder_dim=params.encoder_dim, decoder_dim=params.decoder_dim, joiner_dim=params.joiner_dim,
                  vocab_size=params.vocab_size)


def get_transducer_model(params: AttributeDict) -> Transducer:
    return Transducer(encoder=get_encoder_model(params), decoder=get_decoder_model(params),
                      joiner=get_joiner_model(params))
