"""Diagnose an existing sherpa-ncnn model: an encoder .param or a model directory.

Every finding names the file (and line where there is one) and says what
sherpa-ncnn would do with the problem and how to fix it. Nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.model.architectures import BY_MODEL_TYPE, ArchSpec, get_arch
from core.model.metadata import META_NAME, META_TYPE, RESERVED_KEYS, graph_checks, runtime_layer_check
from core.model.tokens import read_tokens
from core.ncnn.param import ParamFile, load_param

LFS_POINTER = b"version https://git-lfs"


class UnusableInput(Exception):
    """The path cannot be diagnosed at all (exit code 2)."""


@dataclass(frozen=True)
class Finding:
    severity: str  # "error", "warning" or "ok"
    file: str
    message: str
    line: int | None = None

    def as_dict(self) -> dict:
        return {"severity": self.severity, "file": self.file, "line": self.line, "message": self.message}

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass
class DoctorReport:
    path: str
    files: dict[str, str] = field(default_factory=dict)  # role -> path
    arch: str | None = None
    metadata: dict[int, object] | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "healthy": self.healthy,
            "arch": self.arch,
            "metadata": None if self.metadata is None else {str(k): _jsonable(v) for k, v in self.metadata.items()},
            "files": self.files,
            "findings": [f.as_dict() for f in self.findings],
            "errors": sum(f.severity == "error" for f in self.findings),
            "warnings": sum(f.severity == "warning" for f in self.findings),
        }


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def diagnose(path: str | Path, run: bool = False, log=None) -> DoctorReport:
    """Check ``path`` (an encoder .param or a model directory); ``run``: also run each net in ncnn, in child
    processes, naming the first layer that crashes (core/ncnn/child.py)."""
    path = Path(path)
    if not path.exists():
        raise UnusableInput(f"{path}: no such file or directory")
    report = DoctorReport(str(path))
    if path.is_dir():
        files = _find_files(path)
        if not any(role.startswith("encoder") for role in files):
            raise UnusableInput(f"{path}: no encoder*.param here; point doctor at an encoder .param or at the "
                                "directory holding encoder/decoder/joiner .param files and tokens.txt")
    else:
        if path.suffix != ".param":
            raise UnusableInput(f"{path}: not a .param file; give an encoder .param or a model directory")
        parsed = load_param(path)
        if parsed.model is None:  # empty, unreadable, not text, not an ncnn param: nothing to diagnose
            raise UnusableInput(parsed.describe())
        files = {"encoder": path}
    report.files = {role: str(p) for role, p in files.items()}
    vocab_from_joiner = None
    for role, p in files.items():
        if role.startswith("encoder"):
            _check_encoder(p, report)
        elif role.startswith("decoder"):
            _check_side_net(p, report, inputs=("in0",), name="decoder")
        elif role.startswith("joiner"):
            model = _check_side_net(p, report, inputs=("in0", "in1"), name="joiner")
            if model is not None:
                vocab_from_joiner = _joiner_vocab(model)
    graph = (path if path.is_dir() else path.parent) / "encoder.pnnx.param"
    if graph.is_file():
        from core.pnnx.graph import CONVERT_HINT, describe, shape_mismatches
        bad = shape_mismatches(graph)
        report.findings.append(Finding("error", str(graph), describe(None, bad) + "; " + CONVERT_HINT, bad[0].line)
                               if bad else Finding("ok", str(graph), "pnnx's own graph is consistent (no element-wise "
                                                                      "operator changes shape)"))
    if run:
        for role, p in files.items():
            if role != "tokens":
                report.findings.append(run_finding(p, log=log))
    if "tokens" in files:
        _check_tokens(files["tokens"], report, vocab_from_joiner)
    elif path.is_dir():
        report.findings.append(Finding("error", str(path), "no tokens.txt in this directory; sherpa-ncnn needs it "
                                                            "(make it from bpe.model, or copy it from the recipe's data/lang_*)"))
    return report


def run_finding(param: Path, log=None) -> Finding:
    """Run ``param`` with its .bin in ncnn, in child processes; a crash names the first layer that crashes."""
    from core.validation.crash import locate_crash
    binary = param.with_name(param.name[:-len(".param")] + ".bin")
    if not binary.is_file():
        return Finding("error", str(param), f"not run: the weights file {binary.name} is missing")
    report = locate_crash(param, binary, log=log)
    if report.ran:
        return Finding("ok", str(param), f"ncnn ran all {report.layers} layers in a child process (python ncnn, "
                                         "one chunk of the inputs sherpa-ncnn feeds)")
    if report.index is not None:
        return Finding("error", str(param), report.sentence(), report.line)
    if report.load_error:
        return Finding("error", str(param), report.sentence())
    return Finding("warning", str(param), "not run: " + "; ".join(report.notes or ["the inputs are unknown"]))


def _find_files(directory: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for net in ("encoder", "decoder", "joiner"):
        candidates = sorted(directory.glob(f"{net}*.param"))
        for c in candidates:
            role = f"{net}-int8" if ".int8." in c.name else net
            if role not in files or c.name == f"{net}_jit_trace-pnnx.ncnn.param":
                files[role] = c
    if (directory / "tokens.txt").exists():
        files["tokens"] = directory / "tokens.txt"
    return files


def _load(p: Path, report: DoctorReport) -> ParamFile | None:
    result = load_param(p)
    for issue in result.issues:
        report.findings.append(Finding(issue.severity, str(p), issue.message, issue.line))
    _check_bin(p, report)
    if result.model is not None:
        _check_requirements(p, result.model, report)
    return result.model


def _check_requirements(p: Path, model: ParamFile, report: DoctorReport) -> None:
    """Every layer against what its ncnn implementation needs (core/ncnn/requirements.py)."""
    from core.ncnn.requirements import check_layers
    problems = check_layers(model)
    for prob in problems:
        report.findings.append(Finding("error", str(p), f"layer {prob.name!r} ({prob.type}): {prob.message}",
                                       prob.line))
    if not problems:
        report.findings.append(Finding("ok", str(p), f"every layer has what ncnn needs to run it "
                                                     f"({len(model.layers)} layers)"))


def _check_bin(param: Path, report: DoctorReport) -> None:
    name = param.name[:-len(".param")] + ".bin"
    binary = param.with_name(name)
    if not binary.exists():
        report.findings.append(Finding("error", str(param), f"the weights file {name} is missing next to it"))
        return
    if not binary.is_file():
        report.findings.append(Finding("error", str(param), f"{name} next to it is a directory or a device, not the "
                                                             "weights file"))
        return
    with open(binary, "rb") as fh:
        head = fh.read(64)
    if head.startswith(LFS_POINTER):
        report.findings.append(Finding("error", str(binary), "is a git-lfs pointer, not the weights; run "
                                                              "'git lfs pull' for it"))
    elif not head:
        report.findings.append(Finding("error", str(binary), "is empty"))


def _check_encoder(p: Path, report: DoctorReport) -> None:
    model = _load(p, report)
    if model is None:
        return
    f = str(p)
    metas = [layer for layer in model.layers if layer.type == META_TYPE]
    near = [layer for layer in model.layers if layer.type != META_TYPE
            and layer.type.lower() in ("sherapmetadata", "sherpa_metadata", "sherpametadata")]
    for layer in near:
        report.findings.append(Finding("error", f, f"layer type {layer.type!r} is not {META_TYPE!r}; sherpa-ncnn "
                                                   "does not recognise it", layer.line))
    if not metas:
        guess = _guess_arch(model)
        cmd = f"sherpa-ncnn-wizard meta {p} --arch {guess.name if guess else 'ARCH'} [your export flags] --apply"
        report.findings.append(Finding("error", f, "no SherpaMetaData layer: sherpa-ncnn prints 'Unable to create a "
                                                   f"model' and then segfaults. Add it with: {cmd}"))
        if guess:
            report.arch = guess.name
        report.findings.append(runtime_finding(model, f, encoder=True))
        return
    if len(metas) > 1:
        report.findings.append(Finding("error", f, f"{len(metas)} SherpaMetaData layers (lines "
                                                   f"{', '.join(str(m.line) for m in metas)}); keep exactly one", metas[1].line))
    layer = metas[0]
    if layer.name != META_NAME:
        report.findings.append(Finding("error", f, f"the metadata layer is named {layer.name!r}; sherpa-ncnn only looks "
                                                   f"for {META_NAME!r}, so it treats the model as having none", layer.line))
    if layer.bottoms or layer.tops:
        report.findings.append(Finding("error", f, "the metadata layer must have 0 bottoms and 0 tops", layer.line))
    meta = {}
    for prm in layer.params:
        if prm.id in RESERVED_KEYS:
            if not (prm.kind == "array" and prm.value == ()):
                report.findings.append(Finding("warning", f, f"key {prm.key} is reserved by ncnn for every layer; "
                                                             "sherpa-ncnn ignores it", layer.line))
            continue
        meta[prm.id] = prm.value
        if prm.id < 24 and (prm.kind == "float" or (prm.kind == "array" and any(isinstance(x, float) for x in prm.value))):
            report.findings.append(Finding("error", f, f"key {prm.key}={prm.raw} is written as a float; sherpa-ncnn reads "
                                                       "keys 0-23 as integers and gets the float's bit pattern. "
                                                       "Write plain integers", layer.line))
        if prm.kind == "array" and not prm.old_style:
            report.findings.append(Finding("warning", f, f"key {prm.key} uses the newer array syntax; write it as "
                                                         f"{-23300 - prm.id}=len,... for older ncnn builds", layer.line))
        if prm.kind == "string":
            report.findings.append(Finding("error", f, f"key {prm.key} holds a string; sherpa-ncnn reads integers only",
                                           layer.line))
    report.metadata = meta
    arch = BY_MODEL_TYPE.get(meta.get(0))
    if arch is None:
        report.findings.append(Finding("error", f, f"type key 0={meta.get(0, 'missing')} is not 1 (ConvEmformer), "
                                                   "2 (Zipformer) or 3 (LSTM): sherpa-ncnn prints 'Unable to create a "
                                                   "model' and segfaults", layer.line))
        report.findings.append(runtime_finding(model, f, encoder=True))
        return
    report.arch = arch.name
    ok_keys = _check_keys(arch, meta, f, layer.line, report)
    values = arch.values_from_metadata(meta) if ok_keys else {}
    bounds = arch.out_of_bounds(values)
    for problem in bounds:
        report.findings.append(Finding("error", f, f"metadata: {problem}", layer.line))
    if ok_keys and not bounds:
        for check in graph_checks(model, arch, values):
            report.findings.append(Finding("ok" if check.ok else "error", f, check.message))
    else:
        report.findings.append(runtime_finding(model, f, encoder=True))


def runtime_finding(model: ParamFile, f: str, *, encoder: bool) -> Finding:
    check = runtime_layer_check(model, encoder=encoder)
    return Finding("ok" if check.ok else "error", f, check.message)


def _check_keys(arch: ArchSpec, meta: dict, f: str, line: int, report: DoctorReport) -> bool:
    """The architecture's own key checks, as findings on the metadata line; False when the graph checks cannot run."""
    return arch.check_metadata_keys(
        meta, lambda msg: report.findings.append(Finding("error", f, msg, line)),
        lambda msg: report.findings.append(Finding("warning", f, msg, line)))


