"""Plain helpers behind the Textual wizard (no textual import here, so they are easy to test).

They only prepare what the screens show: they call core for every decision
(resolve, build_metadata, find_pnnx, the pipeline's recipe helpers) and never
run a process or parse a tool's log.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from core.common.formatting import human
from core.common.problems import ProblemKind, kind_of
from core.model.architectures import EXPORT_ONLY_FLAGS, ArchSpec, ResolvedValues, resolve
from core.pipeline.config import WizardConfig
from core.pipeline.layout import ncnn_name
from core.pipeline.plan import find_export_script, find_icefall_root, tokens_flag
from core.pnnx.tools import find_pnnx

NETS = ("encoder", "decoder", "joiner")


@dataclass
class FieldCheck:
    ok: bool
    message: str


# -- model files ------------------------------------------------------------------

def check_recipe(value: str) -> FieldCheck:
    if not value.strip():
        return FieldCheck(False, "required: the icefall recipe directory or its export-for-ncnn.py")
    script = find_export_script(Path(value).expanduser())
    if not script.is_file():
        return FieldCheck(False, f"no export-for-ncnn.py at {script}")
    if not os.access(script, os.R_OK):
        return FieldCheck(False, f"{script} is not readable")
    root = find_icefall_root(script)
    where = f"icefall root {root}" if root else "not under egs/: PYTHONPATH is not extended"
    flag = tokens_flag(script)
    return FieldCheck(True, f"looks like an icefall recipe ({script.name}, takes {flag}; {where})")


def check_file(value: str, what: str, required: bool = True) -> FieldCheck:
    if not value.strip():
        return FieldCheck(not required, f"required: {what}" if required else "not set")
    p = Path(value).expanduser()
    if not p.exists():
        return FieldCheck(False, f"{p} not found")
    if not p.is_file():
        return FieldCheck(False, f"{p} is not a file")
    if not os.access(p, os.R_OK):
        return FieldCheck(False, f"{p} is not readable")
    return FieldCheck(True, f"ok ({human(p.stat().st_size)})")


def check_tokens(value: str) -> FieldCheck:
    check = check_file(value, "tokens.txt or bpe.model")
    if check.ok:
        kind = "bpe.model: tokens.txt is made from it" if value.strip().endswith(".model") else "tokens.txt"
        return FieldCheck(True, f"{check.message}, {kind}")
    return check


def check_python(value: str) -> FieldCheck:
    import sys
    py = value.strip() or sys.executable
    found = shutil.which(py) or (py if Path(py).is_file() else None)
    if not found:
        return FieldCheck(False, f"{py} not found")
    return FieldCheck(True, f"{found}" + (" (this interpreter)" if not value.strip() else ""))


def check_out_dir(value: str) -> FieldCheck:
    if not value.strip():
        return FieldCheck(False, "required: where the model is written")
    p = Path(value).expanduser().resolve()
    if p.exists() and not p.is_dir():
        return FieldCheck(False, f"{p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        ours = {"run-state.json", "manifest.json", "wizard.toml"} & {c.name for c in p.iterdir()}
        if not ours:
            return FieldCheck(False, f"{p} is not empty and was not made by the wizard")
        return FieldCheck(True, f"{p} (an earlier wizard run: it is replaced)")
    return FieldCheck(True, f"{p} (created when the run starts)")


def check_pnnx(value: str) -> FieldCheck:
    info = find_pnnx(value.strip() or None)
    if info.problems:
        return FieldCheck(False, "; ".join(info.problems))
    where = f"{info.path}" + (f" (pnnx {info.version}, the wheel's)" if info.source == "wheel" else " (yours)")
    extra = ""
    if len(info.on_path) > 1:
        extra = f"; several pnnx on PATH: {', '.join(info.on_path)} (the one above is used by full path)"
    elif info.on_path:
        extra = f"; on PATH: {info.on_path[0]} (not used)"
    return FieldCheck(True, "uses " + where + extra)


FILE_FIELDS = (  # (id, label, getter/setter key, check)
    ("recipe", "icefall recipe dir or export-for-ncnn.py", check_recipe),
    ("checkpoint", "checkpoint (pretrained.pt / epoch-N.pt)",
     lambda v: check_file(v, "the checkpoint (pretrained.pt / epoch-N.pt)")),
    ("tokens", "tokens.txt or bpe.model", check_tokens),
    ("python", "Python that runs the export (empty: this one)", check_python),
    ("out", "output directory", check_out_dir),
    ("pnnx", "pnnx binary (empty: the wheel's)", check_pnnx),
)


def file_values(config: WizardConfig) -> dict[str, str]:
    f = config.files
    return {"recipe": f.recipe, "checkpoint": f.checkpoint, "tokens": f.tokens or f.bpe_model,
            "python": f.python, "out": config.output.dir, "pnnx": config.tools.pnnx}


def apply_file_values(config: WizardConfig, values: dict[str, str]) -> None:
    f = config.files
    f.recipe = values["recipe"].strip()
    f.checkpoint = values["checkpoint"].strip()
    tok = values["tokens"].strip()
    f.bpe_model, f.tokens = (tok, "") if tok.endswith(".model") else ("", tok)
    f.python = values["python"].strip()
    config.output.dir = values["out"].strip()
    config.tools.pnnx = values["pnnx"].strip()


# -- hyperparameters --------------------------------------------------------------

@dataclass
class FormState:
    """What the hyperparameter form shows for the current inputs."""

    resolved: ResolvedValues
    field_errors: dict[str, list[str]] = field(default_factory=dict)  # flag -> messages
    cross_errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.resolved.ok


def form_state(spec: ArchSpec, given: dict[str, str], detected: "DetectedModel | None" = None) -> FormState:
    """Validate the form's non-empty values with core.model.architectures.resolve.

    ``detected`` from existing ncnn files' graph: a value the graph contradicts is an error of its field."""
    from core.model.architectures import Problem
    resolved = resolve(spec, {k: v for k, v in given.items() if v.strip()})
    if detected is not None:
        resolved.problems += [Problem("error", (flag,), msg) for flag, msg in detected.contradictions(given).items()]
    state = FormState(resolved)
    for p in resolved.problems:
        if p.severity == "warning":
            state.warnings.append(p.message)
        elif len(p.flags) == 1 and any(hp.flag == p.flags[0] for hp in spec.hyperparams):
            state.field_errors.setdefault(p.flags[0], []).append(p.message)
        else:
            state.cross_errors.append(p.message)
    return state


