#!/usr/bin/env python3
"""Export the demo ConvEmformer to the three TorchScript files pnnx converts.

Stand-in for icefall's conv_emformer_transducer_stateless2/export-for-ncnn.py:
the same flags and defaults (--tokens is required there too, and --exp-dir's
default names another recipe, as in icefall), checkpoint selection, log lines
and outputs. The model is a miniature with random weights (emformer2.py).

    ./conv_emformer_transducer_stateless2/export-for-ncnn.py --tokens data/lang_bpe_500/tokens.txt \\
        --exp-dir exp --epoch 99 --avg 1 --use-averaged-model 0 --num-encoder-layers 2 --encoder-dim 32 \\
        --nhead 2 --dim-feedforward 64 --cnn-module-kernel 7 --left-context-length 32 --chunk-length 32 \\
        --right-context-length 8 --memory-size 4

The encoder is traced as icefall traces it: the Emformer itself (its forward is
the streaming step), called as encoder(x, states) with states the list of
4 x num_layers tensors from init_states(); it returns (encoder_out, new_states).
pnnx numbers the blobs in0 (features), then per layer memory, left key, left
value, conv cache, and the outputs out0..out{4L} in the same order.
"""
import argparse
import logging
from pathlib import Path

import torch
from do_not_use_it_directly import add_model_arguments, get_params, get_transducer_model

from icefall.ncnn_export import add_export_arguments, run_export


def trace_encoder(encoder: torch.nn.Module, path: Path) -> None:
    chunk, right = encoder.chunk_length, encoder.right_context_length  # frames before subsampling
    logging.info(f"chunk_length: {chunk}, right_context_length: {right}\n")
    frames = chunk + right + 2 * 4 + 3  # what sherpa-ncnn feeds per chunk
    x = torch.zeros(1, frames, 80)
    states = encoder.init_states()
    torch.jit.trace(encoder, (x, states)).save(str(path))
    logging.info(f"Saved to {path}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_export_arguments(parser, exp_dir="pruned_transducer_stateless2/exp", tokens_required=True)
    add_model_arguments(parser)
    return parser


if __name__ == "__main__":
    run_export(get_parser(), get_params, get_transducer_model, trace_encoder)
