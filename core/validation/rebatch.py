"""A traced encoder with its batch of one baked in, made to take several streams per call.

icefall's exports for ncnn (``is_pnnx``) reshape the front end's output with a literal batch of one
(``reshape(1, -1, C*F)``), so torch.jit.trace records the constant and the traced encoder cannot stream the
validation wavs side by side: at the published LSTM size that is one 230 MB weight read per wav per chunk, 10 s of
torch for 7 s of audio. This builds a second function from an inlined copy of the module's graph in which every
reshape/view whose target starts with a literal 1 takes the batch size of the features instead (their first axis).

With one stream it is the module's own computation (that size is then 1), and the weights are the module's (not
copied). With several, nothing is assumed: core.validation.batched checks the first call at each batch size against
the untouched module's one-wav call, every output, and any difference sends the caller back to one wav at a time.
"""
from __future__ import annotations

import dataclasses

RESHAPES = ("aten::reshape", "aten::view")


def rebatched(traced):
    """``traced`` (core.model.traced.Traced) calling the patched graph, or ``traced`` itself when no reshape has a
    literal leading 1 or the graph cannot be copied."""
    try:
        function = _patched_function(traced.module)
    except Exception:  # noqa: BLE001 - torch's graph API raises plain RuntimeErrors; the plain module still works
        return traced
    if function is None:
        return traced
    owner = traced.module._c
    return dataclasses.replace(traced, module=lambda *args: function(owner, *args))


def _patched_function(module):
    import torch
    graph = module.graph.copy()
    torch._C._jit_pass_inline(graph)  # the submodules' reshapes (icefall's is in encoder_embed) into one graph
    inputs = list(graph.inputs())
    if len(inputs) < 2 or not isinstance(inputs[1].type(), torch._C.TensorType):
        return None  # no features tensor first: no batch size to take
    features = inputs[1]
    patched = 0
    for node in list(graph.nodes()):
        if node.kind() in RESHAPES and _leading_one(node, graph, features):
            patched += 1
    if not patched:
        return None
    return torch._C._create_function_from_graph("forward_rebatched", graph)


def _leading_one(node, graph, features) -> bool:
    """Replace a literal 1 leading the node's target shape with ``features.size(0)``; False when there is none."""
    import torch
    shape = node.inputsAt(1).node()
    if shape.kind() == "prim::ListConstruct":
        first = shape.inputsAt(0).node()
        if first.kind() != "prim::Constant" or first.output().toIValue() != 1:
            return False
        with graph.insert_point_guard(shape):
            batch = _batch_size(graph, features)
        shape.replaceInput(0, batch)
        return True
    if shape.kind() == "prim::Constant":  # the whole target folded into one constant list
        value = shape.output().toIValue()
        if not isinstance(value, list) or not value or value[0] != 1:
            return False
        with graph.insert_point_guard(node):
            batch = _batch_size(graph, features)
            rest = [graph.insertConstant(v) for v in value[1:]]
            target = graph.create("prim::ListConstruct", [batch, *rest])
            target.output().setType(torch._C.ListType.ofInts())
            graph.insertNode(target)
        node.replaceInput(1, target.output())
        return True
    return False


def _batch_size(graph, features):
    import torch
    size = graph.create("aten::size", [features, graph.insertConstant(0)])
    size.output().setType(torch._C.IntType.get())
    graph.insertNode(size)
    return size.output()
