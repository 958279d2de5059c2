"""Graph rewrites: replace layers sherpa-ncnn's runtime lacks with layers it has, same numbers.

The pnnx wheel leaves a few operators in icefall's encoders that the icefall pnnx fork used to turn into
sherpa-ncnn's own layers (or that it lowers to layer types sherpa-ncnn compiles out). Each rewrite matches
one pattern *precisely*; a layer the runtime lacks that no rewrite recognises makes the whole plan refuse,
naming the layer and its type, and nothing is written.

Like the metadata edit it is plan first, write later: :func:`plan_rewrites` computes the new file (a diff,
layer and blob counts before and after) without touching anything; :func:`apply_rewrites` writes exactly
that plan atomically (in place with a one-time ``.orig`` backup, or to a new path). Running the plan again on
its own output finds nothing to do.

This module only walks the rules; what they are and their order is core/rewrite/registry.py (the rules
themselves are in lstm.py, zipformer.py and common.py). Every rule returns one RuleResult: the driver
checks the new file parses, records the changes against the original line numbers, and stops the plan at
the first refusal with the rule's reason.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from core.common.atomic import WriteError, atomic_write_bytes, backup_once, read_if_unchanged
from core.ncnn.param import ParamFile, load_param, parse_param
from core.ncnn.requirements import check_layers
from core.ncnn.requirements import describe as describe_layer_problems
from core.ncnn.runtime_layers import runtime_problem
from core.pnnx.graph import attributes_by_name, read_pnnx_ops
from core.rewrite import registry
from core.rewrite.graph import mislowered_unbinds, where
from core.rewrite.rule import CHANGED, REFUSED, Rule, RuleContext, RuleResult

__all__ = ["Change", "RewriteError", "RewritePlan", "RewriteResult", "apply_rewrites", "plan_file",
           "plan_rewrites"]


class RewriteError(Exception):
    """Applying a plan failed or was not possible; the files are untouched. The message says what to do."""


@dataclass
class Change:
    rule: str
    layer: str  # the layer's name in the original file
    type: str
    line: int  # 1-based line in the original file
    what: str  # one sentence: what was done and why it keeps the numbers

    def as_dict(self) -> dict:
        return {"rule": self.rule, "layer": self.layer, "type": self.type, "line": self.line, "what": self.what}


@dataclass
class RewritePlan:
    """Everything a preview shows; ``new_param``/``new_bin`` are what apply writes (None: unchanged)."""

    source: str
    action: str  # "rewrite", "unchanged" or "refused"
    changes: list[Change] = field(default_factory=list)
    layers_before: int = 0
    layers_after: int = 0
    blobs_before: int = 0
    blobs_after: int = 0
    header_before: str = ""
    header_after: str = ""
    diff: str = ""
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    new_param: bytes | None = None
    new_bin: bytes | None = None
    original_sha256: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rule, why it did not match); not in as_dict

    @property
    def can_apply(self) -> bool:
        return self.action == "rewrite" and not self.errors and self.new_param is not None

    def summary(self) -> str:
        if self.action == "refused":
            return "refused: " + "; ".join(self.errors)
        if self.action == "unchanged":
            return "nothing to rewrite: every layer type is one sherpa-ncnn's runtime has"
        rules: dict[str, int] = {}
        for c in self.changes:
            rules[c.rule] = rules.get(c.rule, 0) + 1
        listed = ", ".join(f"{r} x{n}" for r, n in rules.items())
        return (f"{len(self.changes)} rewrite(s) ({listed}); layers {self.layers_before} -> {self.layers_after}, "
                f"blobs {self.blobs_before} -> {self.blobs_after}")

    def as_dict(self) -> dict:
        return {"source": self.source, "action": self.action, "summary": self.summary(),
                "changes": [c.as_dict() for c in self.changes],
                "layers_before": self.layers_before, "layers_after": self.layers_after,
                "blobs_before": self.blobs_before, "blobs_after": self.blobs_after,
                "header_before": self.header_before, "header_after": self.header_after,
                "diff": self.diff, "errors": list(self.errors), "notes": list(self.notes),
                "bin_changed": self.new_bin is not None}


# -- planning and applying ----------------------------------------------------------

def plan_rewrites(model: ParamFile, *, pnnx_param: str | Path | None = None, encoder: bool = True,
                  arch: str | None = None, rules: tuple[Rule, ...] = registry.RULES) -> RewritePlan:
    """Work out every rewrite ``model`` needs, without writing anything (``rules``: the registry's by default).

    The rules match patterns of well-formed layers; a layer whose line lacks the inputs or outputs its type has
    (a Reshape without an input, say) is refused by name instead of tripping a rule up."""
    rules = registry.ordered(rules)  # a broken rule set is a programming error: raised, not read as a bad graph
    try:
        return _plan_rewrites(model, pnnx_param=pnnx_param, encoder=encoder, arch=arch, rules=rules)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        plan = _empty_plan(model)
        broken = [f"{p.name} ({p.type}) at line {p.line}: {p.message}" for p in check_layers(model)][:3]
        plan.errors.append("the graph has layers whose lines do not fit their type" +
                           (": " + "; ".join(broken) if broken else f" ({type(exc).__name__})") +
                           "; nothing was changed — convert the model with pnnx again")
        return plan


def _empty_plan(model: ParamFile) -> RewritePlan:
    header = model.header_text()
    return RewritePlan(model.source, "refused", layers_before=model.layer_count, layers_after=model.layer_count,
                       blobs_before=model.blob_count, blobs_after=model.blob_count, header_before=header,
                       header_after=header, original_sha256=hashlib.sha256(model.to_bytes()).hexdigest())


class _Stop(Exception):
    """A rule refused or produced an unreadable file: the plan has its error and stops."""


def _take(plan: RewritePlan, original: ParamFile, rule: Rule, result: RuleResult, where_: str,
          current: ParamFile) -> ParamFile:
    """Record one rule's result in the plan; returns the graph the next rule sees."""
    plan.notes += result.notes
    plan.skipped += [(rule.name, result.reason)] if result.status not in (CHANGED, REFUSED) else []
    if result.status == REFUSED:
        plan.errors.append(f"{where_}: not a pattern any rewrite recognises: {result.reason}; nothing was changed")
        raise _Stop
    if result.status != CHANGED:
        return current
    if result.param_text is not None:
        parsed = parse_param(result.param_text, original.source)
        if parsed.model is None or parsed.model.errors:
            plan.errors.append(f"{where_}: the rewrite produced an invalid file ({parsed.describe()}); "
                               "nothing was changed")
            raise _Stop
        current = parsed.model
    # the original line numbers are reported, not the shifting ones of the intermediate files
    plan.changes += [Change(rule.name, e.layer, e.type, _original_line(original, e.layer), e.what)
                     for e in result.edits]
    return current


def _plan_rewrites(model: ParamFile, *, pnnx_param: str | Path | None, encoder: bool, arch: str | None,
                   rules: tuple[Rule, ...]) -> RewritePlan:
    plan = _empty_plan(model)
    if model.errors:
        plan.errors = [str(i) for i in model.errors] + ["refusing to rewrite a file that ncnn would not load as it is"]
        return plan
    ops = read_pnnx_ops(pnnx_param)
    pnnx_attrs: dict = attributes_by_name(ops)
    if pnnx_param is None or not pnnx_attrs:
        plan.notes.append("pnnx's own graph (*.pnnx.param) was not available; operator attributes were not checked")
    pnnx_attrs["@ops"] = ops
    pnnx_path = Path(pnnx_param) if pnnx_param is not None else None
    current = model
    try:
        # layer phase: the first layer the runtime lacks, to the first rule registered for its type, until none
        for _ in range(len(model.layers) + 1):
            target = next((layer for layer in current.layers if runtime_problem(layer.type, encoder=encoder)), None)
            if target is None:
                break
            rule = registry.for_layer_type(target.type, rules)
            if rule is None:
                plan.errors.append(_unknown(current, encoder))
                return plan
            ctx = RuleContext(current, pnnx_attrs, arch=arch, pnnx_param=pnnx_path, target=target)
            result = rule.run(ctx)
            if result.status not in (CHANGED, REFUSED):  # the layer stays, so the runtime could not load it
                result = RuleResult.refused(result.reason)
            current = _take(plan, model, rule, result, where(target), current)
        # graph phase: each whole-graph rule once, in the registry's order
        for rule in registry.of_kind("graph", rules):
            ctx = RuleContext(current, pnnx_attrs, arch=arch, pnnx_param=pnnx_path)
            current = _take(plan, model, rule, rule.run(ctx), rule.name, current)
    except _Stop:
        return plan
    bad = mislowered_unbinds(current)
    if bad:
        plan.errors.append(f"{where(bad[0])}: a Slice without parameters ({len(bad)} in the graph; pnnx could not "
                           "lower an unbind along the first axis and dropped its axis), so ncnn splits it wrongly; no "
                           "rewrite recognises this pattern; nothing was changed")
        return plan
    problems = check_layers(current)
    if problems:
        where_ = "the rewritten graph" if plan.changes else Path(model.source).name
        plan.errors.append(describe_layer_problems(problems, where_) + "; nothing was changed")
        return plan
    if current.counted_blobs() != current.blob_count:
        plan.errors.append(f"the rewritten graph has {current.counted_blobs()} blobs but its header says "
                           f"{current.blob_count}; nothing was changed")
        return plan
    if not plan.changes:
        plan.action = "unchanged"
        return plan
    plan.action = "rewrite"
    plan.layers_after, plan.blobs_after = current.layer_count, current.blob_count
    plan.header_after = current.header_text()
    plan.new_param = current.to_bytes()
    plan.diff = "\n".join(difflib.unified_diff([x.rstrip("\r\n") for x in model.lines],
                                               [x.rstrip("\r\n") for x in current.lines],
                                               f"a/{Path(model.source).name}", f"b/{Path(model.source).name}",
                                               n=1, lineterm=""))
    return plan


def _original_line(model: ParamFile, name: str) -> int:
    layer = model.layer_named(name)
    return layer.line if layer is not None else 0


def _unknown(model: ParamFile, encoder: bool) -> str:
    bad = [layer for layer in model.layers if runtime_problem(layer.type, encoder=encoder)]
    first = bad[0]
    counts: dict[str, int] = {}
    for layer in bad:
        counts[layer.type] = counts.get(layer.type, 0) + 1
    others = ", ".join(f"{t} x{n}" for t, n in counts.items())
    mislowered = mislowered_unbinds(model)
    extra = (f"; pnnx also left {len(mislowered)} Slice layer(s) without parameters ({mislowered[0].name}, ...): an "
             "unbind of the state inputs along the layer axis that it could not lower") if mislowered else ""
    return (f"{where(first)}: no rewrite recognises this layer type ({runtime_problem(first.type, encoder=encoder)}); "
            f"layers sherpa-ncnn's runtime lacks: {others}{extra}; nothing was changed")


def plan_file(param: str | Path, *, pnnx_param: str | Path | None = None, encoder: bool = True,
              arch: str | None = None, rules: tuple[Rule, ...] = registry.RULES) -> RewritePlan:
    """Load ``param`` and plan; a missing ``pnnx_param`` next to it is looked up as ``encoder.pnnx.param``.
    The bin rules run here, on the final graph and the ``.bin`` beside ``param``."""
    parsed = load_param(param)
    if parsed.model is None:
        return RewritePlan(str(param), "refused", errors=[parsed.describe()])
    if pnnx_param is None:
        guess = Path(param).with_name(Path(param).name.split("_jit_trace")[0].split(".")[0] + ".pnnx.param")
        pnnx_param = guess if guess.is_file() else None
    plan = plan_rewrites(parsed.model, pnnx_param=pnnx_param, encoder=encoder, arch=arch, rules=rules)
    binary = Path(param).with_suffix(".bin")
    if plan.action in ("rewrite", "unchanged") and binary.is_file():
        _plan_bin(plan, parsed.model, binary, Path(pnnx_param) if pnnx_param is not None else None, arch, rules)
    return plan


def _plan_bin(plan: RewritePlan, model: ParamFile, binary: Path, pnnx_param: Path | None, arch: str | None,
              rules: tuple[Rule, ...]) -> None:
    """The bin phase: each bin rule once, in order, on the final graph; a change makes the plan a rewrite."""
    for rule in registry.of_kind("bin", rules):
        ctx = RuleContext(model, arch=arch, pnnx_param=pnnx_param, param_bytes=plan.new_param or model.to_bytes(),
                          bin_path=binary, bin_bytes=plan.new_bin)
        result = rule.run(ctx)
        plan.notes += result.notes
        if result.status == REFUSED:
            plan.errors.append(f"{rule.name}: not a pattern any rewrite recognises: {result.reason}; "
                               "nothing was changed")
            plan.action, plan.new_param, plan.new_bin = "refused", None, None
            return
        if result.status != CHANGED or result.new_bin is None:
            plan.skipped.append((rule.name, result.reason))
            continue
        plan.changes += [Change(rule.name, e.layer, e.type, _original_line(model, e.layer), e.what)
                         for e in result.edits]
        plan.new_bin = result.new_bin
        if plan.action == "unchanged":
            plan.action, plan.new_param = "rewrite", model.to_bytes()


@dataclass
class RewriteResult:
    applied: bool
    param: str
    bin: str | None
    backup: str | None
    message: str


def apply_rewrites(plan: RewritePlan, param: str | Path, bin_path: str | Path | None = None, *,
                   out_param: str | Path | None = None, out_bin: str | Path | None = None,
                   force: bool = False) -> RewriteResult:
    """Write the plan: in place (with ``.orig`` backups) or to ``out_param``/``out_bin`` (originals untouched)."""
    param = Path(param)
    if plan.action == "unchanged":
        return RewriteResult(False, str(param), str(bin_path) if bin_path else None, None, plan.summary())
    if not plan.can_apply:
        raise RewriteError(f"{param}: the plan cannot be applied: " + "; ".join(plan.errors or ["nothing to apply"]))
    try:
        current = read_if_unchanged(param, plan.original_sha256, "plan")
    except WriteError as exc:
        raise RewriteError(str(exc)) from None
    if plan.new_bin is not None and bin_path is None:
        raise RewriteError(f"{param}: this plan changes the weights; give the .bin file too")
    backup = None
    try:
        if out_param is None:
            backup = str(backup_once(param, current))
            if plan.new_bin is not None:
                backup_once(bin_path)
                atomic_write_bytes(bin_path, plan.new_bin, force=force)
            atomic_write_bytes(param, plan.new_param, force=force)
            target_param, target_bin = param, bin_path
        else:
            target_param = Path(out_param)
            target_bin = Path(out_bin) if out_bin else None
            if plan.new_bin is not None:
                atomic_write_bytes(target_bin, plan.new_bin)
            atomic_write_bytes(target_param, plan.new_param)
    except WriteError as exc:
        raise RewriteError(str(exc)) from None
    return RewriteResult(True, str(target_param), str(target_bin) if target_bin else None, backup, plan.summary())
