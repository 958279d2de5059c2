"""The steps that turn a validated run into something to hand over: test wavs and bench.py, the speed table, the
per-layer int8 report, the model card, and (with --package) an archive laid out like sherpa-ncnn's releases.

The plan builders (core.pipeline.plan, core.pipeline.from_ncnn) add them with :func:`ship_steps` after validation and
:func:`make_package_step` after the summary.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import tarfile
import wave
from pathlib import Path

from core.common.atomic import atomic_write_bytes, temp_name
from core.pipeline.runner import Step, StepCancelled, StepContext, StepError

NETS = ("encoder", "decoder", "joiner")
SPEED_FILE = "speed.json"
LAYERS_FILE = "int8-layers.json"
CARD_FILE = "README.md"
BENCH_FILE = "bench.py"
DATASET_FILE = "dataset-wer.json"


def test_wav_names(wavs: list[Path]) -> list[str]:
    """Names under OUT/test_wavs: the wavs' own names, made unique."""
    names, seen = [], set()
    for w in wavs:
        stem, name, k = Path(w).stem, Path(w).stem + ".wav", 1
        while name in seen:
            name, k = f"{stem}-{k}.wav", k + 1
        seen.add(name)
        names.append(name)
    return names


def _model_files(layout, int8: bool) -> list[Path]:
    files = [layout.final(n, e) for n in NETS for e in ("param", "bin")] + [layout.tokens]
    if int8:
        files += [layout.out / f"{n}_jit_trace-pnnx.ncnn.int8.{e}" for n in ("encoder", "joiner")
                  for e in ("param", "bin")]
    return files