@dataclass
class Pasted:
    values: dict[str, str]  # flag -> value
    ignored: list[str]  # export-only flags (--epoch ...)
    unknown: list[str]  # flags this architecture does not have


def parse_pasted_flags(spec: ArchSpec, text: str) -> Pasted:
    """Flags from an export-for-ncnn.py command line (icefall syntax, shell quoting, backslash newlines)."""
    tokens = shlex.split(text.replace("\\\n", " "))
    known = {hp.flag for hp in spec.hyperparams}
    out = Pasted({}, [], [])
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok.startswith("--"):
            continue  # python, the script path, ...
        if "=" in tok:
            flag, value = tok.split("=", 1)
        else:
            flag = tok
            value = tokens[i] if i < len(tokens) and not tokens[i].startswith("--") else ""
            if value:
                i += 1
        if flag in known:
            out.values[flag] = value
        elif flag in EXPORT_ONLY_FLAGS:
            out.ignored.append(flag)
        else:
            out.unknown.append(flag)
    return out


# -- review and summary -------------------------------------------------------------

def header_change(out_dir: Path, from_ncnn: str = "", arch: str | None = None) -> str:
    """``N M → N+1 M``, with the real numbers when pnnx's encoder param is already there."""
    if from_ncnn:
        return ncnn_header_change(from_ncnn, arch)
    raw = out_dir / "work" / "pnnx" / ncnn_name("encoder", "param")
    try:
        with open(raw, encoding="utf-8") as fh:
            fh.readline()
            n, m = fh.readline().split()[:2]
        return f"{n} {m} → {int(n) + 1} {m}  (from the last pnnx output in {raw.parent})"
    except (OSError, ValueError):
        return "N M → N+1 M  (layer count + 1 for the metadata line; the real numbers are known after pnnx)"


