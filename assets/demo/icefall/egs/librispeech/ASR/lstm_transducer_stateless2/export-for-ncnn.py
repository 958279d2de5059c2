#!/usr/bin/env python3
"""Export the demo LSTM transducer to the three TorchScript files pnnx converts.

Stand-in for icefall's lstm_transducer_stateless2/export-for-ncnn.py (which
lstm_transducer_stateless3 links to): the same flags and defaults, checkpoint
selection, log lines and outputs. The model is a miniature with random weights
(lstm.py).

    ./lstm_transducer_stateless2/export-for-ncnn.py --tokens data/lang_bpe_500/tokens.txt --exp-dir exp \\
        --epoch 99 --avg 1 --use-averaged-model 0 --num-encoder-layers 2 --encoder-dim 32 --rnn-hidden-size 48

Two differences: the encoder is traced on the 9 frames sherpa-ncnn feeds (icefall
traces 100, which pnnx then bakes into a Reshape), with float lengths, and its
states are separate tensors: forward(x, x_lens, h, c) -> (encoder_out, lengths, h, c)
= ncnn in0..in3 / out0..out3.
"""
import argparse
import logging
from pathlib import Path

import torch
from train import add_model_arguments, get_params, get_transducer_model

from icefall.ncnn_export import add_export_arguments, run_export

SEGMENT = 9  # frames sherpa-ncnn feeds an LSTM encoder per chunk


class StreamingEncoder(torch.nn.Module):
    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x, x_lens, h, c):
        out, lengths, (h, c) = self.encoder(x, x_lens, (h, c))
        return out, lengths, h, c


def trace_encoder(encoder: torch.nn.Module, path: Path) -> None:
    x = torch.zeros(1, SEGMENT, 80)
    x_lens = torch.tensor([float(SEGMENT)])
    torch.jit.trace(StreamingEncoder(encoder).eval(), (x, x_lens, *encoder.get_init_states())).save(str(path))
    logging.info(f"Saved to {path}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_export_arguments(parser, exp_dir="lstm_transducer_stateless2/exp")
    add_model_arguments(parser)
    return parser


if __name__ == "__main__":
    run_export(get_parser(), get_params, lambda params: get_transducer_model(params, enable_giga=False), trace_encoder)