def _pcm_copy(src: Path, dst: Path) -> str:
    """Copy a wav the standard library's ``wave`` can read as it is; anything else as 16-bit PCM (bench.py reads
    wavs with ``wave`` only)."""
    try:
        with wave.open(str(src), "rb"):
            pass
        shutil.copyfile(src, dst)
        return "copied"
    except (wave.Error, EOFError):
        pass
    import numpy as np

    from core.common.audio import AudioError, read_wav
    try:
        w = read_wav(src)
    except AudioError as exc:
        raise StepError(str(exc), hint="give validation wavs that are 16 kHz mono PCM") from None
    pcm = (np.clip(w.samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    tmp = temp_name(dst)
    with wave.open(str(tmp), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(w.sample_rate)
        out.writeframes(pcm.tobytes())
    os.replace(tmp, dst)
    return "written as 16-bit PCM"


def make_ship_files_step(layout, wavs: list[Path]) -> Step:
    """OUT/test_wavs/ (the validation wavs) and OUT/bench.py (assets/bench_template.py as it is)."""
    from core.validation.speed import TEMPLATE
    folder = layout.out / "test_wavs"
    targets = [folder / n for n in test_wav_names(wavs)]
    bench = layout.out / BENCH_FILE

    def run(ctx: StepContext) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        keep = {t.name for t in targets}
        for old in folder.glob("*.wav"):  # wavs of an earlier run with other validation wavs
            if old.name not in keep:
                old.unlink()
        for src, dst in zip(wavs, targets):
            ctx.log(f"{dst.relative_to(layout.out)}: {_pcm_copy(Path(src), dst)} from {src}")
        atomic_write_bytes(bench, TEMPLATE.read_bytes())
        bench.chmod(0o755)
        ctx.log(f"{bench.name}: measures this model on any device with only sherpa_ncnn and numpy "
                "(python bench.py)")

    return Step("ship-files", "Copy the test wavs and write bench.py", func=run, inputs=[*map(Path, wavs), TEMPLATE],
                outputs=[*targets, bench], describe=f"OUT/test_wavs/ ({len(wavs)} wav(s)) and OUT/{BENCH_FILE}",
                script=[f"mkdir -p {shlex.quote(str(folder))}"]
                + [f"cp {shlex.quote(str(s))} {shlex.quote(str(d))}" for s, d in zip(wavs, targets)])


def make_speed_step(layout, wavs: list[Path], int8: bool, threads: list[int] | None = None) -> Step:
    """The speed table: fp16 (and int8), 1 thread and all cores. The 1-thread rows are the validation's own
    decodes (timed there, on every test wav); what is left runs here, each in its own sherpa-ncnn child, more
    threads on the first seconds of audio only (core.validation.speed.measure)."""
    from core.validation.speed import (
        ALL_CORES_AUDIO_SECONDS,
        SpeedError,
        default_threads,
        format_table,
        known_rows,
        measure,
    )
    folder = layout.out / "test_wavs"
    targets = [folder / n for n in test_wav_names(wavs)]
    out = layout.out / SPEED_FILE
    validation = layout.out / "validation.json"
    models = ["fp16"] + (["int8"] if int8 else [])
    threads = threads or default_threads()

    def run(ctx: StepContext) -> None:
        total = len(models) * len(threads)
        done = []

        def on_row(row: dict) -> None:
            done.append(row)
            ctx.progress(len(done), total, f"{row['model']}, {row['threads']} thread(s)")
            ctx.log(f"{row['model']}, {row['threads']} thread(s): " + (
                f"failed: {row['error']}" if row.get("error") else
                f"rtf {row['rtf']}, load {row['load_seconds']} s, peak {row['peak_mb']} MB, first result "
                f"{row['first_result_seconds']} s" + (" (the validation's decode)"
                                                       if row.get("measured_in") == "validate" else "")))
        try:
            known = known_rows(json.loads(validation.read_text()))
        except (OSError, ValueError):
            known = {}
        try:
            report = measure(layout.out, targets, models, threads, on_row=on_row, cancelled=ctx._cancelled.is_set,
                             known=known, all_cores_seconds=ALL_CORES_AUDIO_SECONDS, side_by_side=True,
                             single_seconds=ALL_CORES_AUDIO_SECONDS)
        except SpeedError as exc:
            raise StepError(str(exc)) from None
        ctx.check_cancelled()
        atomic_write_bytes(out, json.dumps(report.as_dict(), indent=2).encode())
        for line in format_table(report.rows).splitlines():
            ctx.log(line)
        if report.errors:
            raise StepError("sherpa-ncnn failed while measuring speed: " + "; ".join(report.errors),
                            hint=f"the figures that were measured are in {out}")

    return Step("speed", "Measure speed in sherpa-ncnn (RTF, latency, memory)", func=run,
                inputs=[*_model_files(layout, int8), *targets, validation], outputs=[out],
                fingerprint_extra=json.dumps([models, threads, ALL_CORES_AUDIO_SECONDS]),
                describe=f"{' and '.join(models)} with {' and '.join(map(str, threads))} thread(s): 1 thread from "
                         "the validation's decodes, the rest each in a sherpa-ncnn child",
                script=[f"python3 {shlex.quote(str(layout.out / BENCH_FILE))} --json > "
                        f"{shlex.quote(str(out))}"])


def make_int8_layers_step(layout, files=None) -> Step:
    """OUT/int8-layers.json: what each encoder/joiner layer became, read from the float source and the int8 files.

    ``files``: the float set quantization read (a core.int8.calibration.ModelFiles; default the run's fp32 set)."""
    from core.pipeline.layout import fp32_model_files, int8_file
    files = files or fp32_model_files(layout)
    sources = {"encoder": (files.encoder_param, files.encoder_bin), "joiner": (files.joiner_param, files.joiner_bin)}
    out = layout.out / LAYERS_FILE

    def run(ctx: StepContext) -> None:
        from core.int8.report import (
            Int8ReportError,
            NetFiles,
            build_report,
            format_by_type,
        )
        nets = [NetFiles(n, *sources[n], int8_file(layout, n, "param"), int8_file(layout, n, "bin"),
                         layout.final(n, "param"), layout.final(n, "bin")) for n in sources]
        try:
            report = build_report(nets)
        except Int8ReportError as exc:
            raise StepError(str(exc)) from None
        atomic_write_bytes(out, json.dumps(report, indent=2).encode())
        for line in format_by_type(report):
            ctx.log(line)

    inputs = [p for pair in sources.values() for p in pair]
    inputs += [int8_file(layout, n, e) for n in sources for e in ("param", "bin")]
    return Step("int8-layers", "Report what int8 did to each layer", func=run, inputs=inputs, outputs=[out],
                describe="read the float and int8 weights with ncnn (child processes): precision and bytes per layer",
                script=["# per-layer int8 report: written by sherpa-ncnn-wizard (int8-layers.json)"])


def make_card_step(layout, info) -> Step:
    """OUT/README.md from what the run made and measured (core.pipeline.model_card)."""
    from core.pipeline.model_card import render_card
    out = layout.out / CARD_FILE

    def run(ctx: StepContext) -> None:
        atomic_write_bytes(out, render_card(layout.out, info).encode())
        ctx.log(f"wrote {out}")

    inputs = [*_model_files(layout, info.int8), layout.out / BENCH_FILE]
    for name in (SPEED_FILE, DATASET_FILE, "validation.json") + ((LAYERS_FILE,) if info.int8 else ()):
        inputs.append(layout.out / name)
    return Step("model-card", "Write the model card (README.md)", func=run, inputs=[p for p in inputs],
                outputs=[out], fingerprint_extra=json.dumps(vars(info), default=str),
                describe="architecture, export flags, metadata, sizes, validation, speed, usage, hashes",
                script=["# README.md: written by sherpa-ncnn-wizard"])


def dataset_problems(dataset: str) -> list[str]:
    """Plan-time check of [validation] dataset: it must be readable and hold utterances."""
    if not dataset:
        return []
    from core.validation.dataset import DatasetError, read_dataset
    try:
        read_dataset(dataset)
    except DatasetError as exc:
        return [f"validation.dataset: {exc}"]
    return []


def make_dataset_step(layout, dataset: Path, int8: bool, max_wer_increase: float | None = None) -> Step:
    """WER of fp16 (and int8) on a dataset, decoded in sherpa-ncnn children; resumable; the int8 gate."""
    out = layout.out / DATASET_FILE
    cache = layout.work / "dataset"
    models = ["fp16"] + (["int8"] if int8 else [])

    def run(ctx: StepContext) -> None:
        from core.validation.dataset import DatasetError, evaluate, read_dataset
        try:
            ds = read_dataset(dataset)
            for p in ds.problems:
                ctx.log(f"skipped: {p}")
            ctx.log(f"{dataset}: {ds.layout} layout, {len(ds.items)} utterance(s)")
            report = evaluate(layout.out, ds, models, cache, max_wer_increase=max_wer_increase,
                              on_progress=lambda i, n, note: ctx.progress(i, n, note),
                              cancelled=ctx._cancelled.is_set)
        except DatasetError as exc:
            raise StepError(str(exc)) from None
        ctx.check_cancelled()
        atomic_write_bytes(out, json.dumps(report, indent=2, ensure_ascii=False).encode())
        for m in report["models"]:
            ctx.log(f"{m['model']}: WER {m['wer']:.2%} ({m['substitutions']} sub, {m['deletions']} del, "
                    f"{m['insertions']} ins over {m['words']} words)")
        if "int8_increase_points" in report:
            ctx.log(f"int8 - fp16: {report['int8_increase_points']:+.2f} points")
        if report.get("gate_ok") is False:
            raise StepError(f"int8 is {report['int8_increase_points']:.2f} WER points worse than fp16 on {dataset}; "
                            f"[validation] max_wer_increase allows {max_wer_increase}",
                            hint=f"the utterances that changed are in {out}; calibrate with audio like the "
                                 "dataset's, or ship the fp16 model")

    return Step("dataset-wer", "WER on the dataset (fp16" + (" and int8)" if int8 else ")"), func=run,
                inputs=_model_files(layout, int8), outputs=[out],
                fingerprint_extra=json.dumps([str(dataset), max_wer_increase, models]),
                describe=f"decode {dataset} in sherpa-ncnn children ({', '.join(models)}); WER with jiwer"
                         + (f"; fail if int8 is more than {max_wer_increase} points worse" if max_wer_increase
                            is not None and int8 else ""),
                script=[f"# WER on {dataset}: done inside sherpa-ncnn-wizard (dataset-wer.json)"])


def ship_steps(layout, info, wavs: list[Path], *, int8: bool, int8_files=None, dataset: str = "",
               max_wer_increase: float | None = None) -> list[Step]:
    """The steps after validation: test wavs + bench.py, speed (when there are wavs), dataset WER (when given),
    int8 report, model card."""
    wavs = [Path(w) for w in wavs]
    steps = [make_ship_files_step(layout, wavs)]
    if wavs:
        steps.append(make_speed_step(layout, wavs, int8))
    if dataset:
        steps.append(make_dataset_step(layout, Path(dataset), int8, max_wer_increase))
    if int8:
        steps.append(make_int8_layers_step(layout, int8_files))
    steps.append(make_card_step(layout, info))
    # the card reads what exists; files of steps that are not planned must not count as its inputs
    planned = {p for s in steps for p in s.outputs} | set(_model_files(layout, int8)) | {layout.out / "validation.json"}
    steps[-1].inputs = [p for p in steps[-1].inputs if p in planned]
    return steps


def package_path(out: Path) -> Path:
    return out.parent / f"{out.name}.tar.bz2"


def package_members(out: Path) -> list[Path]:
    from core.pipeline.model_card import shipped_files
    files = shipped_files(out)
    card = out / CARD_FILE
    return ([card] if card.is_file() else []) + files


def write_package(out: Path, target: Path | None = None, cancelled=None) -> Path:
    """OUT.tar.bz2 with one top directory named like OUT, as sherpa-ncnn's published model archives are."""
    out = Path(out)
    target = target or package_path(out)
    tmp = temp_name(target)
    try:
        with tarfile.open(tmp, "w:bz2") as tar:
            for f in package_members(out):
                if cancelled is not None and cancelled():
                    raise StepCancelled()
                tar.add(f, arcname=f"{out.name}/{f.relative_to(out)}", recursive=False)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def make_package_step(layout) -> Step:
    target = package_path(layout.out)

    def run(ctx: StepContext) -> None:
        try:
            write_package(layout.out, target, ctx._cancelled.is_set)
        except OSError as exc:
            raise StepError(f"{target}: cannot be written ({exc.strerror})",
                            hint="free some space or choose another --out, then run again with --resume") from None
        ctx.log(f"wrote {target} ({target.stat().st_size:,} bytes): {layout.out.name}/ with the model, tokens.txt, "
                "test_wavs/, README.md and bench.py")

    return Step("package", "Pack the model into OUT.tar.bz2", func=run, inputs=[layout.out / CARD_FILE],
                outputs=[target], describe=f"write {target}",
                script=[f"tar -C {shlex.quote(str(layout.out.parent))} -cjf {shlex.quote(str(target))} "
                        f"{shlex.quote(layout.out.name)}  # the wizard packs only the shipped files"])


def add_package_step(planned) -> None:
    """--package: append the archive step to a built plan (after the summary) and refresh its script."""
    from core.pipeline.layout import Layout
    planned.plan.steps.append(make_package_step(Layout(planned.plan.out_dir)))
    if hasattr(planned, "script"):
        lines = planned.script.rstrip("\n").split("\n")
        step = planned.plan.steps[-1]
        lines += ["", f"# {len(planned.plan.steps)}. {step.title}", *step.script, ""]
        planned.script = "\n".join(lines)


def card_info(spec, resolved, recipe: str, int8: bool):
    """The plan's part of the model card: architecture, recipe, the model flags icefall's export takes."""
    from core.pipeline.model_card import CardInfo
    flags = spec.flags_for(resolved.values) if resolved.ok else []
    return CardInfo(spec.name, spec.title, recipe, list(flags), int8=int8)


def summary_extras(out: Path) -> dict:
    """What summary.json gets from these steps: ``speed`` rows and the int8 report by layer type."""
    extras: dict = {}
    try:
        speed = json.loads((out / SPEED_FILE).read_text())
        from core.validation.speed import SUMMARY_KEYS
        extras["speed"] = [{k: r.get(k) for k in SUMMARY_KEYS} for r in speed.get("rows", []) if not r.get("error")]
    except (OSError, ValueError, AttributeError):
        pass
    try:
        layers = json.loads((out / LAYERS_FILE).read_text())
        extras["int8_layers"] = {"by_type": layers.get("by_type"), "totals": layers.get("totals")}
    except (OSError, ValueError, AttributeError):
        pass
    try:
        wer = json.loads((out / DATASET_FILE).read_text())
        extras["dataset_wer"] = {k: wer.get(k) for k in ("dataset", "models", "int8_increase_points", "gate_ok")}
    except (OSError, ValueError, AttributeError):
        pass
    return extras


def summary_text(summary: dict) -> list[str]:
    """The speed rows, dataset WER and int8 report by type of a summary.json as plain lines (the wizard's summary)."""
    from core.common.formatting import human
    lines = []
    if summary.get("speed"):
        lines.append(f"{'model':<6}{'threads':>8}{'rtf':>8}{'first result':>14}{'load':>9}{'peak':>10}")
        for r in summary["speed"]:
            first = "-" if r.get("first_result_seconds") is None else f"{r['first_result_seconds']:.3f} s"
            lines.append(f"{r['model']:<6}{r['threads']:>8}{r['rtf']:>8.3f}{first:>14}{r['load_seconds']:>7.3f} s"
                         f"{r['peak_mb']:>7.1f} MB")
    wer = summary.get("dataset_wer") or {}
    for m in wer.get("models") or []:
        lines.append(f"WER {m['model']}: {m['wer']:.2%} ({m['substitutions']} sub, {m['deletions']} del, "
                     f"{m['insertions']} ins / {m['words']} words)")
    by_type = (summary.get("int8_layers") or {}).get("by_type") or {}
    if by_type:
        w = max(len("int8 by layer type"), *(len(k) for k in by_type)) + 1
        lines.append(f"{'int8 by layer type':<{w}}{'n':>4}{'int8':>6}{'w-only':>8}{'float':>7}{'fp16':>11}{'int8':>11}")
        for kind, t in by_type.items():
            lines.append(f"{kind:<{w}}{t['layers']:>4}{t['int8']:>6}{t['int8-weight-only']:>8}"
                         f"{t['fp16'] + t['fp32']:>7}{human(t['bytes_fp16']):>11}{human(t['bytes_after']):>11}")
    return lines


def add_dataset_step(planned, dataset: str, max_wer_increase: float | None = None) -> None:
    """--dataset on a plan built without it (run --from-ncnn): the WER step before the model card."""
    from core.pipeline.layout import Layout
    steps = planned.plan.steps
    ids = [s.id for s in steps]
    int8 = "int8-layers" in ids or "quantize" in ids or "quantize-encoder" in ids
    step = make_dataset_step(Layout(planned.plan.out_dir), Path(dataset), int8, max_wer_increase)
    steps.insert(ids.index("model-card") if "model-card" in ids else len(steps), step)
