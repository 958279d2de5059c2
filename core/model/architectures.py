"""The registry of supported architectures, and resolving a configuration's flag values against one.

Each architecture lives in its own module (core.model.zipformer, conv_emformer, lstm: an ``ArchSpec`` subclass
owning its flags, metadata, rules, I/O, states and readers; the shared types are in core.model.spec). The
export command line, the ``meta`` command, the TUI form and checkpoint detection are generated from them.

Adding an architecture: write core/model/<name>.py (subclass ArchSpec, implement its methods), add it to
``ARCHITECTURES`` below, add a preset (core/model/presets.py), a demo recipe (assets/demo) and tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from core.model.conv_emformer import CONV_EMFORMER
from core.model.lstm import LSTM
from core.model.spec import ArchSpec, Problem, Value
from core.model.zipformer import ZIPFORMER

# in the order checkpoint detection tries them
ARCHITECTURES: dict[str, ArchSpec] = {spec.name: spec for spec in (ZIPFORMER, CONV_EMFORMER, LSTM)}
BY_MODEL_TYPE: dict[int, ArchSpec] = {spec.model_type: spec for spec in ARCHITECTURES.values()}

# icefall export flags that are not model hyperparameters: accepted when pasted, ignored here.
EXPORT_ONLY_FLAGS = ("--epoch", "--iter", "--avg", "--exp-dir", "--tokens", "--bpe-model", "--lang-dir",
                     "--use-averaged-model", "--lang", "--lang-type")


def get_arch(name: str) -> ArchSpec:
    key = name.strip().lower()
    for spec in ARCHITECTURES.values():
        if key == spec.name or key in spec.aliases:
            return spec
    raise KeyError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")


@dataclass
class ResolvedValues:
    """Hyperparameters after parsing: the values, where each came from, and what is wrong."""

    arch: ArchSpec
    values: dict[str, Value]
    sources: dict[str, str]  # name -> "given" | "default" | "graph" (read from the encoder graph: core.model.graph_hparams)
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def defaulted_flags(self) -> list[str]:
        return [self.arch.param(n).flag for n, s in self.sources.items() if s == "default"]


def resolve(arch: ArchSpec, given: Mapping[str, object]) -> ResolvedValues:
    """Parse given flag values (by flag or name, as text or parsed), fill icefall's defaults, validate."""
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    problems: list[Problem] = []
    by_name = {}
    for key, raw in given.items():
        try:
            hp = arch.param(key)
        except KeyError:
            problems.append(Problem("error", (key,), f"{key} is not a {arch.title} hyperparameter"))
            continue
        by_name[hp.name] = raw
    for hp in arch.hyperparams:
        if hp.name in by_name and by_name[hp.name] is not None:
            raw = by_name[hp.name]
            try:
                if isinstance(raw, (list, tuple)):
                    values[hp.name] = hp.parse(",".join(map(str, raw)))
                else:
                    values[hp.name] = hp.parse(str(raw))
            except ValueError as exc:
                problems.append(Problem("error", (hp.flag,), str(exc)))
                continue
            if hp.kind == "int" and isinstance(values[hp.name], tuple):
                problems.append(Problem("error", (hp.flag,), f"{hp.flag} takes one whole number"))
            sources[hp.name] = "given"
        else:
            values[hp.name] = hp.parse(hp.default)
            sources[hp.name] = "default"
    if not problems:
        problems = arch.rules(values)
    return ResolvedValues(arch, values, sources, problems)
