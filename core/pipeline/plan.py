"""The plan: which steps run, with which exact commands, inputs and outputs, for a config.

Everything is decided here before anything runs, so ``--dry-run``, the TUI's
review screen and ``export.sh`` all show exactly what the runner will do.
The user's files are only read: checkpoints are linked into a work directory
under the output directory and the export writes there.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.model.architectures import ResolvedValues, get_arch, resolve
from core.pipeline.config import WizardConfig
from core.pipeline.int8_steps import calibration_steps, int8_readiness
from core.pipeline.layout import NETS, Layout, PlanError, _check_out_dir, _versions
from core.pipeline.runner import Plan, Step
from core.pipeline.steps import make_finalize_encoder, make_prepare, make_summary, make_tokens
from core.pnnx.tools import PnnxInfo, find_pnnx


@dataclass
class PlannedRun:
    plan: Plan
    config: WizardConfig
    resolved: ResolvedValues
    pnnx: PnnxInfo
    warnings: list[str] = field(default_factory=list)
    script: str = ""

    @property
    def out_dir(self) -> Path:
        return self.plan.out_dir


def find_export_script(recipe: Path) -> Path:
    return recipe / "export-for-ncnn.py" if recipe.is_dir() or recipe.suffix != ".py" else recipe


def find_icefall_root(script: Path) -> Path | None:
    """The directory above ``egs/`` (what icefall's docs put on PYTHONPATH), as the user wrote the path.

    Symlinks are followed only when the path as given has no ``egs/`` (e.g. a
    recipe script linked from elsewhere).
    """
    for candidate in (script.absolute(), script.resolve()):
        for parent in candidate.parents:
            if parent.name == "egs":
                return parent.parent
    return None


def tokens_flag(script: Path) -> str:
    """How the script takes the vocabulary: ``--tokens`` (icefall after 2023-08), ``--bpe-model`` (older) or
    ``--lang`` (CSJ), read from its parser (core.pipeline.recipe_script)."""
    from core.pipeline.recipe_script import read_script_args
    return read_script_args(script).token_flag


def build_plan(config: WizardConfig, *, out_dir: str | Path | None = None, check_out_dir: bool = True) -> PlannedRun:
    """Check the config and build the plan; raises PlanError naming every problem found.

    A config with ``files.from_ncnn`` starts from existing pnnx output (core.pipeline.from_ncnn) instead.
    """
    if config.files.from_ncnn:
        from core.pipeline.from_ncnn import build_from_ncnn_config
        return build_from_ncnn_config(config, out_dir=out_dir, check_out_dir=check_out_dir)
    problems: list[str] = []
    warnings: list[str] = []
    spec = get_arch(config.arch)
    resolved = resolve(spec, config.hyperparameter_flags())
    problems += [f"hyperparameters: {p.message}" for p in resolved.errors]
    warnings += [p.message for p in resolved.warnings]
    f = config.files
    out = Path(out_dir or config.output.dir).expanduser().resolve()
    layout = Layout(out)

    if not f.recipe:
        problems.append("files.recipe: not set; give the icefall recipe directory (or its export-for-ncnn.py), "
                        f"e.g. icefall/{spec.recipe}")
        script = Path("export-for-ncnn.py")
    else:
        script = find_export_script(Path(f.recipe).expanduser())
        if not script.is_file():
            problems.append(f"files.recipe: {script} not found; point it at the recipe directory that holds "
                            "export-for-ncnn.py")
    root = Path(f.icefall_root).expanduser() if f.icefall_root else find_icefall_root(script)
    if f.icefall_root and not root.is_dir():
        problems.append(f"files.icefall_root: {root} is not a directory")
    if root is None:
        warnings.append("files.icefall_root: the recipe is not under an egs/ directory; PYTHONPATH is not extended")

    checkpoints: list[Path] = []  # linked into the work dir
    loaded: list[Path] = []  # what icefall's export will unpickle
    needs_model_avg = False
    if f.checkpoint:
        ckpt = Path(f.checkpoint).expanduser()
        if not ckpt.is_file():
            problems.append(f"files.checkpoint: {ckpt} not found")
        checkpoints = loaded = [ckpt] if ckpt.is_file() else []
    elif f.exp_dir:
        exp = Path(f.exp_dir).expanduser()
        if not exp.is_dir():
            problems.append(f"files.exp_dir: {exp} is not a directory")
        else:
            checkpoints = sorted(exp.glob("epoch-*.pt")) + sorted(exp.glob("checkpoint-*.pt"))
            if not checkpoints:
                problems.append(f"files.exp_dir: no epoch-*.pt or checkpoint-*.pt in {exp}")
            else:
                from core.pipeline.plan_checks import export_checkpoint_files
                selection = export_checkpoint_files(exp, f.epoch, f.iter, f.avg, f.use_averaged_model)
                problems += selection.problems
                loaded, needs_model_avg = selection.loaded, selection.needs_model_avg
    else:
        problems.append("files.checkpoint: not set; give a pretrained.pt / epoch-N.pt (or files.exp_dir with "
                        "epoch/iter/avg)")

    from core.pipeline.recipe_script import ScriptArgs, read_script_args
    script_args = read_script_args(script) if script.is_file() else ScriptArgs(script)
    tok_flag = script_args.token_flag
    vocab = _vocabulary(f, script, tok_flag, problems, warnings)
    tokens_src, bpe = vocab.tokens, vocab.bpe

    untrusted: list[tuple[str, list[str]]] = []
    detection = None
    if loaded:
        from core.pipeline.plan_checks import checkpoint_safety
        safety = checkpoint_safety(loaded, f.trust_checkpoint, needs_model_avg=needs_model_avg)
        problems += safety.problems
        warnings += safety.warnings
        untrusted = safety.untrusted
        last = safety.loaded.get(loaded[-1])  # epoch-N.pt / the single file: the one that fixes the model shape
        if last is not None:
            p, w, detection = check_checkpoint(config, last, tokens_src, bpe=bpe, script=script,
                                               vocab_key=vocab.key)
            problems += p
            warnings += w
    from core.pipeline.plan_checks import context_size_problems
    context = context_size_problems(resolved, detection)
    if context:  # refused, so the architecture's warning about it would only repeat it
        problems += context
        warnings = [w for w in warnings if "--context-size is" not in w]
    problems += _export_arg_problems(config, script_args, resolved, vocab, warnings)
    if config.validation.numeric or config.validation.decode:
        from core.pipeline.plan_checks import validation_wav_problems
        problems += validation_wav_problems(config.validation.wavs)
        from core.pipeline.ship_steps import dataset_problems
        problems += dataset_problems(config.validation.dataset)

    python = config.python
    if not (shutil.which(python) or Path(python).is_file()):
        problems.append(f"files.python: {python} not found")

    pnnx = find_pnnx(config.tools.pnnx or None)
    problems += [f"tools.pnnx: {p}" for p in pnnx.problems]
    warnings += [f"tools.pnnx: {w}" for w in pnnx.warnings]
    from core.pnnx.convert import FALLBACK_VERSION, fallback_pnnx
    fallback = {"path": str(fallback_pnnx()), "version": FALLBACK_VERSION, "installed": fallback_pnnx().is_file()}
    if not fallback["installed"]:
        warnings.append(f"tools.pnnx: the fallback pnnx {FALLBACK_VERSION} is not installed ({fallback_pnnx()}); a "
                        "model that pnnx's shape-inference bug mis-converts (e.g. icefall's ConvEmformer) will stop "
                        "at its pnnx step, which says how to install it")

    int8_backend = None
    if config.output.int8:
        int8_problems, int8_warnings, int8_backend = int8_readiness(config, resolved)
        problems += int8_problems
        warnings += int8_warnings

    if check_out_dir:
        problems += _check_out_dir(out)

    if problems:
        raise PlanError(problems, untrusted)

    steps: list[Step] = []
    steps.append(make_prepare(layout, checkpoints, single=bool(f.checkpoint)))
    steps.append(make_tokens(layout, tokens_src, bpe))
    steps.append(_export_step(config, layout, script, root, checkpoints, vocab, resolved))
    validating = config.validation.numeric or config.validation.decode
    # the int8 cosine's fp32 half: recorded by the built-in calibration on its way, else by a step of its own
    recorded = validating and config.output.int8 and not int8_backend.table_tool
    validate_fp16, validate_int8 = _validate_steps(config, layout, recorded) if validating else (None, [])
    int8_early, int8_later = [], []
    if config.output.int8:
        reference = (_int8_reference_step(config, layout)
                     if validate_int8 and "int8-reference" in validate_int8[0].needs else None)
        int8_early, int8_later = _int8_steps(config, layout, pnnx.path, int8_backend, warnings, reference,
                                             int8_reference(layout) if recorded else None)
    steps += int8_early
    for net in NETS:
        steps.append(_pnnx_step(pnnx.path, layout, net))
    from core.pipeline.rewrite_step import make_rewrite, rewritten
    steps.append(make_rewrite(layout, spec.name))
    steps.append(make_finalize_encoder(layout, spec, resolved, rewritten(layout, "param"), rewritten(layout, "bin")))
    if validate_fp16 is not None and validate_fp16.background:
        steps.append(validate_fp16)  # beside the int8 steps, from here on
    steps += int8_later
    if validating:
        steps += validate_int8 or [validate_fp16]
        from core.pipeline.ship_steps import (  # test wavs, bench.py, speed, int8 report, model card
            card_info,
            ship_steps,
        )
        steps += ship_steps(layout, card_info(spec, resolved, script.parent.name, config.output.int8),
                            config.validation.wavs, int8=config.output.int8, dataset=config.validation.dataset,
                            max_wer_increase=config.validation.max_wer_increase)
    steps.append(make_summary(layout, checkpoints[0] if len(checkpoints) == 1 else None))

    manifest = {
        "tool": "sherpa-ncnn-wizard",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
        "arch": spec.name,
        "hyperparameters": {spec.param(n).flag: spec.param(n).format(v) for n, v in resolved.values.items()},
        "hyperparameter_sources": {spec.param(n).flag: s for n, s in resolved.sources.items()},
        "tools": {"python": python, "export_script": str(script), "icefall_root": str(root) if root else None,
                  "pnnx": pnnx.as_dict(), "pnnx_fallback": fallback, "versions": _versions(),
                  **({"int8": int8_backend.as_dict()} if int8_backend else {})},
        "warnings": warnings,
    }
    plan = Plan(steps, out, manifest)
    run = PlannedRun(plan, config, resolved, pnnx, warnings)
    run.script = render_script(run)
    return run


def check_checkpoint(config: WizardConfig, ckpt, tokens: Path | None, *, bpe: Path | None = None,
                     script: Path | None = None, vocab_key: str = ""):
    """(problems, warnings, detection) from comparing the config with what the checkpoint's weights show.

    ``ckpt`` is a checkpoint already read safely (core.pipeline.plan_checks.checkpoint_safety) or a path (read safely
    here; a refusal is a problem). An architecture sherpa-ncnn cannot run (Zipformer2) is a problem. Mismatches
    (hyperparameters, vocabulary size, dims the recipe fixes) are problems unless files.ignore_checkpoint_mismatch
    is set.
    """
    from core.model.checkpoint import CheckpointError, UnsupportedArchitectureError, check_against, check_tokens, detect
    from core.common.problems import Problem, ProblemKind
    from core.pipeline.plan_checks import vocab_problems
    try:
        detection = detect(ckpt)
    except UnsupportedArchitectureError as exc:
        return [f"files.checkpoint: {exc}"], [], None
    except CheckpointError as exc:
        return [f"files.checkpoint: {exc}"], [], None
    problems: list[str] = []
    # the recipe-fixed dims are checked against the recipe's own get_params below
    warnings = [f"files.checkpoint: {m}" for m in detection.disagreements + detection.warnings
                if m not in detection.recipe_dim_notes]
    ignore = config.files.ignore_checkpoint_mismatch
    how = " (fix it, or set files.ignore_checkpoint_mismatch / --ignore-checkpoint-mismatch to run anyway)"
    if detection.arch.recipe_fixed_dims and (script is not None or config.files.recipe):
        code_dir = script.resolve().parent if script is not None and script.is_file() else None
        for msg in _fixed_dim_warnings(code_dir or Path(config.files.recipe).expanduser(), detection):
            (warnings if ignore else problems).append(msg if ignore else msg.with_how(how))
    for m in check_against(config, detection):
        text = Problem(ProblemKind.CHECKPOINT_MISMATCH, m.message,
                       key="arch" if m.flag == "arch" else "hyperparameters")
        if m.severity == "error" and not ignore:
            problems.append(text.with_how(how))
        else:
            warnings.append(text)
    if tokens is not None and tokens.is_file():
        key = vocab_key or "files.tokens"
        for msg in check_tokens(tokens, detection):
            (warnings if ignore else problems).append(f"{key}: {msg}")
    for msg in vocab_problems(detection, tokens=tokens, bpe=bpe, from_lang=vocab_key):
        (warnings if ignore else problems).append(msg)
    return problems, warnings, detection


def _fixed_dim_warnings(folder: Path, detection) -> list[str]:
    """ConvEmformer/LSTM recipes fix decoder_dim/joiner_dim in get_params; compare with the checkpoint.

    ``folder`` is the folder the export's code runs from (a recipe directory, or its export script)."""
    from core.pipeline.plan_checks import fixed_dim_messages
    return fixed_dim_messages(folder if folder.is_dir() else folder.parent, detection)


@dataclass
class Vocabulary:
    """How the export gets the vocabulary, and where tokens.txt comes from."""

    flag: str  # --tokens, --bpe-model or --lang
    tokens: Path | None = None  # tokens.txt copied to OUT (or None: made from bpe)
    bpe: Path | None = None
    lang: Path | None = None
    lang_type: str = ""  # given in the config (passed as --lang-type)
    key: str = ""  # the config key the vocabulary came from, for messages

    def export_args(self, layout: Layout, accepts) -> list[str]:
        if self.flag == "--bpe-model":
            return ["--bpe-model", str(self.bpe)]
        if self.flag == "--lang":
            return ["--lang", str(self.lang)] + (["--lang-type", self.lang_type]
                                                  if self.lang_type and accepts("--lang-type") else [])
        return ["--tokens", str(layout.tokens)]

    def export_inputs(self, layout: Layout) -> list[Path]:
        if self.flag == "--bpe-model":
            return [self.bpe]
        if self.flag == "--lang":
            return [p for p in (self.tokens, self.bpe, self.lang / "lang_type") if p is not None and p.is_file()]
        return [layout.tokens]


def _vocabulary(f, script: Path, flag: str, problems: list[str], warnings: list[str]) -> Vocabulary:
    """tokens.txt / bpe.model / lang dir from the config, checked against what the export script takes."""
    v = Vocabulary(flag, Path(f.tokens).expanduser() if f.tokens else None,
                   Path(f.bpe_model).expanduser() if f.bpe_model else None,
                   Path(f.lang).expanduser() if f.lang else None, f.lang_type)
    v.key = "files.tokens" if v.tokens else "files.bpe_model" if v.bpe else ""
    if v.lang is not None and not v.lang.is_dir():
        problems.append(f"files.lang: {v.lang} is not a directory")
        return v
    if flag == "--lang":
        if v.lang is None:  # the folder of a tokens.txt / bpe.model is a lang dir (what the wizard's form gives)
            given = v.tokens if v.tokens is not None else v.bpe
            kind = "char" if v.tokens is not None else "bpe"
            if given is not None and given.name == {"char": "tokens.txt", "bpe": "bpe.model"}[kind] \
                    and given.is_file():
                v.lang, v.lang_type = given.parent, f.lang_type or kind
                warnings.append(f"files.lang: not set; {script.name} takes --lang DIR: using {v.lang} (the folder of "
                                f"{given.name}) with --lang-type {v.lang_type}")
        if v.lang is None:
            problems.append(f"files.lang: {script.name} takes --lang DIR (e.g. icefall's CSJ recipe): give the lang "
                            "directory the model was trained with (data/lang_char), in [files] lang = \"DIR\"")
            return v
        kind = v.lang_type
        if not kind:
            marker = v.lang / "lang_type"
            if not marker.is_file():
                problems.append(f"files.lang_type: not set, and {marker} does not exist; set lang_type = \"char\" "
                                "or \"bpe\" in [files]")
                return v
            kind = marker.read_text(encoding="utf-8", errors="replace").strip()
        wanted = {"char": "tokens.txt", "bpe": "bpe.model"}.get(kind)
        if wanted is None:
            problems.append(f"files.lang_type: {v.lang}/lang_type says {kind!r}; the recipe's tokenizer knows 'char' "
                            "and 'bpe'")
            return v
        if not (v.lang / wanted).is_file():
            problems.append(f"files.lang: {v.lang} has no {wanted} (lang type {kind} reads it)")
            return v
        if kind == "char" and v.tokens is None:
            v.tokens, v.key = v.lang / "tokens.txt", "files.lang"
        elif kind == "bpe" and v.tokens is None and v.bpe is None:
            v.bpe, v.key = v.lang / "bpe.model", "files.lang"
        return _check_vocab_files(v, problems)
    if v.lang is not None and v.tokens is None and v.bpe is None:
        found = [p for p in (v.lang / "tokens.txt", v.lang / "bpe.model") if p.is_file()]
        if flag == "--bpe-model":
            found = [p for p in found if p.name == "bpe.model"]
        if found:
            v.tokens, v.bpe = (found[0], None) if found[0].name == "tokens.txt" else (None, found[0])
            v.key = "files.lang"
            warnings.append(f"files.lang: {script.name} takes {flag}, not --lang; the vocabulary is {found[0]}")
    if v.tokens is None and v.bpe is None:
        problems.append("files.tokens: not set; give tokens.txt or files.bpe_model (bpe.model)")
    if flag == "--bpe-model" and v.bpe is None:
        problems.append(f"files.bpe_model: {script.name} is from an older icefall that takes --bpe-model; "
                        "give the bpe.model")
    return _check_vocab_files(v, problems)


def _check_vocab_files(v: Vocabulary, problems: list[str]) -> Vocabulary:
    if v.tokens is not None and not v.tokens.is_file():
        problems.append(f"files.tokens: {v.tokens} not found")
    if v.bpe is not None and not v.bpe.is_file():
        problems.append(f"files.bpe_model: {v.bpe} not found")
    return v


def _export_arg_problems(config: WizardConfig, args, resolved: ResolvedValues, vocab: Vocabulary,
                         warnings: list[str]) -> list[str]:
    """The wizard's flags must be ones the export script accepts; [export] extra_args are checked for clashes."""
    problems: list[str] = []
    ours = ["--exp-dir", "--epoch", "--avg", "--use-averaged-model"] + (["--iter"] if not config.files.checkpoint
                                                                        else [])
    ours += [a for a in vocab.export_args(Layout(Path(".")), args.accepts) if a.startswith("--")]
    ours += [a for a in (resolved.arch.flags_for(resolved.values) if resolved.ok else []) if a.startswith("--")]
    where = ", ".join(str(p) for p in args.read)
    for flag in dict.fromkeys(ours):
        if not args.accepts(flag):
            problems.append(f"files.recipe: {args.script.name} does not accept {flag} (its parser, read from {where}, "
                            "has no such flag): this recipe is older or newer than the wizard expects; point "
                            "files.recipe at a recipe whose export takes it")
    hyper = {hp.flag for hp in resolved.arch.hyperparams}
    for arg in config.export.extra_args:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        if flag in hyper:
            problems.append(f"export.extra_args: {flag} is a model hyperparameter; set it in [hyperparameters] "
                            "(the metadata is written from those) instead of passing it to the export")
        elif flag in ours:
            warnings.append(f"export.extra_args: {flag} is also set by the wizard; argparse takes the last one: yours")
        elif not args.accepts(flag):
            warnings.append(f"export.extra_args: {args.script.name}'s parser (read from {where}) has no {flag}; the "
                            "export will stop with 'unrecognized arguments' if it really does not take it")
    return problems


def _int8_steps(config: WizardConfig, layout: Layout, pnnx: Path, backend, warnings: list[str],
                reference: Step | None, recorded: Path | None = None) -> tuple[list[Step], list[Step]]:
    """The int8 steps in two parts: right after the export, the fp32 encoder conversion (it needs only the export,
    so it runs in the background beside the fp16 conversions: pnnx uses one core); after the metadata, the fp32
    joiner conversion, the fp32 set (waiting for the encoder's), ``reference`` (the int8 check's fp32 half, with an
    external calibration tool) and calibrate (built in: recording that half to ``recorded``) and quantize with
    the built-in code or the user's tools."""
    from core.pipeline.int8_steps import make_fp32_set, make_pnnx_fp32
    encoder = make_pnnx_fp32(pnnx, layout, "encoder")
    encoder.background = True
    fp32_set = make_fp32_set(layout, config.arch)
    fp32_set.needs = (encoder.id,)
    later = [make_pnnx_fp32(pnnx, layout, "joiner"), fp32_set, *([reference] if reference else [])]
    return [encoder], later + calibration_steps(config, layout, backend, warnings, reference=recorded)


def _export_step(config, layout: Layout, script: Path, root: Path | None, checkpoints, vocab: Vocabulary,
                 resolved: ResolvedValues) -> Step:
    f = config.files
    if f.checkpoint:
        selection = ["--epoch", "99", "--avg", "1", "--use-averaged-model", "0"]
    else:
        selection = ["--epoch", str(f.epoch), "--iter", str(f.iter), "--avg", str(f.avg),
                     "--use-averaged-model", "1" if f.use_averaged_model else "0"]
    from core.pipeline.recipe_script import read_script_args
    accepts = read_script_args(script).accepts
    argv = [config.python, str(script), "--exp-dir", str(layout.exp), *vocab.export_args(layout, accepts),
            *selection, *resolved.arch.flags_for(resolved.values), *config.export.extra_args]
    env = {}
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([os.environ["PYTHONPATH"]]
                                                           if os.environ.get("PYTHONPATH") else []))
    cwd = script.parent.parent
    script_lines = [f"cd {shlex.quote(str(cwd))}",
                    ("PYTHONPATH=" + shlex.quote(str(root)) + '${PYTHONPATH:+:$PYTHONPATH} ' if root else "")
                    + shlex.join(argv),
                    "cd - >/dev/null"]
    return Step("export", "Export with icefall (torch.jit.trace)", argv=argv, cwd=cwd, env=env,
                inputs=[script, *checkpoints, *vocab.export_inputs(layout)],
                outputs=[layout.pt(n) for n in NETS], parser="export", script=script_lines)


