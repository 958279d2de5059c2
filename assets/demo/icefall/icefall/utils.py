"""icefall.utils, reduced to what ``export-for-ncnn.py`` needs.

``setup_logger``, ``AttributeDict``, ``str2bool`` and ``num_tokens`` behave like
icefall's (same log format, same log-file name, same JSON dump of the params).
``SymbolTable`` replaces ``k2.SymbolTable.from_file`` for tokens.txt, so no k2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import platform
import re
from datetime import datetime

import torch

LOG_FORMAT = "%(asctime)s %(levelname)s [%(filename)s:%(lineno)d] %(message)s"


def str2bool(v):
    """argparse type for booleans: yes/true/t/y/1 and no/false/f/n/0 (icefall's spelling and error)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    elif v.lower() in ("no", "false", "f", "n", "0"):
        return False
    else:
        raise argparse.ArgumentTypeError("Boolean value expected.")


def setup_logger(log_filename, log_level: str = "info", use_console: bool = True) -> None:
    """Log to ``<log_filename>-YYYY-MM-DD-HH-MM-SS`` and to the console (stderr), like icefall."""
    date_time = datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    log_filename = f"{log_filename}-{date_time}"
    os.makedirs(os.path.dirname(log_filename), exist_ok=True)
    level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
             "critical": logging.CRITICAL}.get(log_level, logging.ERROR)
    logging.basicConfig(filename=log_filename, format=LOG_FORMAT, level=level, filemode="w", force=True)
    if use_console:
        console = logging.StreamHandler()  # stderr, as in icefall
        console.setLevel(level)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger("").addHandler(console)


class AttributeDict(dict):
    """A dict with attribute access whose str() is the sorted JSON icefall logs as "the params"."""

    def __getattr__(self, key):
        if key in self:
            return self[key]
        raise AttributeError(f"No such attribute '{key}'")

    def __setattr__(self, key, value):
        self[key] = value

    def __delattr__(self, key):
        if key in self:
            del self[key]
            return
        raise AttributeError(f"No such attribute '{key}'")

    def __str__(self, indent: int = 2):
        tmp = {}
        for k, v in self.items():
            if isinstance(v, (pathlib.Path, torch.device, torch.dtype)):
                v = str(v)
            tmp[k] = v
        return json.dumps(tmp, indent=indent, sort_keys=True)


def get_env_info() -> dict:
    """The ``env_info`` entry of the params (icefall records k2/lhotse/git details; the demo has none)."""
    return {
        "icefall-path": str(pathlib.Path(__file__).resolve().parents[1]),
        "icefall-git-branch": None,
        "icefall-git-sha1": None,
        "k2-version": "not used (sherpa-ncnn-wizard demo stand-in)",
        "python-version": platform.python_version(),
        "torch-version": str(torch.__version__),
        "torch-cuda-available": torch.cuda.is_available(),
        "hostname": platform.node(),
    }


class SymbolTable:
    """``symbol id`` pairs from tokens.txt; indexing by symbol raises KeyError like k2.SymbolTable."""

    def __init__(self, sym2id: dict[str, int]):
        self._sym2id = dict(sym2id)
        self._id2sym = {i: s for s, i in sym2id.items()}

    @classmethod
    def from_file(cls, filename) -> "SymbolTable":
        sym2id: dict[str, int] = {}
        with open(filename, encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if not fields:
                    continue
                assert len(fields) == 2, f"Expect a line with 2 fields. Given: {len(fields)}"
                sym, idx = fields[0], int(fields[1])
                assert sym not in sym2id, f"Duplicated symbol {sym}"
                assert idx not in sym2id.values(), f"Duplicated id {idx}"
                sym2id[sym] = idx
        return cls(sym2id)

    @property
    def symbols(self) -> list[str]:
        return list(self._sym2id)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self._id2sym[key]
        return self._sym2id[key]

    def __contains__(self, key) -> bool:
        return key in self._sym2id or key in self._id2sym


def num_tokens(token_table: SymbolTable, disambig_pattern=re.compile(r"^#\d+$")) -> int:
    """Number of tokens, excluding disambiguation symbols (#N) and id 0 (icefall's definition)."""
    ans = [token_table[s] for s in token_table.symbols if not disambig_pattern.match(s)]
    n = len(ans)
    if 0 in ans:
        n -= 1
    return n
