"""Model flags and model construction for the demo LSTM transducer (lstm_transducer_stateless2).

icefall's lstm_transducer_stateless2 export imports these from ``train.py``:
``add_model_arguments`` (icefall's flag names, defaults and help),
``get_params`` and ``get_transducer_model(params, enable_giga=False)``. The
feed-forward, decoder and joiner dims are fixed in ``get_params`` (icefall:
2048/512/512; the demo: 64/32/32). The demo has no training code.
"""
from __future__ import annotations

import argparse
import logging

from icefall.transducer import Decoder, Joiner, Transducer
from icefall.utils import AttributeDict, get_env_info, training_bookkeeping
from lstm import RNN


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's model flags for this recipe: names, types and defaults (help texts are the demo's own)."""
    parser.add_argument("--num-encoder-layers", type=int, default=12, help="How many LSTM layers.")
    parser.add_argument("--encoder-dim", type=int, default=512, help="Width of the encoder output (LSTM projection).")
    parser.add_argument("--rnn-hidden-size", type=int, default=1024, help="Hidden width of the LSTM cells.")
    parser.add_argument("--aux-layer-period", type=int, default=0,
                        help="Training only: combine every N-th layer's output at random (0 = off).")


def get_params() -> AttributeDict:
    """Fixed settings, as in icefall's get_params (no flags for these)."""
    return AttributeDict({
        **training_bookkeeping(),
        "feature_dim": 80,
        "subsampling_factor": 4,
        # icefall: 2048, 512, 512
        "dim_feedforward": 64,
        "decoder_dim": 32,
        "joiner_dim": 32,
        "model_warm_step": 3000,
        "env_info": get_env_info(),
    })


def get_encoder_model(params: AttributeDict) -> RNN:
    return RNN(
        num_features=params.feature_dim,
        subsampling_factor=params.subsampling_factor,
        d_model=params.encoder_dim,
        rnn_hidden_size=params.rnn_hidden_size,
        dim_feedforward=params.dim_feedforward,
        num_encoder_layers=params.num_encoder_layers,
        aux_layer_period=params.aux_layer_period,
        is_pnnx=params.get("is_pnnx", False),
    )


def get_decoder_model(params: AttributeDict) -> Decoder:
    # pruned_transducer_stateless2's decoder: depthwise conv (groups = decoder_dim)
    return Decoder(vocab_size=params.vocab_size, decoder_dim=params.decoder_dim, blank_id=params.blank_id,
                   context_size=params.context_size, conv_groups=params.decoder_dim)


def get_joiner_model(params: AttributeDict) -> Joiner:
    return Joiner(encoder_dim=params.encoder_dim, decoder_dim=params.decoder_dim, joiner_dim=params.joiner_dim,
                  vocab_size=params.vocab_size)


def get_transducer_model(params: AttributeDict, enable_giga: bool = True) -> Transducer:
    if not enable_giga:
        logging.info("Disable giga")
    else:
        logging.info("The demo has no GigaSpeech heads; building the plain transducer")
    return Transducer(encoder=get_encoder_model(params), decoder=get_decoder_model(params),
                      joiner=get_joiner_model(params))
