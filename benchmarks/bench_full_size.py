"""Benchmark: the whole pipeline at the published size, every step against the run's floor.

Not a test. Run from the repository root (one at a time, under nice, on a shared machine):

    .venv/bin/python benchmarks/bench_full_size.py ARCH [--int8] [--json] [--keep DIR]
        [--icefall ICEFALL_ROOT --python ICEFALL_VENV/bin/python]

Builds the demo recipe's model at icefall's published size (the recipe's default
flags, random weights: assets/demo/make_demo_assets.py make_checkpoint), writes a
wizard.toml and runs ``sherpa-ncnn-wizard run --config`` in a child process, then
reads each step's wall seconds, CPU seconds and peak RSS from the run's
manifest.json. The floor is what no pipeline can avoid, measured on this same run's files:
the export script (its step's wall: nothing runs beside it) + the pnnx conversions (each
step's command run again after the run, alone and one after another: in the run some of
them share the cores with background steps) + (with --int8) calibration's bare ncnn
forward passes over the calibration audio (benchmarks/bench_calibrate.py forward_floor
on the run's own fp32 set). Prints total / floor.

With --icefall/--python the same run uses a real icefall checkout instead of the demo
recipe: the checkpoint is built by the real recipe's own train.py (run by the icefall
python; benchmarks/icefall_matrix.py make_checkpoint) at the published size, and the
wizard.toml names the real recipe and that python, so the real export script runs
(icefall_matrix.py write_wizard_toml). Recipes: icefall_matrix.RECIPES; sizes: the
recipe's defaults plus PUBLISHED_FLAGS (ConvEmformer 2022-07-05: RESULTS.md's train command
is the defaults with --memory-size 32). Tokens, calibration and validation audio and
transcripts are the demo's, so both runs differ only in the recipe.

``total`` is the run's own wall time (manifest.json's top-level ``seconds``: the runner's
start to end, including the few tenths between steps). Steps may run in the background
beside others, so their walls overlap and ``steps_sum`` (the sum of step walls) can
exceed ``total``; the validation share (the CHECK_STEPS' walls over ``total``) counts an
overlapped (background) step's full wall.

--json prints one object: ``steps`` ({name: {wall, cpu, peak_mb}}), ``total``, ``steps_sum``,
``floor``, ``ratio`` (total / floor) (and ``floor_parts``, ``load``, ``validation`` (the validate
step's own timings), ``validation_share``, ``validation_critical`` (seconds) and ``validation_critical_share``
(what validation adds to the run's wall: ``total`` minus the other steps' walls, which run one after another),
``validation_cpu_share`` (the checks' CPU seconds over every step's),
``peaks_above_export``, ``recipe``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the published ConvEmformer (2022-07-05) keeps a memory of 32 entries; the recipe's default is 0
PUBLISHED_FLAGS = {"conv-emformer": "--memory-size 32"}
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from icefall_matrix import RECIPES  # noqa: E402  (the real recipes --icefall runs)
# what "validation" costs: the checks a run adds (with --int8 the fp16 validate runs in the background and
# validate-int8 beside it from quantization's end, validation-report joining the two)
CHECK_STEPS = ("validate", "int8-reference", "validate-int8", "validation-report", "speed", "dataset-wer")


def write_config(arch: str, tmp: Path, int8: bool, flags: list[str] | None = None) -> Path:
    """wizard.toml for the demo recipe at the published size (no flags = the recipe's defaults; ``flags``:
    '--name value' pairs where the published model differs from the recipe's defaults)."""
    import shutil
    sys.path.insert(0, str(ROOT / "assets" / "demo"))
    from make_demo_assets import make_checkpoint
    from core.pipeline.demo import demo_config, demo_recipe
    tokens = tmp / "tokens.txt"
    shutil.copy(demo_recipe(arch).bpe_model.with_name("tokens.txt"), tokens)
    config = demo_config(arch)
    flags = flags or []
    config.files.checkpoint = str(make_checkpoint(arch, flags, tokens, tmp / "pretrained.pt"))
    config.hyperparameters = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
    config.output.int8 = int8
    config.save(tmp / "wizard.toml")
    return tmp / "wizard.toml"


def write_icefall_config(arch: str, tmp: Path, int8: bool, flags: list[str], icefall: Path,
                         python: str) -> Path:
    """wizard.toml for the real icefall recipe at the published size: checkpoint from icefall's own
    train.py and the config icefall_matrix.py writes, with the demo's calibration and validation audio."""
    from icefall_matrix import MatrixConfig, make_checkpoint, write_wizard_toml
    from core.pipeline.config import load_config
    from core.pipeline.demo import demo_config, demo_recipe
    lang = demo_recipe(arch).bpe_model.parent  # the demo's bpe.model and tokens.txt (same vocab as the demo run)
    cfg = MatrixConfig(id=f"full-{arch}", arch=arch, int8=int8, tokens_from="bpe_model",
                       flags={flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)})
    ok, err = make_checkpoint(cfg, icefall, python, lang / "bpe.model", tmp)
    if not ok:
        log = (tmp / "ckpt.log").read_text(errors="replace") if (tmp / "ckpt.log").exists() else ""
        sys.stderr.write(log[-3000:])
        raise SystemExit(f"icefall's train.py could not build the checkpoint: {err}")
    path = write_wizard_toml(cfg, icefall, python, lang, [], tmp)
    config, demo = load_config(path), demo_config(arch)
    config.calibration.wavs = demo.calibration.wavs
    config.validation.wavs, config.validation.transcripts = demo.validation.wavs, demo.validation.transcripts
    config.save(path)
    return path


