"""``run --from-ncnn DIR``: start from existing pnnx output instead of a checkpoint.

DIR holds the three nets' ncnn files as pnnx wrote them, under pnnx's default names
(``{encoder,decoder,joiner}_jit_trace_pnnx.ncnn.{param,bin}``, what ``pnnx encoder_jit_trace-pnnx.pt``
writes) or the explicit ones (``*_jit_trace-pnnx.ncnn.*``), and ``tokens.txt``; optionally pnnx's own
graph of the encoder (``encoder.pnnx.param`` / ``encoder_jit_trace[_-]pnnx.pnnx.param``), reference
outputs ``encoder-reference.npz`` / ``decoder-joiner-reference.npz``, and the traced
``*_jit_trace-pnnx.pt`` (in DIR, ``DIR/exp`` or ``DIR/traced``). pnnx's other files (``*.pnnx.bin``,
``*.pnnx.onnx``, ``*_pnnx.py``, ``*_ncnn.py``) are ignored. The hyperparameters come from the encoder's
graph where it shows them (core.model.graph_hparams). The plan: import (copy into OUT, with doctor-style checks;
DIR is never written) -> rewrite -> metadata -> validate -> summary. The originals are only read.
"""
from __future__ import annotations

import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.common.problems import Problem, ProblemKind
from core.model.architectures import ResolvedValues, get_arch
from core.model.graph_hparams import GraphReading, read_graph, reconcile
from core.model.metadata import runtime_layer_check
from core.model.tokens import read_tokens
from core.ncnn.param import load_param
from core.pipeline.layout import NETS, Layout, PlanError, _check_out_dir, _versions, ncnn_name, pt_name
from core.pipeline.rewrite_step import make_rewrite, rewritten
from core.pipeline.runner import Plan, Step, StepContext, StepError
from core.pipeline.steps import make_finalize_encoder, make_summary

LFS_POINTER = b"version https://git-lfs"
REFERENCE_FILES = ("encoder-reference.npz", "decoder-joiner-reference.npz")
NCNN_NAMES = ("{net}_jit_trace-pnnx.ncnn.{ext}", "{net}_jit_trace_pnnx.ncnn.{ext}")  # explicit, pnnx's default
PNNX_GRAPH_NAMES = ("encoder.pnnx.param", "encoder_jit_trace-pnnx.pnnx.param", "encoder_jit_trace_pnnx.pnnx.param")
TRACED_SUBDIRS = (".", "exp", "traced")


@dataclass
class SourceFiles:
    """Where DIR's files are, whichever of pnnx's naming schemes wrote them."""

    src: Path
    ncnn: dict[tuple[str, str], Path] = field(default_factory=dict)  # (net, ext) -> file
    pnnx_graph: Path | None = None  # pnnx's own graph of the encoder
    traced_dir: Path | None = None  # the directory with encoder_jit_trace-pnnx.pt
    problems: list[str] = field(default_factory=list)

    def encoder_param(self) -> Path:
        return self.ncnn.get(("encoder", "param"), self.src / ncnn_name("encoder", "param"))


def _ignored(name: str) -> bool:
    """pnnx's by-products a user's folder has next to the ncnn files."""
    return name.endswith((".pnnx.bin", ".pnnx.onnx", "_pnnx.py", "_ncnn.py"))


def _near_misses(folder: Path, net: str, suffix: str) -> list[str]:
    try:
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [n for n in names if net in n and n.endswith(suffix) and not _ignored(n)
            and not (suffix == ".param" and n.endswith(".pnnx.param"))]  # pnnx's graph is not an ncnn param


FROM_NCNN = "--from-ncnn"  # the key of the problems with DIR


def _bad(fact: str) -> Problem:
    return Problem(ProblemKind.BAD_INPUT, fact, key=FROM_NCNN)


def locate_source(src: Path) -> SourceFiles:
    """Find the ncnn files, pnnx's graph and the traced encoder; name what was looked for and found instead."""
    files = SourceFiles(src)
    if not src.is_dir():
        files.problems.append(_bad(f"{src} is not a directory"))
        return files
    for net in NETS:
        for ext in ("param", "bin"):
            names = [n.format(net=net, ext=ext) for n in NCNN_NAMES]
            hit = next((src / n for n in names if (src / n).is_file()), None)
            if hit is not None:
                files.ncnn[(net, ext)] = hit
                continue
            near = [n for n in _near_misses(src, net, f".{ext}") if n not in names]
            found = f"; found instead: {', '.join(near)}" if near else ""
            files.problems.append(_bad(f"{names[0]} not found in {src} (also looked for {names[1]}){found}"))
    subdirs = [src / d for d in TRACED_SUBDIRS]
    for folder in subdirs:
        hit = next((folder / n for n in PNNX_GRAPH_NAMES if (folder / n).is_file()), None)
        if hit is None and folder.is_dir():
            hit = next((p for p in sorted(folder.glob("encoder*_pnnx.pnnx.param")) if p.is_file()), None)
        if hit is not None:
            files.pnnx_graph = hit.resolve()
            break
    for folder in subdirs:
        if (folder / pt_name("encoder")).is_file():
            files.traced_dir = folder.resolve()
            break
    return files


