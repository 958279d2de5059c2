"""Model flags and model construction for the demo streaming Zipformer (pruned_transducer_stateless7_streaming).

Like icefall's file of the same name, this is what ``export-for-ncnn.py``
imports: ``add_model_arguments`` (icefall's flag names, defaults and help),
``get_params`` and ``get_transducer_model``. The model is the miniature in
``zipformer_for_ncnn_export_only.py`` with the shared demo decoder/joiner.
"""
from __future__ import annotations

import argparse

from icefall.transducer import Decoder, Joiner, Transducer
from icefall.utils import AttributeDict, get_env_info, training_bookkeeping
from zipformer_for_ncnn_export_only import Zipformer


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """icefall's model flags for this recipe: names, types and defaults (help texts are the demo's own)."""
    per_stack = "one value per encoder stack, comma separated"
    parser.add_argument("--num-encoder-layers", type=str, default="2,4,3,2,4", help=f"Layers per stack; {per_stack}.")
    parser.add_argument("--feedforward-dims", type=str, default="1024,1024,2048,2048,1024",
                        help=f"Feed-forward width of each stack's layers; {per_stack}.")
    parser.add_argument("--nhead", type=str, default="8,8,8,8,8", help=f"Attention heads; {per_stack}.")
    parser.add_argument("--encoder-dims", type=str, default="384,384,384,384,384",
                        help=f"Model (embedding) width of each stack; {per_stack}.")
    parser.add_argument("--attention-dims", type=str, default="192,192,192,192,192",
                        help=f"Width of the attention projections, separate from the model width; {per_stack}.")
    parser.add_argument("--encoder-unmasked-dims", type=str, default="256,256,256,256,256",
                        help=f"Training-time feature masking keeps this many dims, at most the stack's width; "
                             f"{per_stack}.")
    parser.add_argument("--zipformer-downsampling-factors", type=str, default="1,2,4,8,2",
                        help=f"Frame-rate reduction of each stack; {per_stack}.")
    parser.add_argument("--cnn-module-kernels", type=str, default="31,31,31,31,31",
                        help=f"Kernel of each stack's convolution module; {per_stack}.")
    parser.add_argument("--decoder-dim", type=int, default=512, help="Width of the decoder's embedding.")
    parser.add_argument("--joiner-dim", type=int, default=512,
                        help="Encoder and decoder outputs are projected to this width and added in the joiner.")
    parser.add_argument("--short-chunk-size", type=int, default=50,
                        help="Upper bound of the random chunk size used in dynamic-chunk training.")
    parser.add_argument("--num-left-chunks", type=int, default=4,
                        help="How many earlier chunks the attention may look at when streaming.")
    parser.add_argument("--decode-chunk-len", type=int, default=32,
                        help="Frames (before subsampling) decoded per streaming chunk.")


def get_params() -> AttributeDict:
    """Fixed settings, as in icefall's get_params (no flags for these)."""
    return AttributeDict({
        **training_bookkeeping(),
        "feature_dim": 80,
        "subsampling_factor": 4,
        "warm_step": 2000,
        "env_info": get_env_info(),
    })


def to_int_tuple(s: str):
    return tuple(map(int, s.split(",")))


def get_encoder_model(params: AttributeDict) -> Zipformer:
    # TODO: We can add an option to switch between Zipformer and Transformer
    assert params.decode_chunk_len % 2 == 0, params.decode_chunk_len
    return Zipformer(
        num_features=params.feature_dim,
        output_downsampling_factor=2,
        zipformer_downsampling_factors=to_int_tuple(params.zipformer_downsampling_factors),
        encoder_dims=to_int_tuple(params.encoder_dims),
        attention_dims=to_int_tuple(params.attention_dims),
        encoder_unmasked_dims=to_int_tuple(params.encoder_unmasked_dims),
        nhead=to_int_tuple(params.nhead),
        feedforward_dim=to_int_tuple(params.feedforward_dims),
        cnn_module_kernels=to_int_tuple(params.cnn_module_kernels),
        num_encoder_layers=to_int_tuple(params.num_encoder_layers),
        num_left_chunks=params.num_left_chunks,
        decode_chunk_size=params.decode_chunk_len // 2,
        is_pnnx=True,
    )


def get_decoder_model(params: AttributeDict) -> Decoder:
    # pruned_transducer_stateless7's decoder: grouped conv with decoder_dim // 4 groups
    return Decoder(vocab_size=params.vocab_size, decoder_dim=params.decoder_dim, blank_id=params.blank_id,
                   context_size=params.context_size, conv_groups=params.decoder_dim // 4)


def get_joiner_model(params: AttributeDict) -> Joiner:
    return Joiner(encoder_dim=int(params.encoder_dims.split(",")[-1]), decoder_dim=params.decoder_dim,
                  joiner_dim=params.joiner_dim, vocab_size=params.vocab_size)


def get_transducer_model(params: AttributeDict) -> Transducer:
    return Transducer(encoder=get_encoder_model(params), decoder=get_decoder_model(params),
                      joiner=get_joiner_model(params))
