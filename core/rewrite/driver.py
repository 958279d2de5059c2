"""Graph rewrites: replace layers sherpa-ncnn's runtime lacks with layers it has, same numbers.

The pnnx wheel leaves a few operators in icefall's encoders that the icefall
pnnx fork used to turn into sherpa-ncnn's own layers (or that it lowers to
layer types sherpa-ncnn compiles out). Each rewrite here matches one pattern
*precisely*; a layer the runtime lacks that no rewrite recognises makes the
whole plan refuse, naming the layer and its type, and nothing is written.

Like the metadata edit it is plan first, write later: :func:`plan_rewrites`
computes the new file (a diff, layer and blob counts before and after) without
touching anything; :func:`apply_rewrites` writes exactly that plan atomically
(in place with a one-time ``.orig`` backup, or to a new path). Running the plan
again on its own output finds nothing to do.

Rewrites:

- ``lengths-cast`` (LSTM): ``Tensor.to`` casting the output lengths
  (``floor(((len - 3) / 2 - 1) / 2)``) to ``torch.long``. ncnn has no integer
  tensors, and the value is already a whole number (the layer before it is a
  ``floor``/``ceil``/``round``/``trunc``), so the cast is the identity: the
  layer is removed and its producer writes the output blob directly. sherpa-ncnn
  never reads that output (``out1``) anyway.
- ``static-time-reshape`` (LSTM): icefall traces the LSTM encoder with 100
  feature frames, but sherpa-ncnn feeds 9 frames per chunk (1 frame after
  subsampling). pnnx bakes the traced time length into the ``Reshape`` after
  the convolutional subsampling (``0=2304 1=23``), so a 9-frame chunk would be
  reshaped to 23 frames, 22 of them read past the end of the buffer. The time
  dimension becomes ``-1`` (inferred). Matched only as ``Reshape 0=X 1=T`` on
  the feature path whose only consumer is a ``Gemm`` with a non-constant A and
  ``7=T`` (pnnx's traced M), and only when the runtime's chunk differs from the
  traced one.
- Zipformer (core/rewrite/zipformer.py): ``cumsum-scan``, ``rel-shift``,
  ``tile-concat`` (whole-graph rules in ``RULES``), then ``unbind-states``,
  ``state-output-layout`` and ``batch-unsqueeze`` for what pnnx mis-lowered, and
  ``integer-constant`` (a .bin change, planned by :func:`plan_file`).
"""
from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.common.atomic import WriteError, atomic_write_bytes, backup_once
from core.ncnn.param import Layer, ParamFile, format_layer_line, load_param, parse_param, replace_header
from core.ncnn.requirements import check_layers
from core.ncnn.requirements import describe as describe_layer_problems
from core.ncnn.runtime_layers import runtime_problem
from core.pnnx.graph import read_pnnx_ops
from core.rewrite import zipformer as zf

# ncnn UnaryOp op types whose result is always a whole number
_INTEGER_UNARY = {2: "floor", 3: "ceil", 18: "round", 19: "trunc"}
_CAST_DTYPES = {"torch.long", "torch.int64", "torch.int", "torch.int32", "torch.int16", "torch.float",
                "torch.float32", "torch.double", "torch.float64"}
_PNNX_LINE_RE = re.compile(r"^(\S+)\s+(\S+)\s+\d+\s+\d+\s")


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


class _Refuse(Exception):
    pass


# -- pnnx's own graph (operator attributes the ncnn param drops) --------------------