def _pnnx_step(pnnx: Path, layout: Layout, net: str) -> Step:
    stem = layout.pnnx_dir / net
    raw = net == "encoder"  # the encoder gets its metadata in a later step
    param = layout.raw(net, "param") if raw else layout.final(net, "param")
    binary = layout.raw(net, "bin") if raw else layout.final(net, "bin")
    from core.pipeline.pnnx_step import pnnx_step
    return pnnx_step(f"pnnx-{net}", f"Convert the {net} with pnnx (fp16)", pnnx, layout.pt(net), stem, param, binary,
                     fp16=True)


def _validate_args(config: WizardConfig) -> list[str]:
    argv: list[str] = []
    for wav in config.validation.wavs:
        argv += ["--wav", wav]
    for wav, text in config.validation.transcripts.items():
        argv += ["--reference", f"{wav}={text}"]
    return argv


def fp16_report(layout: Layout) -> Path:
    """The fp16 checks' report in a run with --int8 (validation-report merges it with int8_report's)."""
    return layout.work / "validation-fp16.json"


def int8_report(layout: Layout) -> Path:
    """The int8 checks' report in a run with --int8 (no torch agreement yet: validation-report adds it)."""
    return layout.work / "validation-int8.json"


def int8_reference(layout: Layout) -> Path:
    """The int8 cosine's fp32 half (core.int8.check_reference): written by the built-in calibration, or by the
    int8-reference step beside an external one."""
    return layout.work / "int8-reference.npz"


