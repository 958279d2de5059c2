"""What every architecture module provides, and the pieces they share (the base of core.model.<arch>).

An architecture is one ``ArchSpec`` subclass in its own module (core.model.zipformer, conv_emformer, lstm)
that owns everything about it: icefall's flags (``HyperParam``), the SherpaMetaData keys it writes, the
rules its values must obey, sherpa-ncnn's I/O contract and streaming geometry, the initial states, and how
its weights, traced inputs, pnnx graph and ncnn graph reveal its hyperparameters. Generic code calls these
methods and never branches on an architecture's name; core.model.architectures is the registry.

Facts and their sources: ../shared/reference/icefall-export.md (flags and defaults) and
../shared/reference/sherpa-ncnn.md (metadata keys, I/O contract).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import numpy as np

    from core.model.found import Found

Value = int | tuple[int, ...]
Values = Mapping[str, Value]

SUBSAMPLING = 4


# Upper bounds by part of the flag name (the longest matching part decides): 10-100x what published models use,
# so a typo or a hostile value is refused at once instead of sizing arrays, states or graphs by it.
MAXIMUMS = {"layers": 256, "dim": 16384, "hidden": 16384, "feedforward": 65536, "kernel": 1023, "nhead": 256,
            "chunk": 4096, "context-length": 4096, "left-chunks": 256, "downsampling": 64, "memory-size": 4096,
            "context-size": 16, "period": 256}
DEFAULT_MAXIMUM = 65536
MAX_LIST_LENGTH = 16  # encoder stacks
_INT_TEXT = re.compile(r"[+-]?[0-9]+\Z")


@dataclass(frozen=True)
class HyperParam:
    """One icefall flag. ``default`` is written the way icefall writes it."""

    flag: str
    kind: str  # "int" or "int_list"
    default: str
    help: str
    meta_key: int | None = None  # SherpaMetaData key it feeds (None: baked into the graph)
    in_weights: bool = False  # can a checkpoint's weights reveal it?
    meta_scale: int = 1  # the metadata stores value // meta_scale
    minimum: int = 1  # smallest value allowed (0 for e.g. --memory-size)
    training_only: bool = False  # has no effect on the exported graph

    @property
    def maximum(self) -> int:
        """Largest sane value: far above every published model, low enough that nothing sized by it runs away."""
        matches = [k for k in MAXIMUMS if k in self.flag]
        return MAXIMUMS[max(matches, key=len)] if matches else DEFAULT_MAXIMUM

    @property
    def name(self) -> str:
        """icefall's attribute name (``--num-encoder-layers`` -> ``num_encoder_layers``)."""
        return self.flag.lstrip("-").replace("-", "_")

    def parse(self, text: str) -> Value:
        """Parse icefall's syntax; raises ValueError with a sentence naming the flag (bounds included)."""
        cleaned = str(text).strip().strip("\"'").strip()
        shown = cleaned if len(cleaned) <= 40 else cleaned[:40] + "…"
        if self.kind == "int":
            if len(cleaned) > 12 or not _INT_TEXT.match(cleaned):
                raise ValueError(f"{self.flag}: {shown!r} is not a whole number (at most {self.maximum:,})")
            return self._bounded(int(cleaned))
        parts = [p.strip() for p in cleaned.split(",")]
        if len(parts) > MAX_LIST_LENGTH:
            raise ValueError(f"{self.flag}: {len(parts)} values; at most {MAX_LIST_LENGTH} (one per encoder stack)")
        if not all(len(p) <= 12 and _INT_TEXT.match(p) for p in parts):
            raise ValueError(f"{self.flag}: {shown!r} is not a comma-separated list of whole numbers "
                             f"(like {self.default!r})")
        return tuple(self._bounded(int(p)) for p in parts)

    def _bounded(self, value: int) -> int:
        if value > self.maximum:
            raise ValueError(f"{self.flag}: {value:,} is too large (at most {self.maximum:,}; published models use "
                             f"{self.default})")
        return value

    def format(self, value: Value) -> str:
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@dataclass(frozen=True)
class Problem:
    """A validation finding that names the flag (or flags) it is about."""

    severity: str  # "error" or "warning"
    flags: tuple[str, ...]
    message: str
    unseen: bool = False  # the encoder's graph files do not show this value and no flag gave it

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class MetaEntry:
    """One SherpaMetaData key, its integer value(s) and where the value came from."""

    key: int
    value: Value
    source: str

    @property
    def text(self) -> str:
        if isinstance(self.value, tuple):
            return f"{-23300 - self.key}={len(self.value)}," + ",".join(str(v) for v in self.value)
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class IOContract:
    """Blob names sherpa-ncnn looks up in the encoder (all must exist)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str


class ArchSpec:
    """One supported architecture. Subclasses set the class attributes and implement the methods."""

    name: str
    title: str
    model_type: int  # SherpaMetaData key 0
    recipe: str  # icefall recipe directory
    summary: str
    hyperparams: tuple[HyperParam, ...]
    aliases: tuple[str, ...] = ()
    # how an encoder graph gives the architecture away (core.model.arch_guess): layer types only it has, and
    # its state inputs per repeated unit (None: not told by the count)
    graph_layer_types: frozenset[str] = frozenset()
    states_per_unit: int | None = None
    unit_name: str = ""
    # (segment, offset) when sherpa-ncnn's runtime fixes them whatever the metadata says (None: from the metadata)
    runtime_fixed_geometry: tuple[int, int] | None = None
    # dims the recipe's get_params fixes instead of taking a flag (the export fails when the weights differ)
    recipe_fixed_dims: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<architecture {self.name}>"

    # -- the export and the metadata -------------------------------------------------------------

    def metadata(self, v: Values) -> list[MetaEntry]:
        """The SherpaMetaData entries for these hyperparameters."""
        raise NotImplementedError

    def rules(self, v: Values) -> list[Problem]:
        """What is wrong with these values (errors stop the run, warnings are shown)."""
        raise NotImplementedError

    def io_contract(self, v: Values) -> IOContract:
        """The encoder blob names sherpa-ncnn looks up."""
        raise NotImplementedError

    def segment_offset(self, v: Values) -> tuple[int, int]:
        """(frames fed per chunk, frames advanced), from the hyperparameters."""
        raise NotImplementedError

    # -- how sherpa-ncnn runs it -------------------------------------------------------------------

    def runtime_geometry(self, meta: Mapping[int, Any]) -> tuple[int, int]:
        """(segment, offset) in feature frames as sherpa-ncnn computes them from the metadata it reads."""
        raise NotImplementedError

    def initial_states(self, meta: Mapping[int, Any]) -> list[np.ndarray]:
        """The encoder's zero states in sherpa-ncnn's blob layout (no batch axis), sized from the metadata."""
        raise NotImplementedError

    def state_map(self, n_states: int) -> list[tuple[int, int]]:
        """(input index, output index) pairs sherpa-ncnn carries from one chunk to the next."""
        return [(k, k) for k in range(1, n_states + 1)]

    def check_metadata_keys(self, meta: Mapping[int, Any], error: Callable[[str], None],
                            warning: Callable[[str], None]) -> bool:
        """Report keys sherpa-ncnn would misread (doctor); False when the graph checks cannot run."""
        return True

    def torch_input_shapes(self, meta: Mapping[int, Any], lengths_dtype: str) -> list[tuple[tuple[int, ...], str]]:
        """(shape, dtype) of each traced encoder input sherpa-ncnn's metadata implies, batch axis included."""
        raise NotImplementedError

    # -- what a checkpoint's weights reveal ----------------------------------------------------------

    def owns_weights(self, state: Mapping[str, Any]) -> bool:
        """True when these state-dict keys are this architecture's."""
        raise NotImplementedError

    def values_from_weights(self, state: Mapping[str, Any]) -> dict[str, Value]:
        """The hyperparameters the weights' names and shapes state (raises CheckpointError)."""
        raise NotImplementedError

    def detection_notes(self, state: Mapping[str, Any], params: Mapping[str, Any], extras: dict) -> list[str]:
        """Warnings about a detected checkpoint (may add facts to ``extras``)."""
        return []

    # -- what a graph reveals ------------------------------------------------------------------------------

    def values_from_input_shapes(self, shapes: list[tuple[int, ...]], label: str, found: Found) -> None:
        """Hyperparameters the encoder's input shapes (traced inputs or pnnx.Input lines) show."""
        raise NotImplementedError

    def refine_from_pnnx(self, ops: list, label: str, found: Found) -> None:
        """What pnnx's own graph adds once the input shapes are read (e.g. frame rates, splits)."""

    def refine_from_traced(self, attributes: Mapping[str, Any], label: str, found: Found) -> None:
        """What the traced module's attributes add once its input shapes are read."""

    def values_from_ncnn(self, model, label: str, found: Found) -> None:
        """What the ncnn graph alone shows (layer counts, weights' shapes, constants)."""

    def derive_from_graph(self, values: dict, sources: dict, reading, graph: str) -> list[str]:
        """Fill values the graph fixes once a given flag settles a split; sentences for what contradicts it."""
        return []

    def size_defaults(self, values: dict, sources: dict) -> None:
        """Resize defaulted values to the graph's shape (e.g. one per stack)."""

    def graph_contradictions(self, values: Mapping[str, Value], reading) -> list[str]:
        """Sums and products the graph fixes without showing the parts (``reading.notes``), checked against
        ``values`` when ``reading.values`` lacks the parts."""
        return []

    # -- generic -------------------------------------------------------------------------------------------------

    @property
    def export_script(self) -> str:
        return f"{self.recipe}/export-for-ncnn.py"

    def param(self, flag_or_name: str) -> HyperParam:
        for hp in self.hyperparams:
            if flag_or_name in (hp.flag, hp.name, hp.flag.lstrip("-")):
                return hp
        raise KeyError(f"{self.name} has no hyperparameter {flag_or_name!r}")

    def defaults(self) -> dict[str, Value]:
        return {hp.name: hp.parse(hp.default) for hp in self.hyperparams}

    def values_from_metadata(self, meta: Mapping[int, object]) -> dict[str, Value]:
        """The hyperparameters a metadata dict states (the inverse of ``metadata``)."""
        out: dict[str, Value] = {}
        for hp in self.hyperparams:
            if hp.meta_key is None or hp.meta_key not in meta:
                continue
            raw = meta[hp.meta_key]
            items = raw if isinstance(raw, tuple) else (raw,)
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in items):
                continue  # a float or string value states nothing (doctor reports it as such)
            if hp.kind == "int_list":
                out[hp.name] = tuple(items)
            elif not isinstance(raw, tuple):
                out[hp.name] = raw * hp.meta_scale
        return out

    def out_of_bounds(self, values: Mapping[str, Value]) -> list[str]:
        """Values beyond a hyperparameter's sane maximum, as sentences (they would size states and graphs)."""
        problems = []
        for name, value in values.items():
            hp = self.param(name)
            items = value if isinstance(value, tuple) else (value,)
            if len(items) > MAX_LIST_LENGTH or any(v > hp.maximum for v in items):
                problems.append(f"{hp.flag} = {hp.format(value)[:40]} is beyond any real model (at most "
                                f"{hp.maximum:,}" + (f" and {MAX_LIST_LENGTH} stacks" if hp.kind == "int_list" else "")
                                + ")")
        return problems

    def flags_for(self, values: Values) -> list[str]:
        """The icefall command-line flags for these values (model flags only)."""
        out: list[str] = []
        for hp in self.hyperparams:
            if hp.name in values:
                out += [hp.flag, hp.format(values[hp.name])]
        return out


# -- shared helpers -----------------------------------------------------------


def positive_problems(spec_params: tuple[HyperParam, ...], values: Values) -> list[Problem]:
    problems = []
    for hp in spec_params:
        v = values.get(hp.name)
        if v is None:
            continue
        items = v if isinstance(v, tuple) else (v,)
        bad = [x for x in items if x < hp.minimum]
        if bad:
            what = "positive" if hp.minimum == 1 else f"at least {hp.minimum}"
            problems.append(Problem("error", (hp.flag,), f"{hp.flag} must be {what}; got {hp.format(v)}"))
    return problems


def context_size_warning(values: Values) -> list[Problem]:
    cs = values.get("context_size")
    if cs is not None and cs != 2:
        return [Problem("warning", ("--context-size",),
                        f"--context-size is {cs}, but sherpa-ncnn hard-codes a decoder context of 2 "
                        "(model.h: ContextSize() = 2); the model will not decode correctly")]
    return []


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def blob_names(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(n))


CONTEXT_SIZE = HyperParam("--context-size", "int", "2", "Decoder context size: 1 means bigram, 2 trigram. "
                           "sherpa-ncnn supports only 2.", in_weights=True)