def read_pnnx_attributes(path: str | Path | None) -> dict[str, dict[str, str]]:
    """layer name -> {attribute: value} from pnnx's ``*.pnnx.param`` ({} when absent or unreadable)."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, dict[str, str]] = {}
    for line in text.splitlines()[2:]:
        m = _PNNX_LINE_RE.match(line)
        if not m:
            continue
        attrs = {}
        for tok in line.split()[4:]:
            if "=" in tok and not tok.startswith(("#", "$", "@")):
                k, _, v = tok.partition("=")
                attrs[k] = v
        out[m.group(2)] = attrs
    return out


# -- helpers over the graph -------------------------------------------------------

def _producers(model: ParamFile) -> dict[str, Layer]:
    return {t: layer for layer in model.layers for t in layer.tops}


def _consumers(model: ParamFile) -> dict[str, list[Layer]]:
    out: dict[str, list[Layer]] = {}
    for layer in model.layers:
        for b in layer.bottoms:
            out.setdefault(b, []).append(layer)
    return out


def _layer_line(layer: Layer, *, tops=None, bottoms=None) -> str:
    return format_layer_line(layer.type, layer.name, bottoms if bottoms is not None else layer.bottoms,
                             tops if tops is not None else layer.tops, [p.text for p in layer.params])


def _where(layer: Layer) -> str:
    return f"layer {layer.name!r} ({layer.type}) at line {layer.line}"


def _scalar_path_to_input(model: ParamFile, blob: str) -> list[Layer]:
    """The chain of one-input element-wise layers from an Input to ``blob``; refuses on anything else."""
    producers = _producers(model)
    chain: list[Layer] = []
    current = blob
    for _ in range(len(model.layers)):
        layer = producers.get(current)
        if layer is None:
            raise _Refuse(f"blob {current!r} has no producer")
        if layer.type == "Input":
            return chain
        elementwise = (layer.type == "UnaryOp" and len(layer.bottoms) == 1) or \
                      (layer.type == "BinaryOp" and len(layer.bottoms) == 1 and layer.get(1, 0) == 1)
        if not elementwise:
            raise _Refuse(f"its input comes from {_where(layer)}, not from a chain of scalar arithmetic on an Input "
                          "(a lengths path)")
        chain.append(layer)
        current = layer.bottoms[0]
    raise _Refuse("the graph has a cycle")


# -- the rewrites -----------------------------------------------------------------

def _rewrite_lengths_cast(model: ParamFile, layer: Layer, pnnx_attrs: dict) -> tuple[list[str], Change]:
    """Remove a ``Tensor.to`` that casts whole-number lengths; its producer writes the output blob."""
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise _Refuse(f"it has {len(layer.bottoms)} input(s) and {len(layer.tops)} output(s), not 1 and 1")
    consumers = _consumers(model)
    top, bottom = layer.tops[0], layer.bottoms[0]
    if consumers.get(top):
        raise _Refuse(f"its output {top!r} is read by {_where(consumers[top][0])}; only a cast that produces a graph "
                      "output (the lengths) is recognised")
    if len(consumers.get(bottom, [])) != 1:
        raise _Refuse(f"its input {bottom!r} is also read by other layers")
    attrs = pnnx_attrs.get(layer.name)
    if attrs is not None:
        dtype = attrs.get("dtype")
        if dtype not in _CAST_DTYPES:
            raise _Refuse(f"pnnx's graph says it casts to {dtype!r}, not to an int or float type")
    producer = _producers(model).get(bottom)
    if producer is None or producer.type != "UnaryOp" or producer.get(0, 0) not in _INTEGER_UNARY:
        what = _where(producer) if producer is not None else "nothing"
        raise _Refuse(f"its input comes from {what}, not from a floor/ceil/round/trunc, so the cast "
                      "could change the values")
    chain = _scalar_path_to_input(model, bottom)
    root = chain[-1].bottoms[0]  # the chain starts at the producer, so it is never empty
    new_producer = _layer_line(producer, tops=[top if t == bottom else t for t in producer.tops])
    lines = list(model.lines)
    eol = lines[producer.line - 1][len(lines[producer.line - 1].rstrip("\r\n")):]
    lines[producer.line - 1] = new_producer + eol
    lines[layer.line - 1] = None  # removed below
    op = _INTEGER_UNARY[producer.get(0, 0)]
    dtype = f" to {attrs['dtype']}" if attrs and attrs.get("dtype") else ""
    change = Change("lengths-cast", layer.name, layer.type, layer.line,
                    f"removed the cast{dtype} of {bottom!r} (a whole number: {op} of scalar arithmetic on input "
                    f"{root!r}); {producer.name!r} now writes {top!r} directly")
    return lines, change


RULES = {"Tensor.to": _rewrite_lengths_cast}
# Zipformer rules rewrite every layer of their type at once and return (full text, [(layer, what), ...])
ZIPFORMER_RULE_NAMES = {"CumulativeSum": "cumsum-scan", "torch.as_strided": "rel-shift", "Tile": "tile-concat"}
RULES.update(zf.RULES)

# frames sherpa-ncnn feeds the encoder per chunk when that is fixed by the runtime, not by the metadata
RUNTIME_SEGMENT = {"lstm": 9}
_PNNX_INPUT0_RE = re.compile(r"^pnnx\.Input\s+\S+\s+0\s+1\s+(\S+)\s+#\1=\(([0-9,]+)\)")


def traced_frames(pnnx_param: str | Path | None) -> int | None:
    """The time length of the first input pnnx saw (``#0=(1,100,80)`` -> 100), or None."""
    if pnnx_param is None:
        return None
    try:
        text = Path(pnnx_param).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        m = _PNNX_INPUT0_RE.match(line)
        if m:
            dims = [int(x) for x in m.group(2).split(",") if x]
            return dims[1] if len(dims) == 3 else None
    return None


def _downstream(model: ParamFile, blob: str) -> set[str]:
    seen = {blob}
    for layer in model.layers:  # layers are in topological order in a param file
        if any(b in seen for b in layer.bottoms):
            seen.update(layer.tops)
    return seen


def _static_time_reshapes(model: ParamFile) -> list[tuple[Layer, int]]:
    """(Reshape, T) pairs: Reshape 0=X 1=T on in0's path feeding only a Gemm with 4=0 and 7=T."""
    if "in0" not in model.input_names:
        return []
    feature_path = _downstream(model, "in0")
    consumers = _consumers(model)
    found = []
    for layer in model.layers_of_type("Reshape"):
        if layer.bottoms[0] not in feature_path or len(layer.tops) != 1:
            continue
        keys = {p.id for p in layer.params}
        t = layer.get(1)
        if keys != {0, 1} or not isinstance(t, int) or t <= 0:
            continue
        users = consumers.get(layer.tops[0], [])
        if len(users) == 1 and users[0].type == "Gemm" and users[0].get(4, 0) == 0 and users[0].get(7) == t:
            found.append((layer, t))
    return found


def _rewrite_static_time(model: ParamFile, layer: Layer, t: int, traced: int | None, segment: int) -> tuple[list[str], Change]:
    params = [("1=-1" if p.id == 1 else p.text) for p in layer.params]
    lines = list(model.lines)
    eol = lines[layer.line - 1][len(lines[layer.line - 1].rstrip("\r\n")):]
    lines[layer.line - 1] = format_layer_line(layer.type, layer.name, layer.bottoms, layer.tops, params) + eol
    traced_text = f"{traced} frames" if traced else "a fixed chunk"
    change = Change("static-time-reshape", layer.name, layer.type, layer.line,
                    f"the traced time length {t} (pnnx traced {traced_text}; sherpa-ncnn feeds {segment}) became -1, "
                    f"so the Reshape follows the chunk it is given")
    return lines, change


# -- planning and applying ----------------------------------------------------------

def plan_rewrites(model: ParamFile, *, pnnx_param: str | Path | None = None, encoder: bool = True,
                  arch: str | None = None) -> RewritePlan:
    """Work out every rewrite ``model`` needs, without writing anything.

    The rules match patterns of well-formed layers; a layer whose line lacks the inputs or outputs its type has
    (a Reshape without an input, say) is refused by name instead of tripping a rule up."""
    try:
        return _plan_rewrites(model, pnnx_param=pnnx_param, encoder=encoder, arch=arch)
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        header = model.header_text()
        plan = RewritePlan(model.source, "refused", layers_before=model.layer_count, layers_after=model.layer_count,
                           blobs_before=model.blob_count, blobs_after=model.blob_count, header_before=header,
                           header_after=header, original_sha256=hashlib.sha256(model.to_bytes()).hexdigest())
        broken = [f"{p.name} ({p.type}) at line {p.line}: {p.message}" for p in check_layers(model)][:3]
        plan.errors.append("the graph has layers whose lines do not fit their type" +
                           (": " + "; ".join(broken) if broken else f" ({type(exc).__name__})") +
                           "; nothing was changed — convert the model with pnnx again")
        return plan


def _plan_rewrites(model: ParamFile, *, pnnx_param: str | Path | None = None, encoder: bool = True,
                   arch: str | None = None) -> RewritePlan:
    original = model.to_bytes()
    header = model.header_text()
    plan = RewritePlan(model.source, "refused", layers_before=model.layer_count, layers_after=model.layer_count,
                       blobs_before=model.blob_count, blobs_after=model.blob_count, header_before=header,
                       header_after=header, original_sha256=hashlib.sha256(original).hexdigest())
    if model.errors:
        plan.errors = [str(i) for i in model.errors] + ["refusing to rewrite a file that ncnn would not load as it is"]
        return plan
    pnnx_attrs = read_pnnx_attributes(pnnx_param)
    if pnnx_param is None or not pnnx_attrs:
        plan.notes.append("pnnx's own graph (*.pnnx.param) was not available; operator attributes were not checked")
    pnnx_attrs["@ops"] = read_pnnx_ops(pnnx_param)
    current = model
    for _ in range(len(model.layers) + 1):
        target = next((layer for layer in current.layers if runtime_problem(layer.type, encoder=encoder)), None)
        if target is None:
            break
        rule = RULES.get(target.type)
        if rule is None:
            plan.errors.append(_unknown(current, encoder))
            return plan
        try:
            lines, change = rule(current, target, pnnx_attrs)
        except (_Refuse, zf.Refuse) as exc:
            plan.errors.append(f"{_where(target)}: not a pattern any rewrite recognises: {exc}; nothing was changed")
            return plan
        if isinstance(lines, str):  # a whole-graph rule (rewrite_zipformer): the header is already right
            result = parse_param(lines, model.source)
            if result.model is None or result.model.errors:
                plan.errors.append(f"{_where(target)}: the rewrite produced an invalid file ({result.describe()}); "
                                   "nothing was changed")
                return plan
            plan.changes += [Change(ZIPFORMER_RULE_NAMES[target.type], layer.name, layer.type,
                                    _original_line(model, layer.name), what) for layer, what in change]
            current = result.model
            continue
        removed = sum(1 for x in lines if x is None)
        kept = [x for x in lines if x is not None]
        kept = replace_header(kept, current.header_line, current.layer_count - removed, current.blob_count - removed)
        result = parse_param("".join(kept), model.source)
        if result.model is None or result.model.errors:
            plan.errors.append(f"{_where(target)}: the rewrite produced an invalid file ({result.describe()}); "
                               "nothing was changed")
            return plan
        # the original line numbers are reported, not the shifting ones of the intermediate files
        change.line = _original_line(model, change.layer)
        plan.changes.append(change)
        current = result.model
    segment = RUNTIME_SEGMENT.get(arch or "")
    traced = traced_frames(pnnx_param)
    if segment is not None and traced != segment:
        for layer, t in _static_time_reshapes(current):
            lines, change = _rewrite_static_time(current, layer, t, traced, segment)
            result = parse_param("".join(lines), model.source)
            if result.model is None or result.model.errors:
                plan.errors.append(f"{_where(layer)}: the rewrite produced an invalid file; nothing was changed")
                return plan
            change.line = _original_line(model, change.layer)
            plan.changes.append(change)
            current = result.model
        if traced is None:
            plan.notes.append("the traced chunk length is unknown (no pnnx graph); static time lengths were found "
                              "from the Reshape -> Gemm pattern alone")
    if zf.is_zipformer(current):
        for name, step in (("unbind-states", zf.rewrite_unbinds), ("state-output-layout", zf.rewrite_state_outputs),
                           ("batch-unsqueeze", zf.rewrite_batch_unsqueezes)):
            try:
                text, done = step(current, pnnx_attrs)
            except zf.Refuse as exc:
                plan.errors.append(f"{name}: not a pattern any rewrite recognises: {exc}; nothing was changed")
                return plan
            if text is None:
                continue
            result = parse_param(text, model.source)
            if result.model is None or result.model.errors:
                plan.errors.append(f"{name}: the rewrite produced an invalid file ({result.describe()}); "
                                   "nothing was changed")
                return plan
            plan.changes += [Change(name, layer.name, layer.type, _original_line(model, layer.name), what)
                             for layer, what in done]
            current = result.model
    if _mislowered(current):
        bad = _mislowered(current)
        plan.errors.append(f"{_where(bad[0])}: a Slice without parameters ({len(bad)} in the graph; pnnx could not "
                           "lower an unbind along the first axis and dropped its axis), so ncnn splits it wrongly; no "
                           "rewrite recognises this pattern; nothing was changed")
        return plan
    problems = check_layers(current)
    if problems:
        where = "the rewritten graph" if plan.changes else Path(model.source).name
        plan.errors.append(describe_layer_problems(problems, where) + "; nothing was changed")
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
    mislowered = _mislowered(model)
    extra = (f"; pnnx also left {len(mislowered)} Slice layer(s) without parameters ({mislowered[0].name}, ...): an "
             "unbind of the state inputs along the layer axis that it could not lower") if mislowered else ""
    return (f"{_where(first)}: no rewrite recognises this layer type ({runtime_problem(first.type, encoder=encoder)}); "
            f"layers sherpa-ncnn's runtime lacks: {others}{extra}; nothing was changed")


def _mislowered(model: ParamFile) -> list[Layer]:
    """Slices pnnx wrote without axis or sizes ('unbind along batch axis 0 is not supported')."""
    return zf.mislowered_unbinds(model)


def plan_file(param: str | Path, *, pnnx_param: str | Path | None = None, encoder: bool = True,
              arch: str | None = None) -> RewritePlan:
    """Load ``param`` and plan; a missing ``pnnx_param`` next to it is looked up as ``encoder.pnnx.param``."""
    parsed = load_param(param)
    if parsed.model is None:
        return RewritePlan(str(param), "refused", errors=[parsed.describe()])
    if pnnx_param is None:
        guess = Path(param).with_name(Path(param).name.split("_jit_trace")[0].split(".")[0] + ".pnnx.param")
        pnnx_param = guess if guess.is_file() else None
    plan = plan_rewrites(parsed.model, pnnx_param=pnnx_param, encoder=encoder, arch=arch)
    binary = Path(param).with_suffix(".bin")
    if plan.action in ("rewrite", "unchanged") and pnnx_param is not None and binary.is_file():
        _plan_integer_constants(plan, parsed.model, binary, pnnx_param)
    return plan


def _plan_integer_constants(plan: RewritePlan, model: ParamFile, binary: Path, pnnx_param) -> None:
    """Integer constants pnnx wrote as int32 bits into a MemoryData (a .bin change; see rewrite_zipformer)."""
    try:
        new_bin, done = zf.fix_integer_constants(plan.new_param or model.to_bytes(), binary.read_bytes(),
                                                 read_pnnx_ops(pnnx_param))
    except Exception as exc:  # python ncnn could not walk the weights: report, do not guess
        plan.notes.append(f"integer constants were not checked: {exc}")
        return
    if new_bin is None:
        return
    for name, what in done:
        plan.changes.append(Change("integer-constant", name, "MemoryData", _original_line(model, name), what))
    plan.new_bin = new_bin
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
        current = param.read_bytes()
    except OSError as exc:
        raise RewriteError(f"{param}: cannot be read ({exc.strerror})") from None
    if hashlib.sha256(current).hexdigest() != plan.original_sha256:
        raise RewriteError(f"{param}: the file changed since the plan was made; plan it again before writing")
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