def traced_near_misses(src: Path) -> list[str]:
    """Traced-looking files that are not named encoder_jit_trace-pnnx.pt (for "not found" messages)."""
    out = []
    for d in TRACED_SUBDIRS:
        folder = src / d
        if folder.is_dir():
            out += [str((folder / n).relative_to(src)) for n in _near_misses(folder, "encoder", ".pt")
                    if n != pt_name("encoder")]
    return out


@dataclass
class FromNcnnRun:
    plan: Plan
    resolved: ResolvedValues
    source: Path
    reference_dir: Path | None
    traced_dir: Path | None
    warnings: list[str] = field(default_factory=list)
    script: str = ""
    config: object = None  # the WizardConfig it came from (for wizard.toml), when there is one
    graph: GraphReading | None = None  # what the encoder's graph files revealed (values marked "graph")

    @property
    def out_dir(self) -> Path:
        return self.plan.out_dir


def source_problems(src: Path, files: SourceFiles | None = None) -> list[Problem]:
    """What makes DIR unusable as pnnx output (missing files, git-lfs pointers, unparsable params)."""
    files = files or locate_source(src)
    problems = list(files.problems)
    if not src.is_dir():
        return problems
    for (net, ext), p in files.ncnn.items():
        if ext == "bin":
            with open(p, "rb") as fh:
                if fh.read(len(LFS_POINTER)) == LFS_POINTER:
                    problems.append(_bad(f"{p.name} is a git-lfs pointer, not the weights; run 'git lfs pull' first"))
        else:
            parsed = load_param(p)
            if not parsed.ok:
                problems.append(_bad(parsed.describe()))
    if not (src / "tokens.txt").is_file():
        near = _near_misses(src, "tokens", ".txt")
        problems.append(_bad(f"tokens.txt not found in {src}" + (f"; found instead: {', '.join(near)}"
                                                                 if near else "")))
    return problems


def make_import(layout, src: Path, encoder: bool = True, files: SourceFiles | None = None) -> Step:
    """Copy DIR's files into OUT (encoder raw into work/pnnx, decoder/joiner final) and check them.

    ``encoder=False``: the encoder is converted again from its traced .pt instead (see make_reconvert).
    The copies get the explicit names whichever naming scheme DIR uses."""
    files = files or locate_source(src)

    def found(net: str, ext: str) -> Path:
        return files.ncnn.get((net, ext), src / ncnn_name(net, ext))
    copies = [(found("encoder", e), layout.raw("encoder", e)) for e in ("param", "bin") if encoder]
    if encoder and files.pnnx_graph is not None:
        copies.append((files.pnnx_graph, layout.pnnx_dir / "encoder.pnnx.param"))
    copies += [(found(n, e), layout.final(n, e)) for n in ("decoder", "joiner") for e in ("param", "bin")]
    copies.append((src / "tokens.txt", layout.tokens))

    def run(ctx: StepContext) -> None:
        layout.pnnx_dir.mkdir(parents=True, exist_ok=True)
        for a, b in copies:
            if b.exists() or b.is_symlink():
                b.unlink()
            shutil.copyfile(a, b)  # a copy, never a link: later steps must not be able to reach the originals
            ctx.log(f"copied {a} -> {b}")
        table = read_tokens(layout.tokens)
        for p in table.problems:
            ctx.log(f"{p.severity}: tokens.txt: {p}")
        errors = [str(p) for p in table.problems if p.severity == "error"]
        for net in ("decoder", "joiner"):
            model = load_param(layout.final(net, "param")).model
            check = runtime_layer_check(model, encoder=False)
            ctx.log(("[✓] " if check.ok else "[✗] ") + f"{net}: {check.message}")
            if not check.ok:
                errors.append(f"{net}: {check.message}")
        if encoder:
            enc = load_param(layout.raw("encoder", "param")).model
            ctx.log(f"encoder: {enc.layer_count} layers, {enc.blob_count} blobs, inputs {', '.join(enc.input_names)}")
        if errors:
            raise StepError("; ".join(errors), hint="fix the input directory (or re-run pnnx) first")

    script = [f"mkdir -p {shlex.quote(str(layout.pnnx_dir))}"]
    script += [f"cp {shlex.quote(str(a))} {shlex.quote(str(b))}" for a, b in copies]
    return Step("import", "Copy the pnnx output into the output directory", func=run,
                inputs=[a for a, _ in copies], outputs=[b for _, b in copies], script=script,
                describe=f"copy the pnnx output of {src} into {layout.out} (the originals are only read)")