def _int8_reference_step(config: WizardConfig, layout: Layout) -> Step:
    """With an external calibration tool: the fp32 model streamed over the test wavs, every chunk's and frame's
    inputs and outputs recorded, in the background beside calibration and quantization (and the fp16 checks,
    when they still run), so that the int8 check after quantization runs only the int8 nets."""
    from core.pipeline.layout import fp32_model_files
    files = fp32_model_files(layout)
    argv = [sys.executable, "-m", "core.int8.children", "int8-reference", "--fp32",
            *map(str, vars(files).values()), "--out", str(int8_reference(layout))]
    for wav in config.validation.wavs:
        argv += ["--wav", wav]
    return Step("int8-reference", "Record fp32's outputs on the test wavs (for the int8 check)", argv=argv,
                env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                inputs=[*vars(files).values(), *map(Path, config.validation.wavs)],
                outputs=[int8_reference(layout)], background=True,
                script=["# the int8 check's fp32 half: included in the validate line above"])


def _validate_steps(config: WizardConfig, layout: Layout, recorded: bool = False) -> tuple[Step, list[Step]]:
    """The fp16 checks (numeric, torch's decode, sherpa-ncnn, agreement) and, with --int8, the int8 checks (in the
    background from quantization's end: sherpa-ncnn and the cosine, no torch) and the report that joins the two
    (the int8 tokens vs torch's decodes from the fp16 half).

    With --int8 the fp16 step runs in the background as soon as the fp16 model is final: it only reads that
    model, the traced modules and the wavs, so it overlaps the fp32 conversions, calibration and quantization
    (its children beside its torch work on the cores the steps beside it leave: on 2 cores one after the other);
    validation-report takes torch's decodes from its report. ``recorded``: the built-in
    calibration records the int8 cosine's fp32 half (else an int8-reference step does, on the test wavs)."""
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    base = [sys.executable, "-m", "core.validation.validate", str(layout.out), "--arch", config.arch,
            "--traced-dir", str(layout.exp)]
    int8 = config.output.int8
    report = fp16_report(layout) if int8 else layout.out / "validation.json"
    argv = base + ["--json-out", str(report)]
    argv += _validate_args(config)
    if not config.validation.numeric:
        argv.append("--no-numeric")
    if not config.validation.decode:
        argv.append("--no-decode")
    inputs = [layout.final(n, e) for n in NETS for e in ("param", "bin")] + [layout.tokens]
    inputs += [Path(w) for w in config.validation.wavs]
    script = ["sherpa-ncnn-wizard validate " + shlex.quote(str(layout.out)) + " --traced-dir "
              + shlex.quote(str(layout.exp)) + (" --int8" if int8 else "")]
    fp16 = Step("validate", "Validate: torch vs ncnn, and decode in sherpa-ncnn", argv=argv, env=env,
                inputs=inputs, outputs=[report], script=script, background=int8)
    if not int8:
        return fp16, []
    from core.pipeline.layout import fp32_set_dir, int8_file
    argv8 = base + ["--int8-only", "--json-out", str(int8_report(layout)),
                    "--fp32-dir", str(fp32_set_dir(layout))] + _validate_args(config)
    needs: tuple[str, ...] = ()
    if recorded or config.validation.wavs:  # the cosine's fp32 half, recorded by calibration or beside it
        argv8 += ["--int8-reference", str(int8_reference(layout))]
        needs += () if recorded else ("int8-reference",)
    inputs8 = [int8_file(layout, n, e) for n in ("encoder", "joiner") for e in ("param", "bin")]
    inputs8 += [int8_reference(layout)] if recorded or config.validation.wavs else []
    inputs8 += [Path(w) for w in config.validation.wavs]
    int8_step = Step("validate-int8", "Validate int8: sherpa-ncnn decode, cosine vs fp32", argv=argv8, env=env,
                     inputs=inputs8, outputs=[int8_report(layout)], needs=needs, background=True,
                     script=["# the int8 checks: included in the validate line above"])
    merged = Step("validation-report", "Validation report: int8 tokens vs torch's, both halves in validation.json",
                  argv=base + ["--fp16-report", str(fp16_report(layout)), "--int8-report", str(int8_report(layout)),
                               "--json-out", str(layout.out / "validation.json")],
                  env=env, inputs=[fp16_report(layout), int8_report(layout)], outputs=[layout.out / "validation.json"],
                  needs=("validate", "validate-int8"), script=["# included in the validate line above"])
    return fp16, [int8_step, merged]


def render_script(run: PlannedRun) -> str:
    """The plan as a plain bash script that replays the run."""
    lines = ["#!/usr/bin/env bash",
             f"# Written by sherpa-ncnn-wizard for a {run.resolved.arch.title} model; replays the run step by step.",
             "set -euo pipefail", ""]
    for i, step in enumerate(run.plan.steps, start=1):
        lines.append(f"# {i}. {step.title}")
        lines += step.script or [f"# ({step.describe or 'done inside the wizard'})"]
        lines.append("")
    return "\n".join(lines)


def describe_plan(run: PlannedRun) -> list[tuple[int, str, str]]:
    """(number, title, command or description) per step, for --dry-run and the review screen."""
    return [(i, s.title, s.command or s.describe) for i, s in enumerate(run.plan.steps, start=1)]
