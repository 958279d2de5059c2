"""The rewrite registry (core/rewrite/registry.py): one list of rules in one order, one result shape, a reason
for every refusal, and a driver that needs nothing but the registry to run a new rule."""
from __future__ import annotations

import dataclasses

import pytest

from core.ncnn.param import parse_param
from core.rewrite import registry
from core.rewrite.driver import plan_rewrites
from core.rewrite.graph import Builder, line
from core.rewrite.rule import KINDS, Edit, Refuse, Rule, RuleResult

# a two-layer graph whose second layer is an operator pnnx could not lower (no registered rule takes it)
TOY = "7767517\n2 2\nInput in0 0 1 in0\ntorch.toy_identity toy_0 1 1 in0 out0\n"


def _toy_model():
    return parse_param(TOY, "toy.param").model


def _noop(ctx):
    """A graph rule that finds nothing to do."""
    return RuleResult.no_match("nothing here")


def _identity_rule(ctx):
    """torch.toy_identity -> an identity BinaryOp (x + 0): the same numbers with a layer the runtime has."""
    b = Builder(ctx.model)
    layer = ctx.target
    b.replace(layer, [line("BinaryOp", layer.name, layer.bottoms, layer.tops, ["0=0", "1=1", "2=0.0"])])
    return RuleResult.changed([Edit(layer.name, layer.type, "became x + 0")], param_text=b.text())


def test_the_registry_is_well_formed_and_in_phase_order():
    assert registry.problems(registry.RULES) == []
    ranked = registry.ordered()
    assert [KINDS.index(r.kind) for r in ranked] == sorted(KINDS.index(r.kind) for r in ranked)
    assert len(set(registry.rule_names())) == len(registry.RULES)
    assert all(r.summary for r in ranked)  # every rule says what it does, for the CLI and the docs
    assert {r.layer_type for r in registry.of_kind("layer")} == {"Tensor.to", "CumulativeSum", "torch.as_strided",
                                                                 "Tile"}


@pytest.mark.parametrize("broken, complaint", [
    (lambda rules: rules + (dataclasses.replace(rules[0], order=999),), "registered twice"),
    (lambda rules: rules + (Rule("late-layer", "layer", (), 999, _identity_rule, layer_type="X"),),
     "interleave phases"),
    (lambda rules: rules + (Rule("no-type", "layer", (), 5, _identity_rule),), "needs a layer_type"),
    (lambda rules: rules + (Rule("odd", "pass", (), 998, _noop),), "is not one of layer, graph, bin"),
    (lambda rules: rules + (Rule("same-order", "graph", (), rules[-2].order, _noop),), "used twice"),
    (lambda rules: rules + (Rule("undocumented", "graph", (), 199, lambda ctx: None),), "no doc"),
])
def test_a_broken_rule_set_is_named_and_refused(broken, complaint):
    rules = broken(registry.RULES)
    assert any(complaint in p for p in registry.problems(rules)), registry.problems(rules)
    with pytest.raises(ValueError, match=complaint):
        registry.ordered(rules)


def test_a_new_rule_is_one_registry_entry():
    """The driver finds, runs and reports a rule it has never heard of, from the rule set alone."""
    without = plan_rewrites(_toy_model())
    assert without.action == "refused"
    assert "layer 'toy_0' (torch.toy_identity) at line 4: no rewrite recognises this layer type" in without.errors[0]
    rules = registry.RULES + (Rule("toy-identity", "layer", (), 50, _identity_rule, layer_type="torch.toy_identity"),)
    plan = plan_rewrites(_toy_model(), rules=rules)
    assert plan.action == "rewrite", plan.errors
    assert [(c.rule, c.layer, c.type, c.line, c.what) for c in plan.changes] == [
        ("toy-identity", "toy_0", "torch.toy_identity", 4, "became x + 0")]
    assert b"BinaryOp" in plan.new_param and b"toy_identity" not in plan.new_param
    assert "toy-identity (layer: torch.toy_identity; any): torch.toy_identity -> an identity BinaryOp" in \
        "\n".join(registry.listing(rules))


def test_a_refusal_carries_the_rules_reason():
    def refuse(ctx):
        """Refuses every layer."""
        raise Refuse("the toy operator has a second output this rule cannot keep")

    def not_here(ctx):
        """Finds nothing."""
        return RuleResult.no_match("no toy pattern around this layer")

    for apply, reason in ((refuse, "the toy operator has a second output"), (not_here, "no toy pattern")):
        rules = registry.RULES + (Rule("toy", "layer", (), 50, apply, layer_type="torch.toy_identity"),)
        plan = plan_rewrites(_toy_model(), rules=rules)
        # a layer rule that does not match leaves a layer the runtime cannot load: the plan refuses with its reason
        assert plan.action == "refused" and plan.new_param is None
        assert len(plan.errors) == 1
        assert plan.errors[0].startswith("layer 'toy_0' (torch.toy_identity) at line 4: not a pattern any rewrite "
                                         f"recognises: {reason}")
        assert plan.errors[0].endswith("; nothing was changed")


def test_rules_run_in_the_registrys_order_not_the_tuples():
    seen = []

    def mark(tag):
        def apply(ctx):
            """Records that it ran."""
            seen.append(tag)
            return RuleResult.no_match(f"{tag} found nothing")
        return apply

    extra = (Rule("second", "graph", (), 195, mark("second")), Rule("first", "graph", (), 150, mark("first")))
    plan = plan_rewrites(parse_param("7767517\n1 1\nInput in0 0 1 in0\n", "x.param").model,
                         rules=registry.RULES + extra)
    assert plan.action == "unchanged"
    assert seen == ["first", "second"]
    # graph rules that did not match say why (the architecture's rules included), in order
    skipped = dict(plan.skipped)
    assert list(skipped)[-2:] == ["first", "second"] and skipped["first"] == "first found nothing"
    assert "lstm" in skipped["static-time-reshape"] and "not given" in skipped["static-time-reshape"]
    assert skipped["unbind-states"].startswith("not a Zipformer graph")


def test_the_first_layer_rule_by_order_takes_the_layer():
    def refuse(ctx):
        """Would refuse."""
        raise Refuse("the later rule ran")

    rules = registry.RULES + (Rule("late", "layer", (), 60, refuse, layer_type="torch.toy_identity"),
                              Rule("early", "layer", (), 45, _identity_rule, layer_type="torch.toy_identity"))
    plan = plan_rewrites(_toy_model(), rules=rules)
    assert plan.action == "rewrite" and [c.rule for c in plan.changes] == ["early"]


def test_rewrite_help_lists_every_rule_in_order(capsys):
    from tui.cli.main import main
    with pytest.raises(SystemExit):
        main(["rewrite", "--help"])
    out = capsys.readouterr().out
    positions = [out.find(f"{name} (") for name in registry.rule_names()]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), out


def test_a_broken_rule_set_is_not_mistaken_for_a_broken_graph():
    rules = registry.RULES + (Rule("lengths-cast", "graph", (), 190, _noop),)
    with pytest.raises(ValueError, match="'lengths-cast' is registered twice"):
        plan_rewrites(_toy_model(), rules=rules)
