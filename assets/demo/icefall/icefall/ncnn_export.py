"""What the three demo ``export-for-ncnn.py`` scripts share: the common flags,
choosing and loading the checkpoint(s), tracing the decoder and joiner, and the
order of the log lines.

The wizard treats the demo recipes exactly like a user's icefall checkout, so
flags, defaults, log messages, error cases and output files are icefall's; the
architecture-specific part (model flags, encoder tracing) stays in each script.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import average_between, average_checkpoints, find_checkpoints, load_checkpoint
from .utils import SymbolTable, num_tokens, setup_logger, str2bool


def _info(message: str) -> None:
    """Log as if from the recipe's export-for-ncnn.py, as icefall's log lines read."""
    frame, depth = sys._getframe(1), 2
    while frame is not None and not frame.f_code.co_filename.endswith("export-for-ncnn.py"):
        frame, depth = frame.f_back, depth + 1
    logging.info(message, stacklevel=depth if frame is not None else 2)


def add_export_arguments(parser: argparse.ArgumentParser, exp_dir: str, tokens_required: bool = False) -> None:
    """The flags every icefall export-for-ncnn.py has (icefall's names and defaults)."""
    parser.add_argument("--epoch", type=int, default=28, help="Use epoch-EPOCH.pt (and the ones before it with --avg).")
    parser.add_argument("--iter", type=int, default=0, help="If > 0, use checkpoint-ITER.pt instead of --epoch.")
    parser.add_argument("--avg", type=int, default=15, help="How many checkpoints to average, ending at --epoch/--iter.")
    parser.add_argument("--exp-dir", type=str, default=exp_dir, help="Directory with the checkpoints; outputs go here.")
    if tokens_required:
        parser.add_argument("--tokens", type=str, required=True, help="Path to tokens.txt.")
    else:
        parser.add_argument("--tokens", type=str, default="data/lang_bpe_500/tokens.txt", help="Path to tokens.txt.")
    parser.add_argument("--context-size", type=int, default=2, help="Decoder context: 1 bigram, 2 trigram.")
    parser.add_argument("--use-averaged-model", type=str2bool, default=True,
                        help="Use the running-average model between epoch-AVG and EPOCH (or the iter checkpoints).")


def _selected_state(params) -> tuple[str, object]:
    """Which checkpoints the flags select: ("single", path) or ("state", state_dict)."""
    exp = params.exp_dir
    if params.iter > 0:
        wanted = params.avg + 1 if params.use_averaged_model else params.avg
        names = find_checkpoints(exp, params.iter)[:wanted]
        if not names:
            raise ValueError(f"No checkpoints found for --iter {params.iter}, --avg {params.avg}")
        if len(names) < wanted:
            raise ValueError(f"Not enough checkpoints ({len(names)}) found for --iter {params.iter}, --avg {params.avg}")
        if params.use_averaged_model:
            _info(f"Calculating the averaged model over iteration checkpoints from {names[-1]} (excluded) "
                         f"to {names[0]}")
            return "state", average_between(names[-1], names[0])
        _info(f"averaging {names}")
        return "state", average_checkpoints(names)
    if params.use_averaged_model:
        first = params.epoch - params.avg
        assert params.avg > 0 and first >= 1, (params.avg, first)
        _info(f"Calculating the averaged model over epoch range from {first} (excluded) to {params.epoch}")
        return "state", average_between(exp / f"epoch-{first}.pt", exp / f"epoch-{params.epoch}.pt")
    if params.avg == 1:
        return "single", exp / f"epoch-{params.epoch}.pt"
    names = [str(exp / f"epoch-{i}.pt") for i in range(params.epoch - params.avg + 1, params.epoch + 1) if i >= 1]
    _info(f"averaging {names}")
    return "state", average_checkpoints(names)


def load_weights(model: torch.nn.Module, params) -> None:
    kind, what = _selected_state(params)
    if kind == "single":
        load_checkpoint(what, model)  # strict=False, like icefall's --avg 1 path
    else:
        model.load_state_dict(what)


def trace_decoder(decoder: torch.nn.Module, path: Path) -> None:
    """need_pad is fixed to False; icefall traces a batch of 10 contexts."""
    ids = torch.zeros(10, decoder.context_size, dtype=torch.int64)
    torch.jit.trace(decoder, (ids, torch.tensor([False]))).save(str(path))
    _info(f"Saved to {path}")


def trace_joiner(joiner: torch.nn.Module, path: Path) -> None:
    """The exported joiner projects its inputs itself."""
    enc = torch.rand(1, joiner.encoder_proj.in_features)
    dec = torch.rand(1, joiner.decoder_proj.in_features)
    torch.jit.trace(joiner, (enc, dec)).save(str(path))
    _info(f"Saved to {path}")


def run_export(parser: argparse.ArgumentParser, get_params: Callable, build_model: Callable,
               trace_encoder: Callable[[torch.nn.Module, Path], None]) -> None:
    """Parse the flags, build and load the model, and write the three *_jit_trace-pnnx.pt files."""
    args = parser.parse_args()
    params = get_params()
    params.update(vars(args))
    params.exp_dir = Path(args.exp_dir)
    setup_logger(f"{params.exp_dir}/log-export/log-export-ncnn")
    _info("device: cpu")
    tokens = SymbolTable.from_file(params.tokens)
    params.blank_id = tokens["<blk>"]
    params.unk_id = tokens["<unk>"]
    params.vocab_size = num_tokens(tokens) + 1
    _info(params)
    _info("About to create model")
    model = build_model(params)
    with torch.no_grad():
        load_weights(model, params)
        model.eval()
        sizes = {part: sum(p.numel() for p in getattr(model, part).parameters())
                 for part in ("encoder", "decoder", "joiner")}
        for part, n in sizes.items():
            _info(f"{part} parameters: {n}")
        _info(f"total parameters: {sum(sizes.values())}")
        _info("Using torch.jit.trace()")
        _info("Exporting encoder")
        trace_encoder(model.encoder, params.exp_dir / "encoder_jit_trace-pnnx.pt")
        _info("Exporting decoder")
        trace_decoder(model.decoder, params.exp_dir / "decoder_jit_trace-pnnx.pt")
        _info("Exporting joiner")
        trace_joiner(model.joiner, params.exp_dir / "joiner_jit_trace-pnnx.pt")
