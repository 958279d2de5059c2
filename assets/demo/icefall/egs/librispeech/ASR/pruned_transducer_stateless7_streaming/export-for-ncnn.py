#!/usr/bin/env python3
"""Export the demo streaming Zipformer (v1) to the three TorchScript files pnnx converts.

Stand-in for icefall's pruned_transducer_stateless7_streaming/export-for-ncnn.py:
the same flags and defaults, checkpoint selection, log lines and outputs
(encoder/decoder/joiner_jit_trace-pnnx.pt in --exp-dir). The model is a
miniature with random weights (zipformer_for_ncnn_export_only.py).

    ./pruned_transducer_stateless7_streaming/export-for-ncnn.py --tokens data/lang_bpe_500/tokens.txt \\
        --exp-dir exp --use-averaged-model 0 --epoch 99 --avg 1 --decode-chunk-len 32 \\
        --num-encoder-layers 2,2,2 --feedforward-dims 64,64,64 --nhead 2,2,2 --encoder-dims 32,32,32 \\
        --attention-dims 16,16,16 --encoder-unmasked-dims 16,16,16 --zipformer-downsampling-factors 1,2,4 \\
        --cnn-module-kernels 7,7,7 --decoder-dim 32 --joiner-dim 32

The encoder is traced as icefall traces it: the Zipformer itself, its forward
being streaming_forward, called as encoder(x, states) with states the list of
7 x num_stacks tensors from get_init_state(); it returns (encoder_out, new_states).
pnnx numbers the blobs in0 (features), in1..in{7N} (states), out0..out{7N}.
"""
import argparse
import logging
from pathlib import Path

import torch
from do_not_use_it_directly import add_model_arguments, get_params, get_transducer_model

from icefall.ncnn_export import add_export_arguments, run_export

PAD_LENGTH = 7  # extra frames the subsampling eats: sherpa-ncnn's key 3


def trace_encoder(encoder: torch.nn.Module, path: Path) -> None:
    chunk = encoder.decode_chunk_size * 2
    frames = chunk + PAD_LENGTH
    logging.info(f"decode_chunk_len: {chunk}")
    logging.info(f"T: {frames}")
    x = torch.zeros(1, frames, 80)
    # icefall points the class's forward at streaming_forward and traces the encoder itself
    type(encoder).forward = type(encoder).streaming_forward
    states = encoder.get_init_state()
    torch.jit.trace(encoder, (x, states)).save(str(path))
    logging.info(f"Saved to {path}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_export_arguments(parser, exp_dir="pruned_transducer_stateless7_streaming/exp")
    add_model_arguments(parser)
    return parser


if __name__ == "__main__":
    run_export(get_parser(), get_params, get_transducer_model, trace_encoder)