def make_reconvert(layout, traced_pt: Path, pnnx: Path) -> Step:
    """pnnx (checked, with the fallback) on the traced encoder, when DIR's encoder shows pnnx's mix-up."""
    from core.pipeline.pnnx_step import pnnx_step
    return pnnx_step("pnnx-encoder", "Convert the traced encoder again with pnnx (fp16)", pnnx, traced_pt,
                     layout.pnnx_dir / "encoder", layout.raw("encoder", "param"), layout.raw("encoder", "bin"), fp16=True)


def _validate_step(layout, arch: str, reference_dir: Path | None, traced_dir: Path | None, wavs,
                   int8: bool = False) -> Step:
    argv = [sys.executable, "-m", "core.pipeline.from_ncnn", str(layout.out), "--arch", arch,
            "--json-out", str(layout.out / "validation.json")]
    if int8:
        argv.append("--int8")
    if reference_dir is not None:
        argv += ["--reference-dir", str(reference_dir)]
    if traced_dir is not None:
        argv += ["--traced-dir", str(traced_dir)]
    for w in wavs:
        argv += ["--wav", str(w)]
    inputs = [layout.final(n, e) for n in NETS for e in ("param", "bin")] + [layout.tokens]
    if int8:
        from core.pipeline.layout import int8_file
        inputs += [int8_file(layout, n, e) for n in ("encoder", "joiner") for e in ("param", "bin")]
    return Step("validate", "Validate: reference outputs vs ncnn, and decode in sherpa-ncnn", argv=argv,
                env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])}, inputs=inputs,
                outputs=[layout.out / "validation.json"], script=[shlex.join(argv)])


def _wrong_arch(arch: str, encoder_param: Path | None) -> str | None:
    """A sentence when the encoder graph is plainly another architecture than --arch says (else None)."""
    if encoder_param is None:
        return None
    from core.model.arch_guess import guess_arch
    model = load_param(encoder_param).model
    if model is None:
        return None
    guess, why = guess_arch(model)
    if guess is None or guess == arch:
        return None
    title = get_arch(guess).title
    article = "an" if title.startswith(("A", "E", "I", "O", "U", "LSTM")) else "a"
    return (f"--arch {arch}: {encoder_param.name} is {article} {title} encoder ({why}); run again with "
            f"--arch {guess}")


