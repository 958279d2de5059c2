"""The SherpaMetaData line: build it, plan the edit, check the graph, apply atomically.

Plan first, write later: :func:`plan_metadata` computes everything a preview
shows (the new line, the header change, a diff, the graph checks) without
touching the file; :func:`apply_plan` writes exactly that plan, refusing if the
file changed in between.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from core.common.atomic import WriteError, atomic_write_bytes, backup_once, read_if_unchanged
from core.model.architectures import ResolvedValues
from core.model.spec import ArchSpec, MetaEntry
from core.ncnn.param import Layer, ParamFile, format_layer_line, insert_line, replace_header
from core.ncnn.runtime_layers import runtime_problem

META_TYPE = "SherpaMetaData"
META_NAME = "sherpa_meta_data1"
RESERVED_KEYS = (30, 31)  # ncnn uses them on every layer (shape hints, featmask)


@dataclass(frozen=True)
class Metadata:
    arch: ArchSpec
    entries: tuple[MetaEntry, ...]

    @property
    def line(self) -> str:
        return format_layer_line(META_TYPE, META_NAME, (), (), [e.text for e in self.entries])

    def as_dict(self) -> dict[int, object]:
        return {e.key: e.value for e in self.entries}


def build_metadata(resolved: ResolvedValues) -> Metadata:
    if not resolved.ok:
        raise ValueError("cannot build metadata from invalid hyperparameters: "
                         + "; ".join(p.message for p in resolved.errors))
    return Metadata(resolved.arch, tuple(resolved.arch.metadata(resolved.values)))


@dataclass(frozen=True)
class Check:
    """One graph check: what was checked, whether it passed, and a sentence."""

    name: str
    ok: bool
    message: str
    severity: str = "error"  # what a failure counts as

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "message": self.message, "severity": self.severity}


def find_metadata_layers(model: ParamFile) -> list[Layer]:
    return [layer for layer in model.layers if layer.type == META_TYPE]


def read_metadata(model: ParamFile) -> dict[int, object] | None:
    """The metadata as sherpa-ncnn would find it (type and name must both match)."""
    for layer in model.layers:
        if layer.type == META_TYPE and layer.name == META_NAME:
            return {p.id: p.value for p in layer.params if p.id not in RESERVED_KEYS}
    return None


def graph_checks(model: ParamFile, arch: ArchSpec, values) -> list[Check]:
    """Does the graph have the blobs the metadata makes sherpa-ncnn look for, and only known layers?"""
    contract = arch.io_contract(values)
    checks: list[Check] = []
    inputs = [n for n in model.input_names]
    want = list(contract.inputs)
    missing = [n for n in want if n not in inputs]
    extra = [n for n in inputs if n not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        checks.append(Check("inputs", False,
                            f"the graph has {len(inputs)} Input blobs but the metadata describes {contract.description} "
                            f"({'; '.join(parts)}); the hyperparameters do not match this encoder"))
    else:
        checks.append(Check("inputs", True, f"{len(inputs)} Input blobs, as the metadata needs ({contract.description})"))
    outputs = set(model.output_names)
    missing_out = [n for n in contract.outputs if n not in outputs]
    if missing_out:
        checks.append(Check("outputs", False, f"the graph lacks the output blobs {_names(missing_out)} that sherpa-ncnn "
                                               f"reads ({contract.description})"))
    else:
        checks.append(Check("outputs", True, f"output blobs {_names(list(contract.outputs))} present"))
    checks.append(runtime_layer_check(model, encoder=True))
    return checks


def runtime_layer_check(model: ParamFile, *, encoder: bool) -> Check:
    bad: dict[str, str] = {}
    counts = model.layer_types()
    for layer_type in counts:
        why = runtime_problem(layer_type, encoder=encoder)
        if why:
            bad[layer_type] = why
    if not bad:
        return Check("runtime-layers", True, "every layer type is available in sherpa-ncnn's runtime")
    listed = "; ".join(f"{t} x{counts[t]} ({why})" for t, why in bad.items())
    return Check("runtime-layers", False, f"sherpa-ncnn cannot load this graph: {listed}")


def _names(names: list[str]) -> str:
    if len(names) > 6:
        return ", ".join(names[:3]) + f", ... {names[-1]} ({len(names)} blobs)"
    return ", ".join(names)


@dataclass
class MetadataPlan:
    """Everything a preview shows; ``new_bytes`` is what apply will write."""

    source: str
    action: str  # "insert", "replace", "unchanged" or "refused"
    line: str
    line_no: int | None
    header_before: str
    header_after: str
    diff: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    new_bytes: bytes | None = None
    original_sha256: str = ""

    @property
    def can_apply(self) -> bool:
        return self.action in ("insert", "replace") and not self.errors

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "action": self.action,
            "line": self.line,
            "line_no": self.line_no,
            "header_before": self.header_before,
            "header_after": self.header_after,
            "diff": self.diff,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "checks": [c.as_dict() for c in self.checks],
        }


def plan_metadata(model: ParamFile, metadata: Metadata, values=None) -> MetadataPlan:
    """Work out the edit that puts ``metadata`` into ``model``, without writing anything."""
    import hashlib  # here, not at the top: it loads OpenSSL (3.5 MB), and calibration's children import this module
    original = model.to_bytes()
    sha = hashlib.sha256(original).hexdigest()
    header = model.header_text()
    plan = MetadataPlan(model.source, "refused", metadata.line, None, header, header, "", original_sha256=sha)
    for issue in model.issues:
        (plan.errors if issue.severity == "error" else plan.warnings).append(str(issue))
    if plan.errors:
        plan.errors.append("refusing to edit a file that ncnn would not load as it is; fix the problems above "
                           "(or re-run pnnx) first")
        return plan
    if values is not None:
        plan.checks = graph_checks(model, metadata.arch, values)
        for c in plan.checks:
            if not c.ok:
                if c.name == "runtime-layers":
                    plan.warnings.append(c.message)
                else:
                    plan.errors.append(c.message)
    existing = find_metadata_layers(model)
    near = [layer for layer in model.layers
            if layer.type != META_TYPE and layer.type.lower().replace("_", "") in ("sherpametadata", "sherapmetadata")]
    for layer in near:
        plan.warnings.append(f"line {layer.line}: layer type {layer.type!r} looks like a misspelt {META_TYPE}; "
                             "sherpa-ncnn ignores it")
    if len(existing) > 1:
        plan.errors.append(f"the file has {len(existing)} {META_TYPE} layers (lines "
                           f"{', '.join(str(layer.line) for layer in existing)}); remove all but one first")
        return plan
    if plan.errors:
        return plan
    if existing:
        old = existing[0]
        plan.line_no = old.line
        current = {p.id: p.value for p in old.params if p.id not in RESERVED_KEYS}
        if old.name == META_NAME and current == metadata.as_dict():
            plan.action = "unchanged"
            return plan
        if old.name != META_NAME:
            plan.warnings.append(f"line {old.line}: the existing {META_TYPE} layer is named {old.name!r}; sherpa-ncnn "
                                 f"only finds {META_NAME!r}, so it is replaced")
        new_lines = list(model.lines)
        new_lines[old.line - 1] = metadata.line + _line_ending(new_lines[old.line - 1])
        plan.action = "replace"
        edit_at = old.line
    else:
        # Pure line edits (no re-parse): this runs on every keystroke of the TUI form.
        new_lines = insert_line(model.lines, model.header_line, metadata.line, model.eol)
        new_lines = replace_header(new_lines, model.header_line, model.layer_count + 1, model.blob_count)
        plan.action = "insert"
        plan.line_no = model.header_line + 1
        edit_at = plan.line_no
    plan.header_after = new_lines[model.header_line - 1].strip()
    plan.new_bytes = "".join(new_lines).encode("utf-8")
    plan.diff = _diff(model.lines, new_lines, edit_at, model.source)
    return plan


def _line_ending(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def _diff(old: list[str], new: list[str], edit_at: int, source: str) -> str:
    """A unified diff of the head of the file, up to a few lines past the edit."""
    end = edit_at + 2
    a = [line.rstrip("\r\n") for line in old[:end]]
    b = [line.rstrip("\r\n") for line in new[:end + 1]]
    name = Path(source).name
    return "\n".join(difflib.unified_diff(a, b, f"a/{name}", f"b/{name}", n=2, lineterm=""))


@dataclass
class ApplyResult:
    applied: bool
    path: str
    backup: str | None
    message: str


class ApplyError(Exception):
    """Writing the plan failed; the original file is untouched. The message says what to do."""


def apply_plan(plan: MetadataPlan, path: str | Path, *, force: bool = False) -> ApplyResult:
    """Write the planned edit atomically, keeping a one-time ``.orig`` backup."""
    path = Path(path)
    if plan.action == "unchanged":
        return ApplyResult(False, str(path), None, "the metadata is already there; nothing to change")
    if not plan.can_apply or plan.new_bytes is None:
        raise ApplyError(f"{path}: the plan cannot be applied: " + "; ".join(plan.errors or ["nothing to apply"]))
    try:
        current = read_if_unchanged(path, plan.original_sha256, "preview")
        backup = backup_once(path, current)
        written = atomic_write_bytes(path, plan.new_bytes, force=force)
    except WriteError as exc:
        raise ApplyError(str(exc)) from None
    verb = "inserted" if plan.action == "insert" else "replaced"
    via = f" (in {written}, the file the link {path} points to; the link is kept)" if written != path else ""
    return ApplyResult(True, str(path), str(backup) if backup else None,
                       f"{verb} the metadata at line {plan.line_no}{via}; header {plan.header_before} -> "
                       f"{plan.header_after}")
