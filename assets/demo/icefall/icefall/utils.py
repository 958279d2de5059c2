"""The few helpers of icefall's ``icefall.utils`` that the demo export scripts use.

Written for the demo: the behaviour users see is icefall's (the log format
and log-file name, booleans spelled yes/no/true/false/1/0, the params logged
as sorted JSON, tokens.txt read as ``symbol id`` pairs, vocab size counted
without ``#N`` disambiguation symbols), the code is not.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import re
from datetime import datetime
from pathlib import Path

import torch

LOG_FORMAT = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"
_TRUE = {"yes", "true", "t", "y", "1"}
_FALSE = {"no", "false", "f", "n", "0"}
_DISAMBIG = re.compile(r"^#\d+$")


def str2bool(value) -> bool:
    """argparse type for icefall's boolean flags."""
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise argparse.ArgumentTypeError("Boolean value expected.")


def setup_logger(prefix: str) -> None:
    """Log INFO and up to stderr and to ``<prefix>-YYYY-MM-DD-HH-MM-SS``."""
    path = Path(f"{prefix}-{datetime.now():%Y-%m-%d-%H-%M-%S}")
    path.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers = [logging.FileHandler(path, mode="w"), logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


class AttributeDict(dict):
    """A dict whose keys are also attributes; printed as sorted JSON, as icefall logs its params."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    __setattr__ = dict.__setitem__

    def __str__(self) -> str:
        plain = {k: str(v) if isinstance(v, (Path, torch.device, torch.dtype)) else v for k, v in self.items()}
        return json.dumps(plain, indent=2, sort_keys=True)


def training_bookkeeping() -> dict:
    """The training-loop entries every recipe's params carry (logged with the params, unused by the export)."""
    return {"best_train_loss": float("inf"), "best_valid_loss": float("inf"), "best_train_epoch": -1,
            "best_valid_epoch": -1, "batch_idx_train": 0, "log_interval": 50, "reset_interval": 200,
            "valid_interval": 3000}


def get_env_info() -> dict:
    """What the demo can say about its environment (real icefall adds k2/lhotse/git details)."""
    return {"icefall-path": str(Path(__file__).resolve().parents[1]), "k2-version": None,
            "python-version": platform.python_version(), "torch-version": str(torch.__version__),
            "hostname": platform.node()}


class SymbolTable(dict):
    """tokens.txt as a symbol -> id mapping (k2.SymbolTable's role here; a missing symbol is a KeyError)."""

    @classmethod
    def from_file(cls, filename) -> "SymbolTable":
        table = cls()
        for number, line in enumerate(Path(filename).read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[0] in table:
                raise ValueError(f"{filename}:{number}: expected a new 'symbol id' pair, got {line!r}")
            table[fields[0]] = int(fields[1])
        return table


def num_tokens(table: SymbolTable) -> int:
    """Tokens other than blank (id 0) and the #N disambiguation symbols."""
    return sum(1 for sym, i in table.items() if i != 0 and not _DISAMBIG.match(sym))