def short_path(path: Path) -> str:
    """A path as short as it is still exact: relative to the working directory when it is under it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sherpa_snippet(out_dir: Path) -> str:
    """The Recognizer(...) call for the model in OUT (and for its int8 set when the run made one)."""
    from tui.cli.common import sherpa_snippet as snippet
    return snippet(out_dir)


@dataclass
class RunResults:
    """What the summary screen shows. ``checks``: core.validation.report's lines as they are (status "ok",
    "warning" or "failed", the same three the CLI marks); ``transcripts``: (wav, fp16 text, int8 text or None)."""

    sizes: list[tuple[str, str, str, str]]
    checks: list  # list[core.validation.report.Line]
    transcripts: list[tuple[str, str, str | None]]
    decode_error: str | None
    files: list[str]
    notes: list[str] = field(default_factory=list)  # validation.json's notes (what was not checked, and why)


def shipped_text(out_dir: Path) -> str:
    """Speed, dataset WER and the int8 report by type from OUT/summary.json ("" when the run measured none)."""
    from core.pipeline.ship_steps import summary_text
    try:
        return "\n".join(summary_text(json.loads((out_dir / "summary.json").read_text())))
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def summary_charts(out_dir: Path) -> dict[str, list[str]]:
    """The summary's pictures (core.common.charts): "sizes" (pt/fp16/fp32/int8 bars), "kinds" (int8 kind per layer
    type, stacked), "sensitivity" (the most int8-sensitive layers, sorted) and "histograms" (the most-clipped
    layers' activation histograms with their threshold); empty lists for what was not made."""
    from core.common.charts import histogram_chart, kind_chart, size_chart
    charts: dict[str, list[str]] = {"sizes": [], "kinds": [], "sensitivity": [], "histograms": []}
    try:
        from core.int8.histograms import HISTOGRAMS, read_layers
        layers = read_layers(json.loads((out_dir / HISTOGRAMS).read_text()))
        charts["histograms"] = [line for layer in layers for line in histogram_chart(layer)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
        charts["sizes"] = size_chart(summary.get("sizes") or [])
        charts["kinds"] = kind_chart((summary.get("int8_layers") or {}).get("by_type") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        from core.int8.report import report_sensitivity_lines
        charts["sensitivity"] = report_sensitivity_lines(json.loads((out_dir / "int8-layers.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return charts


def read_results(out_dir: Path) -> RunResults:
    def load(name: str):
        try:
            return json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            return None
    summary = load("summary.json") or {}
    sizes = [(r["model"], human(r.get("pt")), human(r.get("fp16")), human(r.get("fp32")), human(r.get("int8")))
             for r in summary.get("sizes", [])]
    from core.validation.report import read_validation, summary_lines
    from core.validation.report import transcripts as decoded
    validation = read_validation(out_dir)
    d = validation.decode
    decode_error = (d.error or "sherpa-ncnn failed") if d is not None and not d.ok else None
    files = summary.get("files") or sorted(p.name for p in out_dir.iterdir() if p.is_file()) \
        if out_dir.is_dir() else []
    return RunResults(sizes, summary_lines(validation), decoded(validation), decode_error, list(files),
                      list(validation.notes))


def fix_target(step: str, hint: str | None, error: str | None) -> str:
    """Which screen "fix and resume" goes back to: "hyperparameters" when the failure's kind says the
    hyperparameters are wrong (or the metadata step failed), else "files"."""
    kinds = {kind_of(hint), kind_of(error)}
    if kinds & {ProblemKind.HYPERPARAMETERS, ProblemKind.CHECKPOINT_MISMATCH} or step == "metadata":
        return "hyperparameters"
    return "files"


def calibration_wavs(text: str) -> list[Path]:
    """Calibration audio from what the user typed: a folder, a list file, or paths separated by spaces."""
    import shlex
    paths: list[Path] = []
    for word in shlex.split(text or ""):
        p = Path(word).expanduser()
        if p.is_dir():
            paths += sorted(p.glob("*.wav"))
        elif p.suffix.lower() in (".txt", ".lst", ".list", ".scp") and p.is_file():
            paths += [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
        else:
            paths.append(p)
    return paths


def calibration_check(wavs: list[Path], config) -> tuple[bool, list[str]]:
    """(usable?, lines to show): count, total duration, and every file that cannot be used, by name."""
    from core.common.audio import read_wav
    from core.int8.calibration import check_wavs
    from core.model.architectures import get_arch, resolve
    if not wavs:
        return False, ["no calibration audio: give a folder of 16 kHz wavs, a list file, or paths"]
    resolved = resolve(get_arch(config.arch), config.hyperparameter_flags())
    segment = resolved.arch.segment_offset(resolved.values)[0] if resolved.ok else 51
    check = check_wavs(wavs, segment)
    seconds = 0.0
    for w in check.usable:
        seconds += read_wav(w).seconds
    rate_problems = [p for p in check.problems if kind_of(p) is ProblemKind.SAMPLE_RATE]
    resample = config.calibration.resample and rate_problems
    lines = [f"{len(check.usable)} usable wav(s), {seconds:.1f} s in total, 16 kHz"]
    for p in check.problems:
        if p in rate_problems and resample:
            lines.append(f"→ {p.key}: {p.fact}: resampled to 16 kHz when the run starts")
        else:
            lines.append(f"✗ {p}")
    if rate_problems and not resample:
        lines.append("tick 'resample' below to use them anyway")
    usable = bool(check.usable) or bool(resample)
    return usable and (bool(resample) or not rate_problems), lines


def int8_backend_options(config) -> list[tuple[str, str]]:
    """(label, value) pairs for the backend choice; the external ones name the tools found, or say none are."""
    from core.int8.tools import find_int8_tools
    tools = find_int8_tools(config.tools.generate_int8_scale_table, config.tools.ncnn2int8)
    found = ", ".join(f"{p.name} at {p}" for p in (tools.table_tool, tools.quantize_tool) if p)
    options = [("built in (Python on the ncnn wheel; works on every model here)", "builtin")]
    if found:
        options += [(f"your tools: {found} (built in for a missing one)", "external"),
                    ("your tools where found, built in otherwise", "auto")]
    else:
        options += [("auto: generate-int8-scale-table / ncnn2int8 when on PATH (none found now)", "auto")]
    if config.calibration.backend not in {v for _, v in options}:
        options.append((f"{config.calibration.backend} (from the config; no tools found)", config.calibration.backend))
    return options


@dataclass
class DetectedModel:
    """What "Detect from checkpoint" found, ready to fill the form."""

    ok: bool
    message: str
    arch: str | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)  # flag without dashes -> value, every field
    sources: dict[str, str] = field(default_factory=dict)  # name -> "weights" | "training params" | "default"
    values: dict[str, str] = field(default_factory=dict)  # name -> text, every hyperparameter
    origin: str = "checkpoint"  # or "graph": read from existing ncnn files' encoder graph
    where: dict[str, str] = field(default_factory=dict)  # name -> the graph file and what in it (origin "graph")

    def contradictions(self, given: dict[str, str]) -> dict[str, str]:
        """flag -> message for form values the encoder's graph contradicts (origin "graph" only)."""
        if self.origin != "graph" or not self.ok or not self.arch:
            return {}
        from core.model.architectures import get_arch
        spec = get_arch(self.arch)
        out = {}
        for hp in spec.hyperparams:
            text = (given.get(hp.flag) or "").strip()
            if self.sources.get(hp.name) != "graph" or not text:
                continue
            try:
                same = hp.parse(text) == hp.parse(self.values[hp.name])
            except ValueError:
                continue  # the form's own check names the syntax error
            if not same:
                out[hp.flag] = (f"{hp.flag} {text} contradicts the model: its graph has {self.values[hp.name]} "
                                f"({self.where.get(hp.name, 'the encoder graph')}); clear the field to use it")
        return out


def detect_checkpoint(path: str) -> DetectedModel:
    """Read the checkpoint safely (core.model.checkpoint) and say what it reveals; never raises."""
    from core.model.checkpoint import CheckpointError, detect
    p = Path(path).expanduser()
    if not p.is_file():
        return DetectedModel(False, f"✗ {p}: not found")
    try:
        d = detect(p)
    except CheckpointError as exc:
        return DetectedModel(False, f"✗ {exc}")
    revealed = {n: v for n, v in d.values.items() if v.revealed}
    # every field is filled: what the weights do not reveal gets detection's default, sized to this model
    # (e.g. one --encoder-unmasked-dims value per detected stack), not icefall's 5-stack default
    hyper = {d.arch.param(n).flag.lstrip("-"): v.text for n, v in d.values.items()}
    sources = {n: v.source for n, v in d.values.items()}
    values = {n: v.text for n, v in d.values.items()}
    msg = (f"✓ {d.arch.title}: {len(revealed)} of {len(d.values)} hyperparameters read from the checkpoint; "
           "the others are marked 'not in the weights' (icefall's default)")
    if d.disagreements:
        msg += "\n! " + "\n! ".join(d.disagreements)
    return DetectedModel(True, msg, d.arch.name, hyper, sources, values)


def field_mark(name: str, current: str, default: str, detected: DetectedModel | None) -> str:
    """The tag next to a form field: detected (and from where), default, or edited."""
    if detected is not None and detected.ok and detected.origin == "graph":
        wanted = detected.values.get(name)
        if detected.sources.get(name) == "graph":
            return "from the graph" if current.strip() in ("", wanted) else f"✗ the graph has {wanted}"
        if detected.sources.get(name) == "default":
            return f"not in the graph · default {wanted}" if current.strip() in ("", wanted) else "edited"
        return f"default {default}" if not current.strip() else "edited"
    if detected is not None and detected.ok and name in detected.sources:
        source = detected.sources[name]
        wanted = detected.values[name]
        if source == "default":
            return f"not in the weights · default {wanted}" if current.strip() in ("", wanted) \
                else "edited (not in the weights)"
        if current.strip() == wanted:
            return f"detected ({source})"
        return f"edited (checkpoint: {wanted})"
    return f"default {default}" if not current.strip() else "edited"


def presets_for(arch: str) -> list:
    """The published models (core.model.presets) of this architecture."""
    from core.model.presets import PRESETS
    return [p for p in PRESETS.values() if p.arch == arch]


def preset_values(name: str) -> dict[str, str]:
    """icefall flag -> value of a preset, for filling the form."""
    from core.model.presets import get_preset
    return dict(get_preset(name).flags)


class PathCompletion:
    """Suggest the rest of a path from what exists on disk (first match, directories end with '/')."""

    @staticmethod
    def complete(value: str) -> str | None:
        if not value:
            return None
        p = Path(value).expanduser()
        parent, stem = (p, "") if value.endswith("/") else (p.parent, p.name)
        try:
            names = sorted(c.name + ("/" if c.is_dir() else "") for c in parent.iterdir() if c.name.startswith(stem))
        except OSError:
            return None
        names = [n for n in names if not n.startswith(".") or stem.startswith(".")]
        if not names:
            return None
        return value + names[0][len(stem):] if names[0] != stem else None


def recent_run_choices() -> list[tuple[str, Path]]:
    """(label, wizard.toml) for the recent runs that can still be opened."""
    from core.pipeline.recent import recent_runs
    marks = {"ok": "✓", "failed": "✗", "cancelled": "■"}
    return [(f"{marks.get(e.get('status'), '?')} {e.get('arch', '?')}  {e['out']}  ({e.get('time', '')})",
             Path(e["out"]) / "wizard.toml") for e in recent_runs()[:5]]


# -- existing ncnn files ("I already have ncnn files") ------------------------------

def check_ncnn_dir(value: str) -> FieldCheck:
    """The directory of pnnx output: every file there, no git-lfs pointers, params ncnn would load."""
    from core.pipeline.from_ncnn import source_problems
    if not value.strip():
        return FieldCheck(False, "required: the directory with encoder/decoder/joiner_jit_trace-pnnx.ncnn.{param,bin}"
                                 " (or pnnx's default *_jit_trace_pnnx.ncnn.*) and tokens.txt")
    problems = source_problems(Path(value).expanduser().resolve())
    if problems:
        return FieldCheck(False, "; ".join(p.detail for p in problems))  # the field is --from-ncnn
    return FieldCheck(True, "pnnx output found (it is only read: the run works on copies)")


def guess_arch(param: Path) -> str | None:
    """The architecture a pnnx encoder most likely is (to preselect it): core.model.arch_guess's one guess."""
    from core.model.arch_guess import guess_arch as guess
    from core.ncnn.param import load_param
    model = load_param(param).model
    return None if model is None else guess(model)[0]


def check_traced_dir(value: str) -> FieldCheck:
    """The optional traced-modules folder of the ncnn-files path: empty, or a folder with the traced encoder."""
    from core.pipeline.layout import pt_name
    if not value.strip():
        return FieldCheck(True, "optional")
    d = Path(value).expanduser()
    if not d.is_dir():
        return FieldCheck(False, f"{d} is not a folder")
    if not (d / pt_name("encoder")).is_file():
        return FieldCheck(False, f"no {pt_name('encoder')} in {d} (icefall's export-for-ncnn.py writes it to exp/)")
    return FieldCheck(True, f"traced modules found ({pt_name('encoder')})")


def ncnn_encoder_param(value: str) -> Path:
    """The encoder's ncnn param in the directory, whichever of pnnx's naming schemes wrote it."""
    from core.pipeline.from_ncnn import locate_source
    return locate_source(Path(value).expanduser().resolve()).encoder_param()


def detect_ncnn_graph(value: str, arch: str | None) -> DetectedModel:
    """The hyperparameters the directory's encoder graph reveals (core.model.graph_hparams); never raises."""
    from core.model.architectures import get_arch
    from core.model.graph_hparams import read_graph, reconcile
    from core.pipeline.from_ncnn import locate_source
    from core.pipeline.layout import pt_name
    if not arch:
        return DetectedModel(False, "! the architecture is not known yet: choose it on the next step")
    files = locate_source(Path(value).expanduser().resolve())
    spec = get_arch(arch)
    traced = files.traced_dir / pt_name("encoder") if files.traced_dir else None
    reading = read_graph(spec, ncnn_param=files.ncnn.get(("encoder", "param")), pnnx_param=files.pnnx_graph,
                         traced_pt=traced)
    if reading.problems:
        return DetectedModel(False, "✗ " + "; ".join(reading.problems), spec.name, origin="graph")
    sized = reconcile(spec, {}, reading)  # per-stack defaults sized to the graph's stacks
    values = {hp.name: hp.format(sized.values[hp.name]) for hp in spec.hyperparams}
    sources = {n: ("graph" if n in reading.values else "default") for n in values}
    hyper = {spec.param(n).flag.lstrip("-"): values[n] for n in values
             if n in reading.values or spec.param(n).kind == "int_list"}
    missing = [hp.flag for hp in spec.hyperparams if hp.meta_key is not None and hp.name not in reading.values]
    msg = (f"✓ {len(reading.values)} metadata value(s) read from the graph ({reading.file_names})"
           + (f"; not shown there, give them on the hyperparameters step: {', '.join(missing)} (or put pnnx's "
              "*.pnnx.param or the traced encoder_jit_trace-pnnx.pt beside the files)" if missing else ""))
    return DetectedModel(True, msg, spec.name, hyper, sources, values, origin="graph", where=dict(reading.where))


def describe_ncnn_dir(value: str, arch: str | None = None, detected: DetectedModel | None = None) -> list[str]:
    """What the run will find in the directory: reference data, the graph's values (``detected``, read here
    when not given), and what the rewrite step will do."""
    from core.pipeline.from_ncnn import REFERENCE_FILES, locate_source
    from core.rewrite.driver import plan_file
    src = Path(value).expanduser().resolve()
    files = locate_source(src)
    lines = []
    refs = [f for f in REFERENCE_FILES if (src / f).is_file()]
    traced = files.traced_dir is not None
    if traced:
        where = "" if files.traced_dir == src else f" (in {files.traced_dir.name}/)"
        lines.append(f"✓ traced *.pt files{where}: the numbers are checked against torch")
    elif refs:
        lines.append(f"✓ reference outputs ({', '.join(refs)}): the numbers are checked against them")
    else:
        lines.append("! no reference outputs or traced *.pt: only sherpa-ncnn's decode is checked, not the numbers")
    pnnx_param = files.pnnx_graph
    lines.append(f"✓ {pnnx_param.name} (pnnx's own graph: the rewrites check operator attributes in it)"
                 if pnnx_param else "! no encoder.pnnx.param: rewrites cannot check pnnx's attributes")
    from core.pnnx.graph import shape_mismatches
    bad = shape_mismatches(pnnx_param) if pnnx_param else []
    if bad:
        fix = ("the traced encoder is here: it is converted again" if traced
               else "put the traced encoder_jit_trace-pnnx.pt here to convert it again")
        lines.append(f"✗ pnnx mis-converted this encoder (its shape-inference bug; {bad[0]}): {fix}")
    if arch:
        lines.append((detected or detect_ncnn_graph(value, arch)).message)
    plan = plan_file(files.encoder_param(), arch=arch)
    mark = {"rewrite": "✓", "unchanged": "✓", "refused": "✗"}[plan.action]
    lines.append(f"{mark} rewrite: {plan.summary()}")
    return lines


def ncnn_header_change(src: str, arch: str | None = None) -> str:
    """``N M → N' M' → N'+1 M'``: the rewrite's change, then the metadata line, for existing pnnx output."""
    from core.rewrite.driver import plan_file
    plan = plan_file(ncnn_encoder_param(src), arch=arch)
    if plan.action == "refused":
        return f"{plan.header_before} → (the rewrite refuses: {'; '.join(plan.errors)[:200]})"
    n, m = plan.header_after.split()[:2]
    rewrite = f" → {plan.header_after} after the rewrite" if plan.action == "rewrite" else ""
    return f"{plan.header_before}{rewrite} → {int(n) + 1} {m} with the metadata line"
