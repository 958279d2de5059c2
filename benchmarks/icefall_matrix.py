"""Sweep: real icefall models of many valid configurations through `sherpa-ncnn-wizard run --config`.

Not a test. Given an icefall checkout and the Python that runs it, this samples valid configurations per
architecture (seeded, edge cases first: one-layer Zipformer stacks, 3 and 6 stacks, unequal kernels and
attention dims, decode-chunk-len 16..96, num-left-chunks 1..8; ConvEmformer contexts and memory sizes;
LSTM with rnn-hidden-size == encoder-dim), makes a random-weight checkpoint for each with the recipe's own
train.py (run by the icefall Python), writes a wizard.toml and runs the whole pipeline, one run at a time:

    ICEFALL=<icefall root> ICEFALL_PYTHON=<its venv>/bin/python \\
    nice -n 19 .venv/bin/python benchmarks/icefall_matrix.py --work DIR [--zipformer 12 --conv-emformer 9
        --lstm 9] [--int8-every 3] [--only ID ...] [--list] [--prepare-only] [--table] [--json]

Each run's result is appended to DIR/results.jsonl as soon as it is known (a partial sweep still gives a
table; `--table` prints it without running anything). The table: config id, arch, flags, fp16 and int8
results, the failing step with the first error line of its log, seconds.

The same file is also the checkpoint maker: `ICEFALL_PYTHON icefall_matrix.py _ckpt ...` (run with the
recipe directory as cwd) imports nothing but the standard library at module level, so icefall's venv can
run it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "zipformer": "egs/librispeech/ASR/pruned_transducer_stateless7_streaming",
    "conv-emformer": "egs/librispeech/ASR/conv_emformer_transducer_stateless2",
    "lstm": "egs/librispeech/ASR/lstm_transducer_stateless2",
}
INT8_STEPS = ("fp32-set", "calibrate", "quantize")
DEFAULT_SEED = 11
INT8_COSINE_TARGET = 0.99  # README: int8 vs fp32 cosine, target mean >= 0.99
TRANSIENT_SECONDS = 5.0  # a wizard that dies this fast with a traceback is being edited: retry once
ERROR_LINE = re.compile(r"^error:|Error\b|Exception\b|-\[✗\]|FAILED|Segmentation|signal|Assertion|"
                        r"assert |No such file|not found|refused|cannot|Killed|core dumped", re.IGNORECASE)


# -- configurations ------------------------------------------------------------------------------------------

@dataclass
class MatrixConfig:
    """One configuration: its id, architecture, icefall flags (no dashes) and how the run is asked for."""
    id: str
    arch: str
    flags: dict[str, str]
    int8: bool = False
    tokens_from: str = "bpe_model"  # or "tokens": both [files] forms get exercised
    seed: int = 0
    why: str = ""  # the edge case this one stands for

    def argv_flags(self) -> list[str]:
        out: list[str] = []
        for k, v in self.flags.items():
            out += ["--" + k, str(v)]
        return out

    def short(self) -> str:
        f = self.flags
        if self.arch == "zipformer":
            return (f"L={f['num-encoder-layers']} D={f['encoder-dims'].split(',')[0]} A={f['attention-dims']} "
                    f"H={f['nhead']} K={f['cnn-module-kernels']} ds={f['zipformer-downsampling-factors']} "
                    f"dcl={f['decode-chunk-len']} nlc={f['num-left-chunks']}")
        if self.arch == "conv-emformer":
            return (f"L={f['num-encoder-layers']} D={f['encoder-dim']} H={f['nhead']} K={f['cnn-module-kernel']} "
                    f"lc={f['left-context-length']} cl={f['chunk-length']} rc={f['right-context-length']} "
                    f"mem={f['memory-size']}")
        return f"L={f['num-encoder-layers']} D={f['encoder-dim']} hid={f['rnn-hidden-size']}"


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


_DS_PATTERNS = {2: [(1, 2), (1, 4)], 3: [(1, 2, 4), (1, 2, 2), (1, 4, 2)], 4: [(1, 2, 4, 2), (1, 2, 4, 8)],
                5: [(1, 2, 4, 8, 2), (1, 2, 2, 4, 2)], 6: [(1, 2, 4, 8, 4, 2), (1, 2, 4, 4, 2, 1)]}


def zipformer_config(rng: random.Random, stacks: int, *, layers=None, dcl=None, nlc=None, dim=None,
                     equal_kernels=False) -> dict[str, str]:
    """A valid streaming-Zipformer flag set (all --encoder-dims equal: icefall's ncnn export asserts it)."""
    ds = list(rng.choice(_DS_PATTERNS[stacks]))
    dim = dim or rng.choice([64, 96, 128, 144, 192])
    layers = layers or [rng.choice([1, 1, 2, 2, 3]) for _ in range(stacks)]
    heads, att = [], []
    for _ in range(stacks):
        h = rng.choice([2, 4, 4, 8])
        head_dim = rng.choice([d for d in (8, 12, 16, 24, 32) if h * d <= min(dim, 128)])
        heads.append(h)
        att.append(h * head_dim)
    unmasked = [min(dim, rng.choice([32, 48, 64, 96])) for _ in range(stacks)]
    ff = [rng.choice([128, 192, 256, 384]) for _ in range(stacks)]
    kernels = [31] * stacks if equal_kernels else [rng.choice([3, 7, 15, 31]) for _ in range(stacks)]
    step = 2 * max(ds)  # (dcl / 2) must divide by every downsampling factor
    if dcl is None:
        dcl = rng.choice([c for c in range(16, 97, 16) if c % step == 0])
    joint = rng.choice([64, 96, 128, 192])
    return {
        "decode-chunk-len": str(dcl), "num-left-chunks": str(nlc or rng.randint(1, 8)),
        "num-encoder-layers": _csv(layers), "feedforward-dims": _csv(ff), "nhead": _csv(heads),
        "encoder-dims": _csv([dim] * stacks), "attention-dims": _csv(att), "encoder-unmasked-dims": _csv(unmasked),
        "zipformer-downsampling-factors": _csv(ds), "cnn-module-kernels": _csv(kernels),
        "decoder-dim": str(joint), "joiner-dim": str(joint),
    }


def conv_emformer_config(rng: random.Random, *, layers=None, left=None, chunk=None, right=None,
                         memory=None) -> dict[str, str]:
    """A valid ConvEmformer flag set: contexts multiples of 4, chunk-length / 4 a power of two."""
    dim = rng.choice([64, 96, 128, 144, 192])
    nhead = rng.choice([h for h in (2, 4, 8) if dim % h == 0 and dim // h >= 8])
    return {
        "num-encoder-layers": str(layers or rng.randint(1, 4)), "encoder-dim": str(dim), "nhead": str(nhead),
        "dim-feedforward": str(rng.choice([128, 256, 384])), "cnn-module-kernel": str(rng.choice([3, 7, 15, 31])),
        "left-context-length": str(left if left is not None else rng.choice([4, 8, 16, 32, 64, 128])),
        "chunk-length": str(chunk or rng.choice([4, 8, 16, 32, 64])),
        "right-context-length": str(right if right is not None else rng.choice([4, 8, 12, 16])),
        "memory-size": str(memory if memory is not None else rng.choice([4, 8, 16, 32])),
    }


def lstm_config(rng: random.Random, *, layers=None, dim=None, hidden=None) -> dict[str, str]:
    """A valid LSTM flag set (rnn-hidden-size >= encoder-dim; equal means an LSTM without projection)."""
    dim = dim or rng.choice([64, 96, 128, 192])
    hidden = hidden or rng.choice([h for h in (64, 96, 128, 192, 256, 384) if h >= dim])
    return {"num-encoder-layers": str(layers or rng.randint(1, 4)), "encoder-dim": str(dim),
            "rnn-hidden-size": str(hidden)}


def sample(seed: int, n_zip: int, n_emf: int, n_lstm: int, int8_every: int) -> list[MatrixConfig]:
    """Edge cases first, then seeded random fill; every `int8_every`-th config of an arch also runs --int8."""
    rng = random.Random(seed)
    zips = [
        ("one-layer stacks (1,2,1)", lambda: zipformer_config(rng, 3, layers=[1, 2, 1], nlc=4)),
        ("3 stacks, all one layer, dcl 16", lambda: zipformer_config(rng, 3, layers=[1, 1, 1], dcl=16, nlc=1)),
        ("6 stacks", lambda: zipformer_config(rng, 6, layers=[2, 1, 2, 1, 2, 1], dcl=32, nlc=8)),
        ("5 stacks, equal kernels, dcl 96", lambda: zipformer_config(rng, 5, dcl=96, equal_kernels=True)),
        ("2 stacks, dim 64", lambda: zipformer_config(rng, 2, dim=64)),
        ("6 stacks, one-layer, dim 192", lambda: zipformer_config(rng, 6, layers=[1] * 6, dim=192, dcl=64)),
    ]
    emfs = [
        ("one layer, left 4, mem 4", lambda: conv_emformer_config(rng, layers=1, left=4, memory=4)),
        ("chunk 4 (1 frame after subsampling)", lambda: conv_emformer_config(rng, chunk=4, right=4)),
        ("chunk 64, left 128, mem 32", lambda: conv_emformer_config(rng, layers=4, left=128, chunk=64, memory=32)),
        ("memory size 0 (icefall's default)", lambda: conv_emformer_config(rng, layers=2, memory=0)),
    ]
    lstms = [
        ("hidden == dim (no projection)", lambda: lstm_config(rng, layers=2, dim=128, hidden=128)),
        ("one layer", lambda: lstm_config(rng, layers=1)),
        ("4 layers, hidden == dim 64", lambda: lstm_config(rng, layers=4, dim=64, hidden=64)),
    ]
    out: list[MatrixConfig] = []
    for arch, fixed, count, rand in (
            ("zipformer", zips, n_zip, lambda: zipformer_config(rng, rng.choice([2, 3, 3, 4, 5, 6]))),
            ("conv-emformer", emfs, n_emf, lambda: conv_emformer_config(rng)),
            ("lstm", lstms, n_lstm, lambda: lstm_config(rng))):
        prefix = {"zipformer": "zip", "conv-emformer": "emf", "lstm": "lstm"}[arch]
        for i in range(count):
            why, make = fixed[i] if i < len(fixed) else ("random", rand)
            flags = make()
            tag = "" if seed == DEFAULT_SEED else f"s{seed}-"  # other seeds never reuse the default's ids
            out.append(MatrixConfig(id=f"{tag}{prefix}{i:02d}", arch=arch, flags=flags,
                                    int8=int8_every > 0 and i % int8_every == int8_every - 1,
                                    tokens_from="tokens" if i % 2 else "bpe_model",
                                    seed=rng.randrange(1 << 16), why=why))
    return out


# -- one run -------------------------------------------------------------------------------------------------

@dataclass
class Result:
    """What one configuration gave; one line of results.jsonl."""
    id: str
    arch: str
    flags: str
    int8: bool
    fp16: str  # PASS / FAIL / not run
    int8_result: str  # PASS / FAIL / not run / - (not asked)
    step: str = ""  # the failing step
    error: str = ""  # its first error line
    seconds: float = 0.0
    exit_code: int | None = None
    why: str = ""
    checks: dict = field(default_factory=dict)
    out: str = ""
    when: str = ""
    rev: str = ""  # the wizard's git HEAD (+ "-dirty" when its tree had uncommitted changes)


def make_checkpoint(cfg: MatrixConfig, icefall: Path, python: str, bpe: Path, cdir: Path) -> tuple[bool, str]:
    """exp/pretrained.pt from the recipe's train.py, run by icefall's python; (ok, first error line)."""
    target = cdir / "exp" / "pretrained.pt"
    if target.exists() and (cdir / "flags.json").exists() and \
            json.loads((cdir / "flags.json").read_text()) == {"flags": cfg.flags, "seed": cfg.seed}:
        return True, ""
    target.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(icefall), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    argv = [python, str(Path(__file__).resolve()), "_ckpt", "--bpe", str(bpe), "--out", str(target),
            "--seed", str(cfg.seed), "--arch", cfg.arch, "--", *cfg.argv_flags()]
    proc = subprocess.run(argv, cwd=icefall / RECIPES[cfg.arch], env=env, capture_output=True, text=True)
    (cdir / "ckpt.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not target.exists():
        return False, first_error_line((proc.stdout + proc.stderr).splitlines()) or f"exit {proc.returncode}"
    (cdir / "flags.json").write_text(json.dumps({"flags": cfg.flags, "seed": cfg.seed}))
    return True, ""


def _seconds(wav: Path) -> float:
    import wave
    with wave.open(str(wav)) as w:
        return w.getnframes() / w.getframerate()


def write_wizard_toml(cfg: MatrixConfig, icefall: Path, python: str, kit_lang: Path, wavs: list[Path],
                      cdir: Path, min_cal_seconds: float = 0.0) -> Path:
    """The wizard.toml of README's `run` section (absolute paths: it lives in the scratch work dir)."""
    def q(s) -> str:
        return json.dumps(str(s))
    hp = "\n".join(f"{k} = {q(v)}" for k, v in cfg.flags.items())
    tok = (f"bpe_model = {q(kit_lang / 'bpe.model')}" if cfg.tokens_from == "bpe_model"
           else f"tokens = {q(kit_lang / 'tokens.txt')}")
    wav_list = "[" + ", ".join(q(w) for w in wavs) + "]"
    cal = [w for w in wavs if _seconds(w) >= min_cal_seconds]
    cal_list = "[" + ", ".join(q(w) for w in cal) + "]"
    text = (f"arch = {q(cfg.arch)}\n\n[hyperparameters]\n{hp}\n\n[files]\n"
            f"recipe = {q(icefall / RECIPES[cfg.arch])}\ncheckpoint = {q(cdir / 'exp' / 'pretrained.pt')}\n"
            f"{tok}\npython = {q(python)}\n\n[output]\ndir = {q(cdir / 'out')}\nint8 = {str(cfg.int8).lower()}\n\n"
            f"[calibration]\nwavs = {cal_list}\n\n[validation]\nwavs = {wav_list}\n")
    path = cdir / "wizard.toml"
    path.write_text(text)
    return path


def first_error_line(lines: list[str]) -> str:
    """The first line that reads like an error (a Traceback's exception line, `error:`, a ✗ check)."""
    for line in lines:
        s = line.strip()
        if s and not s.startswith("$ ") and ERROR_LINE.search(s) and "warning" not in s.lower():
            return s[:300]
    return ""


def summarise(cfg: MatrixConfig, out: Path, rc: int | None, console: str, seconds: float) -> Result:
    """Read OUT/manifest.json, the failing step's log and validation.json into one Result."""
    res = Result(cfg.id, cfg.arch, cfg.short(), cfg.int8, "not run", "not run" if cfg.int8 else "-",
                 seconds=round(seconds, 1), exit_code=rc, why=cfg.why, out=str(out),
                 when=time.strftime("%Y-%m-%d %H:%M:%S"))
    manifest = _json(out / "manifest.json")
    if manifest is None and "The run cannot start" in console:  # refused at plan time (exit 2), nothing ran
        res.step = "plan (refused)"
        res.fp16 = "REFUSED"
        res.int8_result = "REFUSED" if cfg.int8 else "-"
        res.error = next((ln.strip() for ln in console.splitlines() if "✗" in ln), first_error_line(
            console.splitlines()))[:300]
        return res
    if manifest is None:  # the tool itself died: the last step log it opened names the step
        logs = sorted((out / "logs").glob("[0-9][0-9]-*.log"))
        step = logs[-1].stem[3:] if logs else ""
        res.step = (step or "?") + " (no manifest)"
        how = f"killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit {rc}"
        tail = logs[-1].read_text(errors="replace").strip().splitlines() if logs else []
        detail = (first_error_line(tail) or ("step log ends: " + " | ".join(tail[-2:]) if tail else
                  f"its log {logs[-1].name} is empty" if logs else "console: " + " | ".join(console.splitlines()[-2:])))
        res.error = f"{how}; {detail}"[:300]
        if cfg.int8 and step in INT8_STEPS:
            res.int8_result = "FAIL"
        else:
            res.fp16 = "FAIL"
        return res
    steps = manifest.get("steps", [])
    failed = next((s for s in steps if s.get("status") not in ("ok", "skipped", "not run")), None)
    if failed:
        res.step = failed["id"]
        index = steps.index(failed) + 1
        log = out / "logs" / f"{index:02d}-{failed['id']}.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        res.error = first_error_line(lines) or (failed.get("error") or "")[:300]
    report = _json(out / "validation.json")
    if report is not None:
        fp16_bad, int8_bad = classify_validation(report, res.checks)
        res.fp16 = "FAIL" if fp16_bad else "PASS"
        if cfg.int8:
            res.int8_result = "FAIL" if int8_bad else "PASS"
            low = {k: v for k, v in (res.checks.get("int8_cosine") or {}).items() if v < INT8_COSINE_TARGET}
            if res.int8_result == "PASS" and low:
                res.int8_result = "PASS*"  # the tool passes it, but the output is off (README target: mean >= 0.99)
                res.checks["int8_below_target"] = low
        if not report.get("ok", True) and not fp16_bad and not int8_bad:
            res.fp16 = "FAIL"
            fp16_bad = ["validation FAILED (no failed check recognised in validation.json)"]
        res.checks["failed"] = fp16_bad + int8_bad
        res.checks["notes"] = report.get("notes", [])[:3]
        if not res.error and (fp16_bad or int8_bad):
            res.error = (fp16_bad + int8_bad)[0][:300]
    elif failed:
        if cfg.int8 and failed["id"] in INT8_STEPS:
            res.int8_result = "FAIL"
        else:
            res.fp16 = "FAIL"
    if manifest.get("status") == "ok" and rc == 0 and report is None:
        res.fp16 = "PASS?"  # ran to the end without validation.json
    return res


def classify_validation(report: dict, checks: dict) -> tuple[list[str], list[str]]:
    """validation.json -> (what failed for the fp16 set, what failed for the int8 set); fills ``checks``
    with the figures the table shows: numeric checks passed, token agreement, int8 cosine."""
    fp16_bad: list[str] = []
    int8_bad: list[str] = []
    numeric = report.get("numeric") or []
    checks["numeric"] = f"{sum(1 for n in numeric if n.get('ok'))}/{len(numeric)}"
    for n in numeric:
        if not n.get("ok"):
            fp16_bad.append(f"numeric {n.get('net')} {n.get('output', '')}: "
                            f"{n.get('error') or 'max abs %s > %s' % (n.get('max_abs'), n.get('tolerance'))}")
    if not numeric:
        fp16_bad.append("numeric check did not run")
    for key, bad in (("decode", fp16_bad), ("decode_int8", int8_bad)):
        d = report.get(key)
        if d is not None and not d.get("ok"):
            bad.append(f"{key}: {d.get('error')}")
    rates: dict[str, list[float]] = {}
    for a in report.get("agreement") or []:
        model = a.get("model") or "fp16"
        if "error" in a:
            (int8_bad if model == "int8" else fp16_bad).append(f"agreement {model}: {a['error']}")
            continue
        # a match reached through near ties (the guided decode) counts as full agreement
        rates.setdefault(model, []).append(1.0 if a.get("match") else float(a.get("rate", 0.0)))
        if a.get("near_ties"):
            checks[f"near_ties_{model}"] = checks.get(f"near_ties_{model}", 0) + len(a["near_ties"])
        if model != "int8" and not a.get("match"):
            d = a.get("first_divergence") or {}
            fp16_bad.append(f"agreement fp16 {Path(a.get('wav', '')).name}: first divergence at token "
                            f"{d.get('index')} (torch {d.get('torch_token')}, sherpa-ncnn {d.get('sherpa_token')}"
                            f"{', margin %.3g' % d['margin'] if isinstance(d.get('margin'), (int, float)) else ''})")
    for model, r in rates.items():
        checks[f"agreement_{model}"] = round(min(r), 3)
    sims = report.get("int8_similarity") or []
    if sims:
        checks["int8_cosine"] = {f"{s.get('net')}": round(s.get("mean_cosine", 0.0), 4) for s in sims}
    if report.get("decode") is None:
        fp16_bad.append("no sherpa-ncnn decode")
    return fp16_bad, int8_bad


def _same_run(row: dict, console: Path) -> bool:
    """Whether the files under the config's dir are still the run this row describes (a later run, maybe
    recorded in another results file, rewrites them): its console.log is no newer than the row."""
    try:
        when = time.mktime(time.strptime(row.get("when", ""), "%Y-%m-%d %H:%M:%S"))
        return console.stat().st_mtime <= when + 5
    except (OSError, ValueError, OverflowError):
        return False


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_one(cfg: MatrixConfig, args, kit_lang: Path, wavs: list[Path]) -> Result:
    cdir = args.work / cfg.id
    cdir.mkdir(parents=True, exist_ok=True)
    (cdir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    t0 = time.monotonic()
    ok, err = make_checkpoint(cfg, args.icefall, args.python, kit_lang / "bpe.model", cdir)
    if not ok:
        return Result(cfg.id, cfg.arch, cfg.short(), cfg.int8, "not run", "not run" if cfg.int8 else "-",
                      step="checkpoint (icefall train.py)", error=err, seconds=round(time.monotonic() - t0, 1),
                      why=cfg.why, when=time.strftime("%Y-%m-%d %H:%M:%S"))
    if args.prepare_only:
        return None  # type: ignore[return-value]
    toml = write_wizard_toml(cfg, args.icefall, args.python, kit_lang, wavs, cdir, args.min_calibration_seconds)
    out = cdir / "out"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["nice", "-n", "19", str(args.wizard), "run", "--config", str(toml), "--out", str(out)]
    if cfg.int8:
        argv.append("--int8")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=dict(os.environ, NO_COLOR="1"))
    try:
        console, _ = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # the run's own process group (we started it)
        try:
            console, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            console, _ = proc.communicate()
        console += f"\nerror: timed out after {args.timeout} s"
    (cdir / "console.log").write_text(console)
    return summarise(cfg, out, proc.returncode, console, time.monotonic() - t0)


# -- table ---------------------------------------------------------------------------------------------------

def wizard_rev() -> str:
    """Which wizard code a run used: HEAD, marked dirty when core/ or tui/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "core", "tui"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""
    return head + ("-dirty" if dirty else "")


def load_results(path: Path) -> list[dict]:
    """results.jsonl, the last line per config id winning, in first-seen order."""
    latest: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            latest[row["id"]] = row
    return list(latest.values())


def _order(row: dict) -> tuple:
    """Seed tag, then architecture, then number: the order --list prints."""
    tag, _, name = row["id"].rpartition("-")
    arch = next((i for i, p in enumerate(("zip", "emf", "lstm")) if name.startswith(p)), 3)
    return tag, arch, name


def table(rows: list[dict]) -> str:
    rows = sorted(rows, key=_order)
    head = ("id", "arch", "int8", "fp16", "int8 res", "agree", "i8 cos/agree", "s", "step", "first error line",
            "flags")

    def pct(v):
        return "" if v is None else f"{v:.0%}"

    def quality(r):  # the worst int8 output's mean cosine (e = encoder, j = joiner) / int8 token agreement
        c = r.get("checks") or {}
        cos = c.get("int8_cosine") or {}
        worst = min(cos, key=cos.get) if cos else None
        return "" if worst is None and "agreement_int8" not in c else \
            f"{'' if worst is None else f'{worst[0]}{cos[worst]:.3f}'}/{pct(c.get('agreement_int8'))}"

    body = [(r["id"], r["arch"], "y" if r["int8"] else "", r["fp16"], r["int8_result"],
             pct((r.get("checks") or {}).get("agreement_fp16")), quality(r), f"{r['seconds']:.0f}",
             r.get("step", ""), (r.get("error") or "")[:110], r["flags"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    fmt = lambda row: " | ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    lines = [fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in body]
    n = len(rows)
    fp = sum(r["fp16"] == "PASS" for r in rows)
    i8 = [r for r in rows if r["int8"]]
    lines.append(f"\n{n} configurations: fp16 PASS {fp}/{n}; int8 PASS "
                 f"{sum(r['int8_result'].startswith('PASS') for r in i8)}/{len(i8)} "
                 f"(PASS* = the tool passed it but an int8 output's mean cosine is below {INT8_COSINE_TARGET})")
    return "\n".join(lines)


# -- checkpoint maker (runs under icefall's python, cwd = the recipe directory) ------------------------------

def ckpt_main(argv: list[str]) -> int:
    """Random-weight {"model": state_dict} from the recipe's train.py: get_params + get_transducer_model."""
    import importlib
    import inspect

    p = argparse.ArgumentParser(prog="icefall_matrix.py _ckpt")
    p.add_argument("--bpe", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", required=True)
    a, flags = p.parse_known_args(argv)
    flags = [f for f in flags if f != "--"]

    import sentencepiece as spm
    import torch

    sys.path.insert(0, os.getcwd())
    train = importlib.import_module("train")
    parser = train.get_parser()
    args, rest = parser.parse_known_args(flags)
    if rest:
        print(f"error: train.py does not take {rest}", file=sys.stderr)
        return 2
    params = train.get_params()
    params.update(vars(args))
    sp = spm.SentencePieceProcessor()
    sp.load(a.bpe)
    params.blank_id = sp.piece_to_id("<blk>")
    params.vocab_size = sp.get_piece_size()
    torch.manual_seed(a.seed)
    kwargs = {}
    if "enable_giga" in inspect.signature(train.get_transducer_model).parameters:
        kwargs["enable_giga"] = False  # what export.py / export-for-ncnn.py build: no giga heads
    model = train.get_transducer_model(params, **kwargs)
    n = sum(t.numel() for t in model.parameters())
    tmp = a.out + ".tmp"
    torch.save({"model": model.state_dict()}, tmp)
    os.replace(tmp, a.out)
    print(f"saved {a.out}: {n} parameters, vocab {params.vocab_size}")
    return 0


# -- main ----------------------------------------------------------------------------------------------------

def main(argv: list[str]) -> int:
    if argv[:1] == ["_ckpt"]:
        return ckpt_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--icefall", type=Path, default=os.environ.get("ICEFALL"),
                   help="icefall root (the folder with egs/ and icefall/); default $ICEFALL")
    p.add_argument("--python", default=os.environ.get("ICEFALL_PYTHON"),
                   help="the python with torch, lhotse, sentencepiece, k2 for icefall; default $ICEFALL_PYTHON")
    p.add_argument("--work", type=Path, default=Path(os.environ.get("ICEFALL_MATRIX_WORK", "icefall-matrix")),
                   help="where checkpoints, configs and run outputs go (default $ICEFALL_MATRIX_WORK or "
                        "./icefall-matrix)")
    p.add_argument("--kit", type=Path, default=REPO.parent / "shared" / "fixtures" / "icefall-kit",
                   help="folder whose */bpe.model and */tokens.txt are used (vocab 50)")
    p.add_argument("--wizard", type=Path, default=REPO / ".venv" / "bin" / "sherpa-ncnn-wizard",
                   help="the sherpa-ncnn-wizard to test (default: this checkout's .venv)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"sampling seed (default {DEFAULT_SEED}; other seeds tag their ids, e.g. s12-zip00)")
    p.add_argument("--zipformer", type=int, default=12, help="how many Zipformer configurations (edge cases first)")
    p.add_argument("--conv-emformer", type=int, default=9, help="how many ConvEmformer configurations")
    p.add_argument("--lstm", type=int, default=9, help="how many LSTM configurations")
    p.add_argument("--int8-every", type=int, default=3, help="every N-th config of an arch also runs --int8")
    p.add_argument("--only", nargs="*", default=None, help="config ids to run (see --list)")
    p.add_argument("--skip-done", action="store_true", help="skip ids already in results.jsonl")
    p.add_argument("--results", type=Path, default=None, help="JSON lines file (default WORK/results.jsonl)")
    p.add_argument("--min-calibration-seconds", type=float, default=0.0,
                   help="calibrate only on the demo wavs at least this long (the wizard refuses a run when one "
                        "calibration wav is shorter than a chunk; 2-noise.wav is 1.0 s)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run")
    p.add_argument("--list", action="store_true", help="print the sampled configurations and exit")
    p.add_argument("--prepare-only", action="store_true", help="make the checkpoints only")
    p.add_argument("--table", action="store_true", help="print the table of results.jsonl and exit")
    p.add_argument("--refresh", action="store_true", help="with --table: summarise each run's OUT dir again")
    p.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    args = p.parse_args(argv)

    configs = sample(args.seed, args.zipformer, args.conv_emformer, args.lstm, args.int8_every)
    results_path = args.results or args.work / "results.jsonl"
    if args.list:
        for c in configs:
            print(f"{c.id:7} {c.arch:14} int8={'y' if c.int8 else 'n'} {c.tokens_from:9} {c.short()}  [{c.why}]")
        return 0
    if args.table:
        rows = load_results(results_path)
        if args.refresh:  # read each run's OUT again with this version of the summary
            for i, r in enumerate(rows):
                out = Path(r.get("out") or "")
                saved = _json(out.parent / "config.json") if r.get("out") else None  # any seed's config
                cfg = MatrixConfig(**saved) if saved else None
                if cfg is not None and r.get("out") and r.get("exit_code") is not None and \
                        _same_run(r, out.parent / "console.log"):
                    console = (out.parent / "console.log").read_text(errors="replace") \
                        if (out.parent / "console.log").exists() else ""
                    fresh = asdict(summarise(cfg, out, r["exit_code"], console, r["seconds"]))
                    fresh.update(when=r.get("when", ""), rev=r.get("rev", ""))
                    rows[i] = fresh
        print(json.dumps(rows, indent=2) if args.json else table(rows))
        return 0
    if not args.icefall or not (Path(args.icefall) / "egs").is_dir():
        p.error("--icefall (or $ICEFALL) must name an icefall checkout (a folder with egs/)")
    if not args.python or not Path(args.python).exists():
        p.error("--python (or $ICEFALL_PYTHON) must name the python of an icefall venv")
    args.icefall = Path(args.icefall).resolve()
    args.work = args.work.resolve()
    langs = sorted(args.kit.glob("*/bpe.model"))
    if not langs:
        p.error(f"no */bpe.model under {args.kit}")
    kit_lang = langs[0].parent
    wavs = sorted((REPO / "assets" / "demo" / "test_wavs").glob("*.wav"))
    if args.only:
        unknown = set(args.only) - {c.id for c in configs}
        if unknown:
            p.error(f"unknown config ids {sorted(unknown)}; see --list")
        configs = [c for c in configs if c.id in args.only]
    if args.skip_done:
        done = {r["id"] for r in load_results(results_path)}
        configs = [c for c in configs if c.id not in done]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, cfg in enumerate(configs, 1):
        print(f"[{time.strftime('%H:%M:%S')}] {i}/{len(configs)} {cfg.id} {cfg.arch} "
              f"{'--int8 ' if cfg.int8 else ''}{cfg.short()}", file=sys.stderr, flush=True)
        rev = wizard_rev()  # taken before the run: others may commit while it runs
        res = run_one(cfg, args, kit_lang, wavs)
        if res is None:  # --prepare-only
            continue
        if res.step.endswith("(no manifest)") and res.seconds < TRANSIENT_SECONDS and "Error" in res.error:
            print(f"    the wizard itself failed at start ({res.error[:100]}); retrying in 60 s",
                  file=sys.stderr, flush=True)
            time.sleep(60)
            rev = wizard_rev()
            res = run_one(cfg, args, kit_lang, wavs)
        res.rev = rev
        row = asdict(res)
        rows.append(row)
        with open(results_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"    fp16 {res.fp16}  int8 {res.int8_result}  {res.seconds:.0f}s  {res.step} {res.error[:120]}",
              file=sys.stderr, flush=True)
    if rows:
        print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