def build_from_ncnn_plan(src: str | Path, arch: str, flags: dict[str, object], *, out_dir: str | Path,
                         reference_dir: str | Path | None = None, traced_dir: str | Path | None = None,
                         wavs=(), check_out_dir: bool = True, int8=None) -> FromNcnnRun:
    """Check DIR and the flags and build the plan; raises PlanError naming every problem.

    ``int8``: a WizardConfig whose ``calibration`` (wavs, backend) and ``tools`` say how to make an int8
    set too. The files in DIR are used as they are (pnnx's fp16 or fp32 weights; ncnn reads both as float).
    """
    src = Path(src).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    spec = get_arch(arch)
    files = locate_source(src)
    problems = source_problems(src, files)
    warnings: list[str] = []
    if out == src or src in out.parents:
        problems.append(f"--out: {out} is inside the input directory; choose a directory outside {src}")
    if check_out_dir:
        problems += _check_out_dir(out)
    ref = Path(reference_dir).expanduser().resolve() if reference_dir else None
    if ref is None and src.is_dir() and any((src / f).is_file() for f in REFERENCE_FILES):
        ref = src
    if ref is not None and not any((ref / f).is_file() for f in REFERENCE_FILES):
        problems.append(f"--reference-dir: {ref} has neither of {', '.join(REFERENCE_FILES)}")
    traced = Path(traced_dir).expanduser().resolve() if traced_dir else files.traced_dir
    if traced is not None and not (traced / pt_name("encoder")).is_file():
        near = [n for n in _near_misses(traced, "encoder", ".pt")] if traced.is_dir() else []
        problems.append(f"--traced-dir: {traced / pt_name('encoder')} not found"
                        + (f"; found instead: {', '.join(near)}" if near else ""))
    elif traced is None and src.is_dir() and traced_near_misses(src):
        warnings.append(f"no traced {pt_name('encoder')} in {src}, exp/ or traced/ (found "
                        f"{', '.join(traced_near_misses(src))}; rename it or give --traced-dir)")
    reading = read_graph(spec, ncnn_param=files.ncnn.get(("encoder", "param")), pnnx_param=files.pnnx_graph,
                         traced_pt=traced / pt_name("encoder") if traced is not None else None)
    resolved = reconcile(spec, flags, reading)
    unseen = ("encoder", "param") not in files.ncnn  # "not found" says it all; skip "the graph does not show"
    wrong_arch = _wrong_arch(spec.name, files.ncnn.get(("encoder", "param")))
    problems = ([wrong_arch] if wrong_arch else
                [f"hyperparameters: {p.message}" for p in resolved.errors if not (unseen and p.unseen)]) + problems
    if wavs:
        from core.pipeline.plan_checks import validation_wav_problems
        problems += validation_wav_problems([str(w) for w in wavs], key="--wav")
    warnings = [p.message for p in resolved.warnings] + reading.warnings + warnings
    reconvert = None
    graph = files.pnnx_graph
    if graph is not None:
        from core.pnnx.graph import CONVERT_HINT, describe, shape_mismatches
        bad = shape_mismatches(graph)
        if bad and traced is not None:
            from core.pnnx.tools import find_pnnx
            pnnx = find_pnnx()
            problems += [f"pnnx: {p}" for p in pnnx.problems]
            reconvert = (traced / pt_name("encoder"), pnnx.path)
            warnings.append(describe(graph, bad) + f"; the traced encoder {reconvert[0]} is converted again (pnnx, "
                            "then the fallback pnnx on a copy without traced input shapes if it is still wrong)")
        elif bad:
            problems.append(Problem(ProblemKind.NEEDS_TRACED, describe(graph, bad), key=FROM_NCNN,
                                    how=f"; give the traced encoder (--traced-dir D with {pt_name('encoder')}) and the "
                                        f"wizard converts it again, or {CONVERT_HINT}"))
    if ref is None and traced is None:
        warnings.append("no reference outputs (*-reference.npz) or traced *.pt files: only the decode in "
                        "sherpa-ncnn is checked, not the numbers")
    backend = None
    if int8 is not None:
        from core.pipeline.int8_steps import int8_readiness
        int8_problems, int8_warnings, backend = int8_readiness(int8, resolved)
        problems += int8_problems
        warnings += int8_warnings
    if problems:
        raise PlanError(problems)
    layout = Layout(out)
    steps = [make_import(layout, src, encoder=reconvert is None, files=files)]
    if reconvert is not None:
        steps.append(make_reconvert(layout, *reconvert))
    steps += [make_rewrite(layout, spec.name),
             make_finalize_encoder(layout, spec, resolved, rewritten(layout, "param"), rewritten(layout, "bin"),
                                   traced_pt=traced / pt_name("encoder") if traced is not None else None)]
    if backend is not None:
        from core.int8.calibration import ModelFiles
        from core.pipeline.int8_steps import calibration_steps
        files = ModelFiles(*(layout.final(n, e) for n in NETS for e in ("param", "bin")))
        steps += calibration_steps(int8, layout, backend, warnings, files)
    steps.append(_validate_step(layout, spec.name, ref, traced, [Path(w) for w in wavs], int8=backend is not None))
    from core.pipeline.ship_steps import card_info, ship_steps  # test wavs, bench.py, speed, int8 report, model card
    steps += ship_steps(layout, card_info(spec, resolved, f"pnnx output ({src.name})", backend is not None), wavs,
                        int8=backend is not None, int8_files=files if backend is not None else None)
    steps.append(make_summary(layout, None))
    manifest = {
        "tool": "sherpa-ncnn-wizard", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "from_ncnn": str(src), "arch": spec.name,
        "hyperparameters": {spec.param(n).flag: spec.param(n).format(v) for n, v in resolved.values.items()},
        "hyperparameter_sources": {spec.param(n).flag: s for n, s in resolved.sources.items()},
        "hyperparameters_read_from": {spec.param(n).flag: w for n, w in reading.where.items()},
        "graph_files": [str(p) for p in reading.files],
        "reference_dir": str(ref) if ref else None, "traced_dir": str(traced) if traced else None,
        "tools": {"versions": _versions(), **({"int8": backend.as_dict()} if backend else {})},
        "warnings": warnings,
    }
    run = FromNcnnRun(Plan(steps, out, manifest), resolved, src, ref, traced, warnings, graph=reading)
    lines = ["#!/usr/bin/env bash", f"# Written by sherpa-ncnn-wizard: {spec.title} from the pnnx output in {src}.",
             "set -euo pipefail", ""]
    for i, step in enumerate(steps, start=1):
        lines.append(f"# {i}. {step.title}")
        lines += step.script or [f"# ({step.describe})"]
        lines.append("")
    run.script = "\n".join(lines)
    return run