def run_pipeline(config: Path, out: Path) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tui.cli.main", "run", "--config", str(config), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    manifest_path = out / "manifest.json"
    if r.returncode != 0 or not manifest_path.exists():
        sys.stderr.write(r.stdout[-3000:] + r.stderr[-3000:])
        raise SystemExit(f"the run failed (exit {r.returncode}); see above")
    return wall, json.loads(manifest_path.read_text())


def floor_pnnx(manifest: dict) -> dict[str, float]:
    """Each pnnx conversion of the run again, alone and one after another (the same command, so the same files
    again): with --int8 some steps run beside others, so their walls in the run include the sharing of the cores,
    and the floor is what the bare tools cost on their own."""
    import shlex
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    walls = {}
    for s in manifest["steps"]:
        if s["id"].startswith("pnnx-") and s.get("command"):
            t0 = time.perf_counter()
            subprocess.run(shlex.split(s["command"]), cwd=ROOT, env=env, capture_output=True, check=True)
            walls[s["id"]] = time.perf_counter() - t0
    return walls


def floor_forward(out: Path, wavs: list[Path]) -> float:
    """Calibration's bare forward passes on the run's fp32 set, in a fresh process (as calibration runs)."""
    code = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks'];"
            "from bench_calibrate import forward_floor; from core.pipeline.layout import Layout, fp32_model_files;"
            "print(forward_floor(fp32_model_files(Layout(Path(sys.argv[2]))), [Path(w) for w in sys.argv[3:]]))")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT), str(out), *map(str, wavs)], capture_output=True,
                       text=True, check=True)
    return float(r.stdout.split()[-1])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("arch")
    p.add_argument("--int8", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep", type=Path, help="keep the run directory here")
    p.add_argument("--flags", default=None,
                   help="model flags where the published model differs from the recipe's defaults (default: "
                        f"{PUBLISHED_FLAGS})")
    p.add_argument("--icefall", type=Path, help="a real icefall checkout (the folder with egs/): run its recipe "
                                                  "instead of the demo's")
    p.add_argument("--python", help="with --icefall: the python of icefall's venv (runs train.py and the export)")
    a = p.parse_args()
    from core.model.architectures import get_arch
    try:
        a.arch = get_arch(a.arch).name
    except KeyError as exc:  # an unknown name: the architectures module's own sentence
        p.error(exc.args[0])
    if a.icefall is not None:
        if not (a.icefall / "egs").is_dir():
            p.error(f"--icefall {a.icefall}: not an icefall checkout (no egs/ in it)")
        if not a.python or not Path(a.python).is_file():
            p.error("--icefall needs --python: the python of icefall's venv (with torch, k2, lhotse)")
        a.icefall = a.icefall.resolve()
    flags = (a.flags if a.flags is not None else PUBLISHED_FLAGS.get(a.arch, "")).split()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.icefall is not None:
            config = write_icefall_config(a.arch, tmp, a.int8, flags, a.icefall, a.python)
        else:
            config = write_config(a.arch, tmp, a.int8, flags)
        out = a.keep or tmp / "run"
        wall, manifest = run_pipeline(config, out)
        steps = {}
        for s in manifest["steps"]:
            if s.get("seconds") is None:
                continue
            steps[s["id"]] = {"wall": s["seconds"], "cpu": s.get("cpu_seconds"), "peak_mb": s.get("peak_mb"),
                              "background": bool(s.get("background"))}
        parts = {"export": steps["export"]["wall"], **floor_pnnx(manifest)}  # the export runs alone
        if a.int8:
            from core.pipeline.config import load_config
            wavs = [Path(w) for w in load_config(config).calibration.wavs]
            parts["calibration forward passes"] = floor_forward(out, wavs)
        validation_parts = {}
        vj = out / "validation.json"
        if vj.exists():
            validation_parts = json.loads(vj.read_text()).get("timings", {})
    steps_sum = sum(v["wall"] for v in steps.values())
    total = manifest.get("seconds") or steps_sum  # the runner's own start-to-end wall (older manifests: the sum)
    floor = sum(parts.values())
    checks = sum(v["wall"] for k, v in steps.items() if k in CHECK_STEPS)
    # what validation adds to the run's wall: the run minus the other steps, which run one after another (a
    # background check overlaps them; the few tenths between steps are counted as validation's)
    others = sum(v["wall"] for k, v in steps.items() if k not in CHECK_STEPS and not v["background"])
    critical = max(0.0, total - others)
    cpu_all = sum(v["cpu"] or 0.0 for v in steps.values())
    cpu_checks = sum(v["cpu"] or 0.0 for k, v in steps.items() if k in CHECK_STEPS)
    export_peak = (steps.get("export") or {}).get("peak_mb")
    above = {k: v["peak_mb"] for k, v in steps.items()
             if export_peak is not None and v["peak_mb"] is not None and v["peak_mb"] > export_peak}
    recipe = "icefall " + RECIPES[a.arch] if a.icefall is not None else "demo"
    result = {"arch": a.arch, "int8": a.int8, "recipe": recipe, "steps": steps, "total": round(total, 2),
              "steps_sum": round(steps_sum, 2), "floor": round(floor, 2),
              "ratio": round(total / floor, 3), "floor_parts": {k: round(v, 2) for k, v in parts.items()},
              "run_wall": round(wall, 2), "load": [round(x, 2) for x in (load + os.getloadavg())],
              "validation": validation_parts, "validation_share": round(checks / total, 3),
              "validation_critical": round(critical, 2), "validation_critical_share": round(critical / total, 3),
              "validation_cpu_share": round(cpu_checks / cpu_all, 3) if cpu_all else None,
              "peaks_above_export": above}
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{a.arch} at the published size{' --int8' if a.int8 else ''}, {recipe} recipe "
          f"(load average before {load[0]:.2f}, "
          f"after {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores)")
    print(f"  {'step':24} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
    for name, v in steps.items():
        cpu = f"{v['cpu']:.1f}" if v["cpu"] is not None else "-"
        peak = f"{v['peak_mb']:.0f}" if v["peak_mb"] is not None else "-"
        print(f"  {name:24} {v['wall']:8.1f} {cpu:>8} {peak:>8}")
    for name, seconds in validation_parts.items():
        print(f"    validate: {name:22} {seconds:8.1f}")
    print(f"  total {total:.1f} s (the run's wall; step walls sum to {steps_sum:.1f} s)")
    print(f"  validation {checks / total:.0%} of the total ("
          + " + ".join(f"{k} {steps[k]['wall'] / total:.0%}" for k in CHECK_STEPS if k in steps)
          + f"); floor {floor:.1f} s = "
          + " + ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"  validation on the critical path {critical:.1f} s = {critical / total:.0%} of the total (the total "
          f"minus the other steps; background checks overlap them); {cpu_checks / cpu_all:.0%} of the run's CPU "
          f"seconds")
    print(f"  total / floor = {total / floor:.2f}")
    print("  peak RSS above the export step's " + (f"({export_peak:.0f} MB): " + ", ".join(
        f"{k} {v:.0f} MB" for k, v in above.items()) if above else "none") if export_peak else
          "  no export peak recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
