"""Every rewrite, registered in one place, in its default order: the driver, the CLI and the docs read it.

Modelled on pnnx's pass structure (pattern passes keyed by the operator they replace, then an ordered list
of whole-graph passes) and onnxscript's rewriter (one rule family per file, a rule set with an explicit
order, a result that carries the reason a rule refused or did not match). The phases are the kinds in
``core.rewrite.rule.KINDS`` -- layer, graph, bin -- and ``order`` numbers them end to end, so the listing
below is exactly the order the driver runs them in.

Adding a rewrite = one rule + one test:

1. Write ``def my_rule(ctx: RuleContext) -> RuleResult`` in its family's file (``lstm.py``, ``zipformer.py``,
   ``common.py`` for any architecture; a new family gets a new file). Its docstring's first line is the
   one-line description the CLI lists. Return ``RuleResult.changed(edits, param_text=...)`` (or
   ``new_bin=`` for a bin rule), ``RuleResult.no_match(reason)`` when the pattern is not there, or raise
   ``Refuse(reason)`` when it is there but not in a form the rule can rewrite without changing the numbers.
2. Add one ``Rule(...)`` line to ``RULES`` below: name, kind (``layer`` with the ``layer_type`` it replaces,
   ``graph`` or ``bin``), the architectures whose exports need it, and an ``order`` that puts it in its
   phase.
3. Add one test (``tests/core/rewrite/test_rewrite*.py``) that plans a small graph with the pattern and checks the
   numbers (python ncnn against numpy) or the text, and one with a near-miss the rule must refuse.

The driver, ``sherpa-ncnn-wizard rewrite --help``, the plan's change list and the rule checks in
``tests/core/rewrite/test_rewrite_registry.py`` pick the new rule up from here; nothing else lists rule names.
"""
from __future__ import annotations

from core.rewrite import common, lstm, zipformer
from core.rewrite.rule import KINDS, Rule

RULES: tuple[Rule, ...] = (
    # layer rules: the first layer in the graph that sherpa-ncnn's runtime lacks goes to the first rule
    # (in this order) registered for its type; a type no rule takes refuses the whole plan
    Rule("lengths-cast", "layer", ("lstm",), 10, lstm.lengths_cast, layer_type="Tensor.to"),
    Rule("cumsum-scan", "layer", ("zipformer",), 20, zipformer.cumsum_scan, layer_type="CumulativeSum"),
    Rule("rel-shift", "layer", ("zipformer",), 30, zipformer.rel_shift, layer_type="torch.as_strided"),
    Rule("tile-concat", "layer", ("zipformer",), 40, zipformer.tile_concat, layer_type="Tile"),
    # graph rules: each runs once, in this order, on the graph the layer rules left
    Rule("static-time-reshape", "graph", ("lstm",), 110, lstm.static_time_reshape),
    Rule("unbind-states", "graph", ("zipformer",), 120, zipformer.unbind_states),
    Rule("state-output-layout", "graph", ("zipformer",), 130, zipformer.state_output_layout),
    Rule("batch-unsqueeze", "graph", ("zipformer",), 140, zipformer.batch_unsqueeze),
    # bin rules: on the final graph, with the weights
    Rule("integer-constant", "bin", (), 210, common.integer_constant),
)


def problems(rules: tuple[Rule, ...]) -> list[str]:
    """What is wrong with a rule set (empty: usable): names and orders unique, kinds known, phases in order."""
    out = []
    names = [r.name for r in rules]
    out += [f"rule name {n!r} is registered twice" for n in sorted({n for n in names if names.count(n) > 1})]
    orders = [r.order for r in rules]
    out += [f"order {o} is used twice" for o in sorted({o for o in orders if orders.count(o) > 1})]
    for r in rules:
        if r.kind not in KINDS:
            out.append(f"{r.name}: kind {r.kind!r} is not one of {', '.join(KINDS)}")
        if (r.kind == "layer") != (r.layer_type is not None):
            out.append(f"{r.name}: a layer rule needs a layer_type, and only a layer rule has one")
        if not r.summary:
            out.append(f"{r.name}: no doc (give doc= or a docstring on its apply function)")
    ranked = sorted((r for r in rules if r.kind in KINDS), key=lambda r: r.order)
    phases = [KINDS.index(r.kind) for r in ranked]
    if phases != sorted(phases):
        out.append("the orders interleave phases: every layer rule must come before every graph rule, "
                   "and those before every bin rule")
    return out


def ordered(rules: tuple[Rule, ...] = RULES) -> tuple[Rule, ...]:
    """The rules in the order the driver runs them; a broken rule set is a programming error, raised here."""
    bad = problems(rules)
    if bad:
        raise ValueError("rewrite registry: " + "; ".join(bad))
    return tuple(sorted(rules, key=lambda r: r.order))


def of_kind(kind: str, rules: tuple[Rule, ...] = RULES) -> tuple[Rule, ...]:
    return tuple(r for r in ordered(rules) if r.kind == kind)


def rule_names(rules: tuple[Rule, ...] = RULES) -> tuple[str, ...]:
    return tuple(r.name for r in ordered(rules))


def for_layer_type(layer_type: str, rules: tuple[Rule, ...] = RULES) -> Rule | None:
    """The first layer rule registered for ``layer_type`` (None: no rewrite recognises the type)."""
    return next((r for r in of_kind("layer", rules) if r.layer_type == layer_type), None)


def listing(rules: tuple[Rule, ...] = RULES) -> list[str]:
    """One line per rule, in order: ``name (kind, archs): what it does`` (the CLI's help shows these)."""
    out = []
    for r in ordered(rules):
        on = f"{r.kind}: {r.layer_type}" if r.layer_type else r.kind
        archs = ", ".join(r.archs) or "any"
        out.append(f"{r.name} ({on}; {archs}): {r.summary.replace('``', '')}")
    return out


ordered(RULES)  # a registry with duplicate names or interleaved phases fails at import, not mid-plan