def build_from_ncnn_config(config, *, out_dir=None, check_out_dir: bool = True) -> FromNcnnRun:
    """The same plan from a WizardConfig whose ``files.from_ncnn`` names the directory (wizard and --config)."""
    run = build_from_ncnn_plan(config.files.from_ncnn, config.arch, config.hyperparameter_flags(),
                               out_dir=out_dir or config.output.dir, wavs=config.validation.wavs,
                               traced_dir=config.files.traced_dir or None,
                               check_out_dir=check_out_dir, int8=config if config.output.int8 else None)
    run.config = config
    return run


# -- the validate step's process ------------------------------------------------------

def validate_from_ncnn(out: Path, arch: str | None, reference_dir: Path | None, traced_dir: Path | None,
                       wavs: list[Path], print_fn=print, int8: bool = False) -> dict:
    import time
    from dataclasses import asdict

    from core.validation import validate as v
    from core.validation.agreement import check_agreement
    from core.validation.decoding import decode, report_decode
    from core.validation.validate_int8 import validate_int8
    report = v.new_report()
    if traced_dir is not None and reference_dir is None:  # the reference npz, when there is one, is the spec
        sub = v.validate(out, arch, traced_dir, wavs, {}, numeric=True, run_decode=False, print_fn=print_fn)
        report["numeric"] += sub["numeric"]
        report["notes"] += sub["notes"]
        report["timings"].update(sub["timings"])
        report["ok"] &= sub["ok"]
    elif reference_dir is not None:
        from core.validation.reference import compare_directory
        began = time.perf_counter()
        try:
            results = compare_directory(out, reference_dir, arch=arch)
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            results = []
            report["ok"] = False
            report["numeric"].append({"net": "all", "error": str(exc), "ok": False})
            print_fn(f"-[✗] numeric check failed: {exc}")
        report["timings"]["numeric (reference npz)"] = round(time.perf_counter() - began, 3)
        for r in results:
            print_fn(r.line())
            report["numeric"].append(asdict(r))
            report["ok"] &= r.ok
    else:
        report["notes"].append("numeric check skipped: no reference outputs or traced modules")
        print_fn("numeric check skipped: no reference outputs or traced modules")
    began = time.perf_counter()
    decoded = decode(out, wavs, {})
    report["timings"]["sherpa-ncnn fp16 decode"] = round(time.perf_counter() - began, 3)
    report_decode(decoded, report, print_fn,
                  describe=lambda item: f"loaded and decoded ({len(item['tokens'])} tokens): {item['text'][:80]!r}")
    # torch vs sherpa-ncnn tokens, when the traced modules are there (pnnx's graph or the npz give state shapes)
    near = tuple(d for d in (reference_dir, out / "work" / "pnnx") if d is not None)
    if traced_dir is not None:
        check_agreement(out, arch, traced_dir, report["decode"], report, print_fn, near)
    if int8:  # compared with the float set it was made from: the files in OUT
        validate_int8(out, out, wavs, {}, report, print_fn=print_fn, traced_dir=traced_dir, arch=arch,
                      extra_dirs=near)
    return report


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m core.pipeline.from_ncnn", description=validate_from_ncnn.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--arch", default=None)
    p.add_argument("--reference-dir", type=Path, default=None)
    p.add_argument("--traced-dir", type=Path, default=None)
    p.add_argument("--wav", action="append", type=Path, default=[])
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--int8", action="store_true", help="also check the *.int8.* encoder and joiner")
    a = p.parse_args(argv)
    report = validate_from_ncnn(a.out, a.arch, a.reference_dir, a.traced_dir, a.wav,
                                print_fn=lambda s: print(s, flush=True), int8=a.int8)
    from core.validation.validate import finish_report
    return finish_report(report, a.json_out)


if __name__ == "__main__":
    import faulthandler
    faulthandler.enable()  # torch and ncnn run the user's model in this process: a crash says where, in the log
    sys.exit(main())
