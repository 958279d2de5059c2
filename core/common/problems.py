"""What kind of problem a sentence for the user is, so other modules branch on the kind, never on the words.

A :class:`Problem` is a ``str`` (the sentence the CLI prints, as before) that also carries its ``kind``, the config
key or flag it is about and its parts: consumers that print or join problems keep working unchanged, while the ones
that decide something (an exit code, the wizard's "Run anyway" button, resampling) read ``kind``. A front-end that
words the way out differently (the wizard has buttons, not flags) builds its sentence from ``key``, ``fact`` and the
kind instead of rewriting the CLI's. Exceptions that are told apart carry a kind too (:class:`ProblemError`).
"""
from __future__ import annotations

from enum import Enum


class ProblemKind(Enum):
    BAD_INPUT = "bad_input"  # a file or value the user gave cannot be used; they fix it
    FAILED = "failed"  # the tool could not do it although the input looked right
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # the config contradicts the checkpoint; the user may run anyway
    HYPERPARAMETERS = "hyperparameters"  # the hyperparameters do not describe the model (graph, export); fix them
    SAMPLE_RATE = "sample_rate"  # audio is not 16 kHz; resampling fixes it
    NEEDS_TRACED = "needs_traced"  # pnnx mis-converted the encoder; the traced encoder lets it be converted again
    PYTHON_ENV = "python_env"  # the export's Python lacks icefall's modules; files.python (--python) fixes it


class Problem(str):
    """One sentence ``"{key}: {fact}{how}"`` with its kind.

    ``key``: the config key or flag it is about ("files.checkpoint", "--from-ncnn"; "" for none); ``fact``: what is
    wrong; ``how``: the CLI/TOML way out appended to it ("" when the fact says it all).
    """

    kind: ProblemKind
    key: str
    fact: str
    how: str

    def __new__(cls, kind: ProblemKind, fact: str, *, key: str = "", how: str = "") -> "Problem":
        self = super().__new__(cls, (f"{key}: " if key else "") + fact + how)
        self.kind, self.key, self.fact, self.how = kind, key, fact, how
        return self

    @property
    def detail(self) -> str:
        """The sentence without its key (the fact and the way out)."""
        return self.fact + self.how

    def with_key(self, key: str) -> "Problem":
        """The same problem said about another key (a flag instead of a config key)."""
        return Problem(self.kind, self.fact, key=key, how=self.how)

    def with_how(self, how: str) -> "Problem":
        """The same problem with another way out appended."""
        return Problem(self.kind, self.fact, key=self.key, how=how)

    def __reduce__(self):
        return (_rebuild, (self.kind.value, self.fact, self.key, self.how))


def _rebuild(kind: str, fact: str, key: str, how: str) -> Problem:
    return Problem(ProblemKind(kind), fact, key=key, how=how)


def kind_of(problem: object, default: ProblemKind | None = None) -> ProblemKind | None:
    """The kind of a Problem or ProblemError; ``default`` for plain text (a sentence whose kind nobody set)."""
    return getattr(problem, "kind", default) if isinstance(getattr(problem, "kind", None), ProblemKind) else default


class ProblemError(Exception):
    """An exception whose kind decides what happens next (the message is for the user, the kind for the code)."""

    kind: ProblemKind = ProblemKind.FAILED

    def __init__(self, message: str = "", kind: ProblemKind | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