def _guess_arch(model: ParamFile) -> ArchSpec | None:
    from core.model.arch_guess import guess_arch
    name = guess_arch(model)[0]
    return None if name is None else get_arch(name)


def _check_side_net(p: Path, report: DoctorReport, inputs: tuple[str, ...], name: str) -> ParamFile | None:
    model = _load(p, report)
    if model is None:
        return None
    f = str(p)
    have = model.input_names
    if list(have) != list(inputs):
        report.findings.append(Finding("error", f, f"the {name} has inputs {', '.join(have) or 'none'}; sherpa-ncnn "
                                                   f"feeds {', '.join(inputs)}"))
    if "out0" not in model.output_names:
        report.findings.append(Finding("error", f, f"the {name} has no output blob out0, which sherpa-ncnn reads"))
    report.findings.append(runtime_finding(model, f, encoder=False))
    return model


def _joiner_vocab(model: ParamFile) -> int | None:
    for layer in model.layers:
        if "out0" in layer.tops and layer.type in ("InnerProduct", "Gemm"):
            key = 0 if layer.type == "InnerProduct" else 8  # Gemm: 8=constantN
            v = layer.get(key)
            return v if isinstance(v, int) else None
    return None


def _check_tokens(p: Path, report: DoctorReport, vocab: int | None) -> None:
    table = read_tokens(p)
    for prob in table.problems:
        report.findings.append(Finding(prob.severity, str(p), prob.message, prob.line))
    if vocab is not None and table.size and vocab != table.size:
        report.findings.append(Finding("error", str(p), f"tokens.txt has {table.size} tokens but the joiner outputs "
                                                        f"{vocab} logits; they come from different models"))
    elif table.size and not table.problems:
        report.findings.append(Finding("ok", str(p), f"{table.size} tokens, blank <blk> = 0"))
