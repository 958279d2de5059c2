#!/usr/bin/env python3
"""Export the demo LSTM transducer to the three TorchScript files pnnx converts.

Stand-in for icefall's lstm_transducer_stateless2/export-for-ncnn.py (which
lstm_transducer_stateless3 links to): the same flags and defaults, checkpoint
selection, log lines and outputs. The model is a miniature with random weights
(lstm.py).

    ./lstm_transducer_stateless2/export-for-ncnn.py --tokens data/lang_bpe_500/tokens.txt --exp-dir exp \\
        --epoch 99 --avg 1 --use-averaged-model 0 --num-encoder-layers 2 --encoder-dim 32 --rnn-hidden-size 48

The encoder is traced as icefall traces it: the RNN itself, forward(x, x_lens,
states) on 100 frames with int64 lengths and states the (h, c) tuple
get_init_states() returns. pnnx numbers the ncnn blobs in0 features, in1
lengths, in2 h, in3 c (out0..out3 likewise); the 100 frames end up in a Reshape
that the wizard's rewrite turns into the 9 frames sherpa-ncnn feeds. Like icefall's, it sets params.is_pnnx, so
the front end's reshape has the batch of one baked in: the traced encoder runs one stream per call.
"""
import argparse
import logging
from pathlib import Path

import torch
from train import add_model_arguments, get_params, get_transducer_model

from icefall.ncnn_export import add_export_arguments, run_export

TRACE_FRAMES = 100  # icefall traces the LSTM encoder on 100 feature frames


def trace_encoder(encoder: torch.nn.Module, path: Path) -> None:
    features = torch.zeros(1, TRACE_FRAMES, 80, dtype=torch.float32)
    feature_lens = torch.tensor([TRACE_FRAMES], dtype=torch.int64)
    init_states = encoder.get_init_states()  # (h, c), traced as Tuple[Tensor, Tensor]
    torch.jit.trace(encoder, (features, feature_lens, init_states)).save(str(path))
    logging.info(f"Saved to {path}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_export_arguments(parser, exp_dir="lstm_transducer_stateless2/exp")
    add_model_arguments(parser)
    return parser


def get_export_params():
    params = get_params()
    params.is_pnnx = True  # as icefall's export-for-ncnn.py sets it before building the model
    return params


if __name__ == "__main__":
    run_export(get_parser(), get_export_params, lambda params: get_transducer_model(params, enable_giga=False),
               trace_encoder)
