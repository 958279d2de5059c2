"""What a rewrite rule is and what it returns: one ``Rule`` shape and one ``RuleResult`` shape for every family.

A leaf module: the rule families (lstm, zipformer, common) build their results with it, the registry lists
their rules, and the driver runs them, so none of those import each other in a circle.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.ncnn.param import Layer, ParamFile

# the phases, in the order the driver runs them: a rule's ``kind`` says which phase it belongs to
#   layer: replaces a layer type sherpa-ncnn's runtime lacks (dispatched on the first such layer in the graph)
#   graph: a whole-graph pass on what pnnx mis-lowered (runs once, in order, after every layer rule)
#   bin:   changes the weights file (.bin), after the graph is final
KINDS = ("layer", "graph", "bin")
CHANGED, NO_MATCH, REFUSED = "changed", "no-match", "refused"


class Refuse(Exception):
    """Raised inside a rule: the pattern is not the one it recognises (the message says why)."""


@dataclass(frozen=True)
class Edit:
    """One layer a rule changed: its name and type in the graph the rule saw, and one sentence on what and why."""

    layer: str
    type: str
    what: str


@dataclass(frozen=True)
class RuleResult:
    """What one rule did. ``changed``: ``param_text`` (the whole new .param) and/or ``new_bin`` plus the edits;
    ``no-match``: nothing to do here, ``reason`` says why; ``refused``: the pattern is close but not one the rule
    can rewrite safely, ``reason`` says why, and the whole plan refuses. ``notes`` are shown in every case."""

    status: str
    reason: str = ""
    edits: tuple[Edit, ...] = ()
    param_text: str | None = None
    new_bin: bytes | None = None
    notes: tuple[str, ...] = ()

    @classmethod
    def changed(cls, edits, *, param_text: str | None = None, new_bin: bytes | None = None,
                notes=()) -> RuleResult:
        return cls(CHANGED, edits=tuple(edits), param_text=param_text, new_bin=new_bin, notes=tuple(notes))

    @classmethod
    def no_match(cls, reason: str, *, notes=()) -> RuleResult:
        return cls(NO_MATCH, reason=reason, notes=tuple(notes))

    @classmethod
    def refused(cls, reason: str, *, notes=()) -> RuleResult:
        return cls(REFUSED, reason=reason, notes=tuple(notes))


@dataclass
class RuleContext:
    """Everything a rule may read. ``model`` is the graph as the earlier rules left it."""

    model: ParamFile
    pnnx_attrs: dict = field(default_factory=dict)  # layer name -> pnnx attributes; "@ops": pnnx's op list
    arch: str | None = None  # the architecture the caller named (may be a guess; rules match the graph)
    pnnx_param: Path | None = None
    target: Layer | None = None  # layer rules: the first layer the runtime lacks
    param_bytes: bytes | None = None  # bin rules: the final .param
    bin_path: Path | None = None  # bin rules: the .bin the plan starts from
    bin_bytes: bytes | None = None  # bin rules: the .bin as an earlier bin rule left it (None: read bin_path)


@dataclass(frozen=True)
class Rule:
    """A rewrite: ``name`` (shown in plans and logs), ``kind`` (one of KINDS), ``archs`` (the architectures whose
    exports need it; empty: any; the rule itself still matches on the graph, since a caller's arch can be a
    guess), ``order`` (the default order; phases never interleave), ``apply`` (RuleContext -> RuleResult; may
    raise Refuse), ``layer_type`` (layer rules: the type they replace), ``doc`` (one line; default: the first
    line of apply's docstring)."""

    name: str
    kind: str
    archs: tuple[str, ...]
    order: int
    apply: Callable[[RuleContext], RuleResult]
    layer_type: str | None = None
    doc: str = ""

    @property
    def summary(self) -> str:
        text = self.doc or (self.apply.__doc__ or "").strip()
        return text.splitlines()[0].strip() if text else ""

    def run(self, ctx: RuleContext) -> RuleResult:
        """``apply``, with a raised Refuse turned into a refused result (the one shape the driver reads)."""
        try:
            return self.apply(ctx)
        except Refuse as exc:
            return RuleResult.refused(str(exc))
